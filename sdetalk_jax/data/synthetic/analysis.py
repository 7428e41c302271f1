"""Measurements that show the corpus's relations are real (used by tests, benchmarks and the
preview). The envelope, head-speed and lagged-correlation measures are the evaluation's own
(`sdetalk_jax.metrics`), so that the corpus is checked with the same rulers as the model."""

from __future__ import annotations

import numpy as np
from scipy import signal

from sdetalk_jax import audio
from sdetalk_jax.metrics import frame_envelope, head_angular_speed, lagged_correlation

__all__ = [
    "frame_envelope",
    "frame_rms",
    "head_angular_speed",
    "lagged_correlation",
    "mouth_opening",
    "prosody_features",
]


def frame_rms(waveform: np.ndarray, num_frames: int) -> np.ndarray:
    """Root-mean-square energy of the audio in each face frame."""
    edges = np.linspace(0, len(waveform), num_frames + 1).astype(int)
    squared = waveform.astype(np.float64) ** 2
    return np.sqrt(np.add.reduceat(squared, edges[:-1]) / np.maximum(np.diff(edges), 1))


def mouth_opening(vertices: np.ndarray, upper_lip: int, lower_lip: int) -> np.ndarray:
    """Vertical distance [N] between a mid upper-lip and a mid lower-lip vertex."""
    frames = vertices.reshape(vertices.shape[0], -1, 3)
    return frames[:, upper_lip, 1] - frames[:, lower_lip, 1]


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
