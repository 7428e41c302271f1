"""Mouth shapes from speech: the viseme class of each eSpeak phoneme and the lip track that the
phoneme events of an utterance give (docs/data.md, "SynthBIWI")."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

# Mouth shape per phoneme class: jaw_open, lip_round, lip_spread, lip_close.
_VISEMES = {
    "rest": (0.0, 0.0, 0.0, 0.0),
    "bilabial": (0.05, 0.0, 0.0, 1.0),
    "labiodental": (0.15, 0.0, 0.1, 0.6),
    "dental": (0.25, 0.0, 0.1, 0.0),
    "alveolar": (0.2, 0.0, 0.2, 0.0),
    "postalveolar": (0.2, 0.6, 0.0, 0.0),
    "velar": (0.3, 0.0, 0.0, 0.0),
    "r": (0.25, 0.4, 0.0, 0.0),
    "w": (0.15, 1.0, 0.0, 0.0),
    "j": (0.15, 0.0, 0.5, 0.0),
    "h": (0.35, 0.0, 0.0, 0.0),
    "open": (1.0, 0.0, 0.1, 0.0),
    "mid": (0.55, 0.0, 0.2, 0.0),
    "close_front": (0.25, 0.0, 0.8, 0.0),
    "rounded": (0.5, 0.9, 0.0, 0.0),
}
_CONSONANTS = {
    "p": "bilabial", "b": "bilabial", "m": "bilabial",
    "f": "labiodental", "v": "labiodental",
    "T": "dental", "D": "dental",
    "t": "alveolar", "d": "alveolar", "n": "alveolar", "l": "alveolar", "s": "alveolar", "z": "alveolar",
    "S": "postalveolar", "Z": "postalveolar", "tS": "postalveolar", "dZ": "postalveolar",
    "k": "velar", "g": "velar", "N": "velar", "x": "velar",
    "r": "r", "w": "w", "j": "j", "h": "h",
}  # fmt: skip


def viseme_class(phoneme: str) -> str:
    """Maps an eSpeak phoneme mnemonic (e.g. `'aU`, `dZ`, `_:`) to a mouth-shape class."""
    core = phoneme.lstrip("',%=")
    if not core or core.startswith("_"):
        return "rest"
    for length in (2, 1):
        if core[:length] in _CONSONANTS:
            return _CONSONANTS[core[:length]]
    if core[0] in "aA0VO" or core.startswith("aI") or core.startswith("aU"):
        return "open"
    if core[0] in "uUo" or core.startswith("O"):
        return "rounded"
    if core[0] in "iI" or core.startswith("eI"):
        return "close_front"
    return "mid"


def lip_track(phonemes, duration_s: float, num_frames: int, fps: float) -> np.ndarray:
    """Viseme weights [N, 4] from phoneme events: piecewise targets at 100 Hz, smoothed with a
    30 ms Gaussian (coarticulation: a mouth shape starts before and lingers after its phoneme)."""
    rate = 100
    steps = int(np.ceil(duration_s * rate)) + 1
    targets = np.zeros((steps, 4))
    starts = [event.start_s for event in phonemes] + [duration_s]
    for event, end in zip(phonemes, starts[1:], strict=True):
        first, last = int(round(event.start_s * rate)), int(round(end * rate))
        targets[first : max(last, first + 1)] = _VISEMES[viseme_class(event.phoneme)]
    smoothed = ndimage.gaussian_filter1d(targets, sigma=3.0, axis=0, mode="nearest")
    frame_times = np.arange(num_frames) / fps
    return np.stack([np.interp(frame_times, np.arange(steps) / rate, c) for c in smoothed.T], -1)


def mouth_weights(lips: np.ndarray, envelope: np.ndarray) -> np.ndarray:
    """The viseme weights [N, 4] that move the mesh, from the lip track's (`lip_track`): louder
    speech opens the jaw wider, as in real speech, and a closure (p, b, m) shuts what the jaw
    opened, so that the lips meet on it and never pass (the closure's own shape only thins them)."""
    weights = lips.copy()
    closed = np.clip(lips[:, 3], 0, 1)
    weights[:, 0] *= (0.5 + 0.5 * np.clip(envelope, 0, 1.5)) * (1 - closed)
    return weights
