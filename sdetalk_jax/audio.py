"""Audio input: loading any wav as 16 kHz mono, log-mel features, and frame alignment (Eq. 1).

Nothing here knows about models or training. Every failure is an `AudioError` that names the file.
"""

from __future__ import annotations

import dataclasses
import os

import librosa
import numpy as np
import soundfile

SAMPLE_RATE = 16_000
N_MELS = 128
# 10 ms hop and 25 ms window: the usual speech front end; 25 fps face frames get 4 mel frames each.
MEL_HOP = 160
MEL_WINDOW = 400
MEL_FFT = 512
# Peak amplitude under which a recording is treated as silence (about -80 dBFS).
SILENCE_PEAK = 1e-4


class AudioError(ValueError):
    """An audio file that cannot be used; the message names the file and the problem."""


@dataclasses.dataclass(frozen=True)
class AudioInfo:
    """What a header and one pass over the samples say about a file, without resampling."""

    path: str
    sample_rate: int
    channels: int
    num_samples: int
    peak: float

    @property
    def duration_s(self) -> float:
        return self.num_samples / self.sample_rate


def inspect_audio(path: str | os.PathLike) -> AudioInfo:
    """Reads a file once at its own rate; raises AudioError if it is missing, unreadable or empty."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise AudioError(f"{path}: audio file not found")
    try:
        samples, sample_rate = soundfile.read(path, dtype="float32", always_2d=True)
    except Exception as err:  # soundfile raises several types for corrupt data
        raise AudioError(f"{path}: unreadable audio ({err})") from err
    if samples.shape[0] == 0:
        raise AudioError(f"{path}: audio is empty (0 samples)")
    if not np.all(np.isfinite(samples)):
        raise AudioError(f"{path}: audio contains NaN or Inf samples")
    return AudioInfo(
        path=path,
        sample_rate=int(sample_rate),
        channels=int(samples.shape[1]),
        num_samples=int(samples.shape[0]),
        peak=float(np.max(np.abs(samples))),
    )


def load_audio(
    path: str | os.PathLike, *, sample_rate: int = SAMPLE_RATE, allow_silence: bool = False
) -> np.ndarray:
    """Loads any wav (rate, channels) as float32 mono at `sample_rate`.

    Raises AudioError naming the file when it is missing, unreadable, empty, non-finite or, unless
    `allow_silence`, silent: a silent input would otherwise animate a frozen face with no warning.
    """
    info = inspect_audio(path)
    if not allow_silence and info.peak < SILENCE_PEAK:
        raise AudioError(f"{info.path}: audio is silent (peak amplitude {info.peak:.2e})")
    try:
        waveform, _ = librosa.load(info.path, sr=sample_rate, mono=True)
    except Exception as err:
        raise AudioError(f"{info.path}: could not decode or resample audio ({err})") from err
    return waveform.astype(np.float32, copy=False)


def log_mel_spectrogram(waveform: np.ndarray, *, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """128-bin log-mel spectrogram `[mel_frames, 128]` of a mono waveform (the paper's Sec. 3).

    Natural log of the power mel spectrogram with a small floor, so silence stays finite.
    """
    if waveform.ndim != 1:
        raise ValueError(f"expected a mono waveform [samples], got shape {waveform.shape}")
    mel = librosa.feature.melspectrogram(
        y=waveform,
        sr=sample_rate,
        n_fft=MEL_FFT,
        hop_length=MEL_HOP,
        win_length=MEL_WINDOW,
        n_mels=N_MELS,
        power=2.0,
    )
    return np.log(mel + 1e-6).T.astype(np.float32)


def interpolate_frames(features: np.ndarray, num_frames: int) -> np.ndarray:
    """Linear interpolation of `[kN, D]` audio-rate features to `[N, D]` face frames (Eq. 1).

    The first and last samples map onto the first and last face frames (the `align_corners=True`
    convention of the field's PyTorch code), so the result does not drift over a long clip.
    """
    if features.ndim != 2:
        raise ValueError(f"expected features [time, dim], got shape {features.shape}")
    if num_frames <= 0:
        raise ValueError(f"num_frames must be positive, got {num_frames}")
    source_len = features.shape[0]
    if source_len == 0:
        raise ValueError("cannot interpolate an empty feature sequence")
    if source_len == 1:
        return np.repeat(features, num_frames, axis=0)
    positions = np.linspace(0.0, source_len - 1, num_frames)
    lower = np.floor(positions).astype(np.int64)
    upper = np.minimum(lower + 1, source_len - 1)
    weight = (positions - lower)[:, None].astype(features.dtype)
    return features[lower] * (1 - weight) + features[upper] * weight


def frame_aligned_log_mel(waveform: np.ndarray, num_frames: int) -> np.ndarray:
    """The emotion network's input: log-mel features resampled to the N face frames (Eq. 1)."""
    return interpolate_frames(log_mel_spectrogram(waveform), num_frames)


def samples_per_frame(fps: float, sample_rate: int = SAMPLE_RATE) -> int:
    """Audio samples per face frame (k in the paper, rounded up)."""
    return int(np.ceil(sample_rate / fps))
