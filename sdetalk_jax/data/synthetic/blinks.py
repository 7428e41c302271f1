"""SynthBIWI's blinks: when the eyes close, from the speech, and how a blink meets an emotion's lids
(docs/data.md, "SynthBIWI")."""

from __future__ import annotations

import numpy as np

from sdetalk_jax.data import face_model


def blink_track(envelope: np.ndarray, fps: float) -> np.ndarray:
    """[N] how far the eyes are closed (0 open, 1 shut): a 0.24 s blink as a break between words
    begins (the envelope below 0.2 for 0.08 s after 0.4 s mostly above it), at most one per 1.5 s
    and only where the break and the blink lie inside the clip, so that blinks follow the speech
    as they tend to at phrase boundaries."""
    speaking = envelope > 0.2
    n = envelope.shape[0]
    onsets = np.nonzero(speaking[:-1] & ~speaking[1:])[0] + 1
    track = np.zeros(n)
    half, before = 0.12 * fps, int(round(0.4 * fps))
    pause = max(1, int(round(0.08 * fps)))
    last = -np.inf
    frames = np.arange(n)
    for onset in onsets:
        spoken = onset >= before and speaking[onset - before : onset].mean() >= 0.8
        inside = onset + max(pause, 2 * half) <= n
        if onset - last < 1.5 * fps or not (spoken and inside):
            continue
        if speaking[onset : onset + pause].any():
            continue
        track = np.maximum(track, np.clip(1 - np.abs(frames - onset - half) / half, 0, 1))
        last = onset
    return track * track * (3 - 2 * track)


def blink_over_expression(blinks: np.ndarray, expression: np.ndarray) -> np.ndarray:
    """[N] the blink weight an emotional take adds to its neutral take's `blinks`, so that a blink
    shuts the lids exactly where the expression widens or narrows them (eye_widen, squint) and a
    blink over a squint does not push the lids through each other."""
    widen = expression[:, face_model.EXPRESSION_SHAPES.index("eye_widen")]
    squint = expression[:, face_model.EXPRESSION_SHAPES.index("squint")]
    return blinks * (face_model.EYE_WIDEN_OPENING * widen - face_model.SQUINT_CLOSING * squint)
