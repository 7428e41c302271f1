"""Measurements that show the corpus's relations are real (used by tests and by the preview)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage, signal

from sdetalk_jax import audio


def frame_envelope(
    waveform: np.ndarray, sample_rate: int, num_frames: int, fps: float
) -> np.ndarray:
    """Hilbert envelope of the audio averaged per face frame (the paper's Fig. 6 envelope)."""
    envelope = np.abs(signal.hilbert(waveform.astype(np.float64)))
    edges = np.linspace(0, len(envelope), num_frames + 1).astype(int)
    edges = np.minimum(edges, len(envelope))
    per_frame = np.add.reduceat(envelope, edges[:-1]) / np.maximum(np.diff(edges), 1)
    return ndimage.gaussian_filter1d(per_frame, 1.0)


def frame_rms(waveform: np.ndarray, num_frames: int) -> np.ndarray:
    """Root-mean-square energy of the audio in each face frame."""
    edges = np.linspace(0, len(waveform), num_frames + 1).astype(int)
    squared = waveform.astype(np.float64) ** 2
    return np.sqrt(np.add.reduceat(squared, edges[:-1]) / np.maximum(np.diff(edges), 1))


def mouth_opening(vertices: np.ndarray, upper_lip: int, lower_lip: int) -> np.ndarray:
    """Vertical distance [N] between a mid upper-lip and a mid lower-lip vertex."""
    frames = vertices.reshape(vertices.shape[0], -1, 3)
    return frames[:, upper_lip, 1] - frames[:, lower_lip, 1]


def head_angular_speed(rotation: np.ndarray, fps: float) -> np.ndarray:
    """Angle turned between consecutive frames, in rad/s, [N] (first frame repeats the second)."""
    rotation = np.asarray(rotation, np.float64)  # arccos near 1 needs the precision
    relative = np.einsum("tij,tkj->tik", rotation[1:], rotation[:-1])
    cosine = np.clip((np.trace(relative, axis1=1, axis2=2) - 1) / 2, -1.0, 1.0)
    speed = np.arccos(cosine) * fps
    return np.concatenate([speed[:1], speed])


def lagged_correlation(leading: np.ndarray, following: np.ndarray, lag: int) -> float:
    """Pearson correlation of leading[t] with following[t + lag]."""
    if lag > 0:
        leading, following = leading[:-lag], following[lag:]
    elif lag < 0:
        leading, following = leading[-lag:], following[:lag]
    if leading.std() == 0 or following.std() == 0:
        return 0.0
    return float(np.corrcoef(leading, following)[0, 1])


def prosody_features(waveform: np.ndarray, sample_rate: int) -> np.ndarray:
    """Duration (s), median and spread of log-f0, and loudness (log RMS of voiced audio)."""
    mono = audio.SAMPLE_RATE
    resampled = (
        signal.resample_poly(waveform, mono, sample_rate) if sample_rate != mono else waveform
    )
    import librosa

    hop = 512
    f0, voiced, _ = librosa.pyin(
        resampled, fmin=60, fmax=600, sr=mono, frame_length=1024, hop_length=hop
    )
    rms = librosa.feature.rms(y=resampled, frame_length=1024, hop_length=hop)[0]
    count = min(len(f0), len(rms))
    voiced = voiced[:count]
    log_f0 = np.log(f0[:count][voiced])
    return np.array(
        [
            len(waveform) / sample_rate,
            np.median(log_f0),
            np.percentile(log_f0, 90) - np.percentile(log_f0, 10),
            np.log(np.sqrt(np.mean(rms[:count][voiced] ** 2))),
        ]
    )
