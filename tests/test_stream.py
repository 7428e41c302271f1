"""sdetalk_jax.stream: speech animated as it arrives, on a tiny trained run: the same frames for
any chunking, frames handed on when their look-ahead has come, no jumps at window edges, a clean
end on a short or silent tail, bounded memory, bad input named, and the command line."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import soundfile

from sdetalk_jax import stream as streaming
from sdetalk_jax.data import synthetic
from sdetalk_jax.inference import TrainedModel
from sdetalk_jax.train import train
from tests.conftest import tiny_training_config

pytestmark = pytest.mark.slow

SETTINGS = streaming.StreamSettings(lookahead_s=0.2, window_s=1.2, hop_s=0.12)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    base = tmp_path_factory.mktemp("stream")
    root = os.fspath(base / "corpus")
    synthetic.generate_corpus(
        root, subjects=3, sentences=4, vertices=120, workers=2, progress=False
    )
    config = tiny_training_config(root, os.fspath(base / "cache"))
    config.train.epochs = 1
    config.train.emotion_prototype_steps = -1
    run = os.fspath(base / "run")
    train(config, run)
    return run


@pytest.fixture(scope="module")
def model(workdir):
    return TrainedModel.load(workdir)


@pytest.fixture(scope="module")
def speech(workdir):
    """A clip of the corpus at 22.05 kHz, stereo: (samples [n, 2], rate)."""
    import librosa

    path = os.path.join(os.path.dirname(workdir), "corpus", "wav", "F2_e01.wav")
    waveform, rate = soundfile.read(path, dtype="float32")
    resampled = librosa.resample(waveform, orig_sr=rate, target_sr=22050)
    return np.stack([resampled, 0.5 * resampled], axis=1), 22050


def streamed(model, samples, rate, chunk, settings=SETTINGS, seed=0, **options):
    """Every frame of a stream fed `chunk` samples at a time, and the frames handed back by each
    call, by the audio it had then (input samples)."""
    face_stream = streaming.FaceStream(
        model, subject="F2", key=jax.random.key(seed), settings=settings, **options
    )
    pieces, handed = [], []
    for first in range(0, len(samples), chunk):
        pieces.append(face_stream.feed(samples[first : first + chunk], rate))
        handed.append((first + len(samples[first : first + chunk]), face_stream.frames_emitted))
    pieces.append(face_stream.finish())
    frames = {name: np.concatenate([p[name] for p in pieces]) for name in pieces[0]}
    return frames, handed, face_stream


def test_any_chunking_gives_the_same_frames_bitwise(model, speech):
    samples, rate = speech
    samples = samples[: int(1.6 * rate)]
    reference, _, _ = streamed(model, samples, rate, len(samples))  # one chunk
    assert np.array_equal(reference["frame"], np.arange(len(reference["frame"])))
    for chunk in (1, 7, int(0.3 * rate)):
        frames, _, _ = streamed(model, samples, rate, chunk)
        for name, value in reference.items():
            np.testing.assert_array_equal(frames[name], value, err_msg=f"{name}, chunk {chunk}")


def test_a_frame_is_handed_on_when_its_look_ahead_has_come_and_not_before(model, speech):
    samples, rate = speech
    samples = samples[: int(2.0 * rate)]
    _, handed, face_stream = streamed(model, samples, rate, int(0.05 * rate))
    lookahead, _, hop = SETTINGS.frames(model.assets.fps)
    per_frame = face_stream.samples_per_frame
    for heard, emitted in handed:
        # frames arrived (of the resampled audio, as soxr releases it: a few ms late at most)
        arrived = int(heard * 16000 / rate) // per_frame
        windows_run = [end for end in range(hop, arrived + 2, hop) if end <= arrived + 1]
        expected = max(0, (windows_run[-1] if windows_run else 0) - lookahead)
        assert emitted <= max(0, arrived - lookahead)  # never before its look-ahead
        assert emitted >= expected - hop  # and within a hop of it
    total = int(len(samples) * 16000 / rate) // per_frame
    assert face_stream.frames_emitted in (total - 1, total, total + 1)


def test_no_jump_at_the_windows_edges_beyond_offline_motion(model, workdir):
    """Over 11 s of speech (90 windows), the face's and the head's largest frame-to-frame change
    of speed (second difference, where a step shows) stays near offline's, in one window: the
    crossfade over each hop hides the windows' edges (without it, the head's is 3x offline's)."""
    clips = [os.path.join(os.path.dirname(workdir), "corpus", "wav", f"F2_{n}.wav")
             for n in ("e01", "02", "e03")]  # fmt: skip
    mono = np.concatenate([soundfile.read(path, dtype="float32")[0] for path in clips])
    frames, _, _ = streamed(model, mono, 16000, 2048)
    offline = model.animate_waveform(mono, subject="F2", key=jax.random.key(0), window_s=30.0)

    def largest_step(values):
        values = values.reshape(len(values), -1)
        return np.linalg.norm(np.diff(values, 2, axis=0), axis=1).max()

    assert largest_step(frames["expression"]) <= 1.5 * largest_step(offline["expression"])
    assert largest_step(frames["rotation"]) <= 2.0 * largest_step(offline["rotation"])


def test_a_short_or_silent_tail_ends_the_stream_cleanly(model, speech):
    samples, rate = speech
    speech_part = samples[: int(0.9 * rate)]
    silence = np.zeros((int(0.7 * rate), 2), np.float32)
    frames, _, face_stream = streamed(model, np.concatenate([speech_part, silence]), rate, 3000)
    total = int(round((len(speech_part) + len(silence)) * 16000 / rate)) // 640
    assert len(frames["frame"]) == face_stream.frames_emitted
    assert abs(len(frames["frame"]) - total) <= 1
    assert all(np.all(np.isfinite(value)) for value in frames.values())
    # less than a window, and less than a frame: what came is animated, or nothing, no error
    frames, _, _ = streamed(model, samples[: int(0.3 * rate)], rate, 500)
    assert 6 <= len(frames["frame"]) <= 8
    frames, _, _ = streamed(model, samples[:100], rate, 50)
    assert len(frames["frame"]) == 0 and frames["vertices"].shape[1:] == (120, 3)


def test_memory_per_stream_stays_one_window_however_long(model):
    rate = 16000
    rng = np.random.default_rng(0)
    face_stream = streaming.FaceStream(
        model, subject="F2", key=jax.random.key(0), settings=SETTINGS, warm_up=False
    )
    held = []
    for _ in range(20):
        face_stream.feed(0.1 * rng.standard_normal(rate // 2).astype(np.float32), rate)
        held.append(len(face_stream._audio))
    _, window, hop = SETTINGS.frames(model.assets.fps)
    assert max(held) <= (window + hop) * face_stream.samples_per_frame + rate // 2
    assert face_stream.frames_emitted > 200  # 10 s went through


@pytest.mark.parametrize(
    "case, message",
    [
        ("nan", "at input sample 8000 holds NaN or Inf samples .the first at input sample 9234"),
        ("rate", "sample rate changed mid-stream at input sample 8000: 16000 Hz before, 22050"),
        ("shape", "shape \\(10, 2, 2\\)"),
        ("after", "the stream has ended"),
    ],
)
def test_bad_input_is_named(model, case, message):
    face_stream = streaming.FaceStream(
        model, subject="F2", key=jax.random.key(0), settings=SETTINGS, warm_up=False
    )
    good = np.zeros(8000, np.float32)
    face_stream.feed(good, 16000)
    with pytest.raises(streaming.StreamError, match=message):
        if case == "nan":
            bad = np.zeros(2000, np.float32)
            bad[1234] = np.nan
            face_stream.feed(bad, 16000)
        elif case == "rate":
            face_stream.feed(good, 22050)
        elif case == "shape":
            face_stream.feed(np.zeros((10, 2, 2), np.float32), 16000)
        else:
            face_stream.finish()
            face_stream.feed(good, 16000)


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(hop_s=0.0), "hop_s must be at least one frame"),
        (dict(window_s=0.3, lookahead_s=0.2, hop_s=0.12), "must hold the look-ahead"),
        (dict(lookahead_s=float("nan")), "lookahead_s must be a number"),
    ],
)
def test_settings_that_cannot_run_are_refused(model, settings, message):
    with pytest.raises(streaming.StreamError, match=message):
        streaming.FaceStream(
            model, subject="F2", key=jax.random.key(0),
            settings=streaming.StreamSettings(**settings), warm_up=False,
        )  # fmt: skip


def run_cli(*args, stdin=None):
    return subprocess.run(
        [sys.executable, "-m", "sdetalk_jax.stream", *args],
        input=stdin, capture_output=True, timeout=300,
    )  # fmt: skip


def test_the_command_streams_a_wav_to_json_lines_and_an_npz_as_the_api(
    model, workdir, speech, tmp_path
):
    samples, rate = speech
    samples = samples[: int(1.5 * rate)]
    wav = os.fspath(tmp_path / "in.wav")
    soundfile.write(wav, samples, rate)
    out, lines = os.fspath(tmp_path / "out.npz"), os.fspath(tmp_path / "frames.jsonl")
    flags = ["--workdir", workdir, "--subject", "F2", "--lookahead-s", "0.2", "--window-s", "1.2",
             "--hop-s", "0.12"]  # fmt: skip
    done = run_cli(*flags, "--audio", wav, "--fast", "--out", out, "--jsonl", lines)
    assert done.returncode == 0, done.stderr.decode()
    assert b"streamed" in done.stderr and b"95th percentile" in done.stderr
    samples, _ = soundfile.read(wav, dtype="float32")  # as the command reads it: 16-bit PCM
    expected, _, _ = streamed(model, samples, rate, int(0.02 * rate))
    with np.load(out) as saved:
        for name in streaming.FRAME_KEYS:
            np.testing.assert_array_equal(saved[name], expected[name], err_msg=name)
        assert float(saved["lookahead_s"]) == 0.2
    records = [json.loads(line) for line in open(lines)]
    assert [r["frame"] for r in records] == list(range(len(expected["frame"])))
    np.testing.assert_allclose(records[7]["rotation"], expected["rotation"][7], atol=1e-6)
    assert sum(records[7]["emotion"].values()) == pytest.approx(1.0, abs=1e-3)
    # outputs are not replaced without --force; nothing is touched
    stamp = os.stat(out).st_mtime_ns
    again = run_cli(*flags, "--audio", wav, "--fast", "--out", out)
    assert again.returncode == 1 and b"already exists" in again.stderr
    assert os.stat(out).st_mtime_ns == stamp
    # raw 16-bit PCM on stdin, to JSON lines on stdout
    import librosa

    mono = librosa.resample(samples.mean(axis=1), orig_sr=rate, target_sr=16000)
    pcm = (np.clip(mono, -1, 1) * 32767).astype("<i2").tobytes()
    piped = run_cli(*flags, "--audio", "-", "--raw-rate", "16000", "--jsonl", "-", stdin=pcm)
    assert piped.returncode == 0, piped.stderr.decode()
    frames = [json.loads(line) for line in piped.stdout.decode().splitlines()]
    assert abs(len(frames) - len(records)) <= 1


def test_the_command_names_bad_audio_and_writes_nothing(workdir, tmp_path):
    wav = os.fspath(tmp_path / "bad.wav")
    soundfile.write(wav, np.full(16000, np.nan, np.float32), 16000, subtype="FLOAT")
    out = os.fspath(tmp_path / "out.npz")
    done = run_cli("--workdir", workdir, "--subject", "F2", "--audio", wav, "--fast", "--out", out)
    assert done.returncode == 1 and b"bad.wav" in done.stderr and b"NaN" in done.stderr
    assert not os.path.exists(out) and os.listdir(tmp_path) == ["bad.wav"]
    usage = run_cli("--workdir", workdir, "--subject", "F2", "--audio", "-", "--jsonl", "-")
    assert usage.returncode == 2 and b"--raw-rate" in usage.stderr


def test_every_window_gives_a_frame_the_same_noise(model, speech, monkeypatch):
    samples, rate = speech
    seen = {}  # frame -> its noise row, from every window that holds it

    original = model.window_outputs

    def recording(batch, noise):
        count = int(np.asarray(batch["frame_mask"]).sum())
        start = recording.starts.pop(0)
        for row in range(count):
            seen.setdefault(start + row, []).append(np.asarray(noise[0, row]))
        return original(batch, noise)

    face_stream = streaming.FaceStream(
        model, subject="F2", key=jax.random.key(3), settings=SETTINGS, warm_up=False
    )
    lookahead, window, hop = SETTINGS.frames(model.assets.fps)
    ends = list(range(hop, 200, hop))
    recording.starts = [max(0, end - window) for end in ends]
    monkeypatch.setattr(model, "window_outputs", recording)
    face_stream.feed(samples[: int(1.6 * rate)], rate)
    shared = [rows for rows in seen.values() if len(rows) > 1]
    assert len(shared) > 20
    for rows in shared:
        for other in rows[1:]:
            np.testing.assert_array_equal(other, rows[0])


def chromium_missing() -> str | None:
    from tests.test_export_gltf import chromium_missing as missing

    return missing()


@pytest.mark.node
@pytest.mark.skipif(chromium_missing() is not None, reason=str(chromium_missing()))
def test_the_live_page_shows_every_frame_of_the_stream_as_it_comes(workdir, speech, tmp_path):
    from sdetalk_jax import viewer

    samples, rate = speech
    wav = os.fspath(tmp_path / "in.wav")
    soundfile.write(wav, samples[: int(1.5 * rate)], rate)
    lines = os.fspath(tmp_path / "frames.jsonl")
    command = subprocess.Popen(
        [sys.executable, "-m", "sdetalk_jax.stream", "--workdir", workdir, "--subject", "F2",
         "--audio", wav, "--jsonl", lines, "--serve", "0"],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        url = None
        while url is None:
            line = command.stderr.readline()
            assert line, "the command ended without serving the page"
            if line.startswith("live page: "):
                url = line.split()[2]
        shot = os.fspath(tmp_path / "live.png")
        check = subprocess.run(
            ["node", os.path.join(viewer.VIEWER_DIR, "live_check.mjs"), url, shot],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert check.returncode == 0, check.stderr
        result = json.loads(check.stdout)
        assert command.wait(timeout=120) == 0
    finally:
        command.kill()
    frames = sum(1 for _ in open(lines))
    assert result["errors"] == [] and result["console"] == [], result
    assert result["ended"] and result["frames"] == frames and result["last_frame"] == frames - 1
    assert result["lit"] > 0.05 * result["pixels"]  # the face is drawn
