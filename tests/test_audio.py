import os

import numpy as np
import pytest
import soundfile

from sdetalk_jax import audio
from tests.conftest import tone


def test_44k_stereo_becomes_16k_mono(tmp_path):
    seconds = 1.5
    t = np.arange(int(seconds * 44_100)) / 44_100
    left = 0.5 * np.sin(2 * np.pi * 440 * t)
    stereo = np.stack([left, left], axis=1).astype(np.float32)
    path = os.fspath(tmp_path / "stereo.wav")
    soundfile.write(path, stereo, 44_100)

    waveform = audio.load_audio(path)

    assert waveform.ndim == 1 and waveform.dtype == np.float32
    assert abs(len(waveform) - seconds * 16_000) <= 1
    spectrum = np.abs(np.fft.rfft(waveform))
    peak_hz = np.argmax(spectrum) * 16_000 / len(waveform)
    assert abs(peak_hz - 440) < 2


@pytest.mark.parametrize(
    ("rate", "channels"),
    [(8_000, 1), (48_000, 6), (22_050, 2)],
    ids=["8k-mono", "48k-6ch", "22k-stereo"],
)
def test_any_rate_and_channel_count_becomes_16k_mono(tmp_path, rate, channels):
    seconds = 1.25
    t = np.arange(int(seconds * rate)) / rate
    # One channel carries the tone, the others are quieter copies: the mono mix keeps the pitch.
    signal = 0.4 * np.sin(2 * np.pi * 330 * t)
    samples = np.stack([signal * (1.0 if c == 0 else 0.3) for c in range(channels)], axis=1)
    path = os.fspath(tmp_path / f"{rate}_{channels}.wav")
    soundfile.write(path, samples.astype(np.float32), rate)

    assert audio.inspect_audio(path).channels == channels
    waveform = audio.load_audio(path)
    assert waveform.ndim == 1 and waveform.dtype == np.float32
    assert abs(len(waveform) - seconds * 16_000) <= 2
    spectrum = np.abs(np.fft.rfft(waveform))
    assert abs(np.argmax(spectrum) * 16_000 / len(waveform) - 330) < 2


def test_nan_audio_is_refused_with_its_name(tmp_path):
    samples = 0.3 * np.ones((16_000, 2), np.float32)
    samples[100, 1] = np.nan
    path = os.fspath(tmp_path / "nan.wav")
    soundfile.write(path, samples, 16_000, subtype="FLOAT")
    with pytest.raises(audio.AudioError, match="NaN or Inf") as info:
        audio.load_audio(path)
    assert path in str(info.value)


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "not found"),
        (b"RIFF this is not a wav file at all", "unreadable"),
    ],
)
def test_missing_or_corrupt_audio_is_named(tmp_path, content, message):
    path = os.fspath(tmp_path / "bad.wav")
    if content is not None:
        with open(path, "wb") as handle:
            handle.write(content)
    with pytest.raises(audio.AudioError, match=message) as info:
        audio.load_audio(path)
    assert path in str(info.value)


def test_empty_and_silent_audio_are_refused(tmp_path):
    empty = os.fspath(tmp_path / "empty.wav")
    soundfile.write(empty, np.zeros((0,), np.float32), 16_000)
    with pytest.raises(audio.AudioError, match="empty") as info:
        audio.load_audio(empty)
    assert empty in str(info.value)

    silent = os.fspath(tmp_path / "silent.wav")
    soundfile.write(silent, np.zeros((16_000,), np.float32), 16_000)
    with pytest.raises(audio.AudioError, match="silent"):
        audio.load_audio(silent)
    assert audio.load_audio(silent, allow_silence=True).shape == (16_000,)


def test_log_mel_has_128_finite_bins():
    mel = audio.log_mel_spectrogram(tone(1.0))
    assert mel.shape[1] == 128
    assert mel.shape[0] == pytest.approx(16_000 / audio.MEL_HOP, abs=2)
    assert np.all(np.isfinite(mel))
    # A 220 Hz tone puts its energy in the low bins.
    assert mel[:, :20].mean() > mel[:, 100:].mean() + 5


def test_interpolation_matches_endpoints_and_is_linear():
    source = np.stack([np.arange(9.0), 2 * np.arange(9.0)], axis=1)  # a straight line
    out = audio.interpolate_frames(source, 5)
    np.testing.assert_allclose(out[0], source[0])
    np.testing.assert_allclose(out[-1], source[-1])
    np.testing.assert_allclose(out[:, 0], np.linspace(0, 8, 5))
    np.testing.assert_allclose(out[:, 1], 2 * out[:, 0])
    # Upsampling a straight line also stays on it.
    np.testing.assert_allclose(audio.interpolate_frames(source, 17)[:, 0], np.linspace(0, 8, 17))


def test_interpolation_rejects_bad_shapes():
    with pytest.raises(ValueError):
        audio.interpolate_frames(np.zeros((4,)), 3)
    with pytest.raises(ValueError):
        audio.interpolate_frames(np.zeros((0, 2)), 3)
    np.testing.assert_allclose(audio.interpolate_frames(np.ones((1, 2)), 3), np.ones((3, 2)))
