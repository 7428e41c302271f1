"""Writing a corpus in the BIWI layout (used by the synthetic generator and by tests).

Every file is written atomically (`sdetalk_jax.fileio`): an interrupted run never leaves a
half-written file under the name a reader looks for.
"""

from __future__ import annotations

import csv
import io
import json
import os
import pickle
from collections.abc import Mapping, Sequence

import numpy as np
import soundfile

from sdetalk_jax.data.biwi import EMOTION_LABELS_FILE
from sdetalk_jax.fileio import write_bytes, write_npy, write_npz


def write_wav(path: str, waveform: np.ndarray, sample_rate: int) -> None:
    """16-bit PCM wav; the bytes depend only on the samples (no timestamps)."""
    buffer = io.BytesIO()
    soundfile.write(buffer, waveform, sample_rate, subtype="PCM_16", format="WAV")
    write_bytes(path, buffer.getvalue())


def write_templates(
    root: str, templates: Mapping[str, np.ndarray], *, as_pickle: bool = True
) -> None:
    """`templates.pkl` as the field's code expects (plain dict of arrays), or `templates.npz`."""
    arrays = {subject: np.asarray(t, np.float32) for subject, t in sorted(templates.items())}
    if as_pickle:
        write_bytes(os.path.join(root, "templates.pkl"), pickle.dumps(arrays, protocol=4))
    else:
        write_npz(os.path.join(root, "templates.npz"), **arrays)


def write_region(root: str, name: str, indices: Sequence[int]) -> None:
    text = "\n".join(str(int(i)) for i in indices) + "\n"
    write_bytes(os.path.join(root, "regions", f"{name}.txt"), text.encode())


def write_emotion_labels(
    root: str, categories: Sequence[str], labels: Mapping[str, np.ndarray]
) -> None:
    buffer = io.StringIO()
    table = csv.writer(buffer, lineterminator="\n")
    table.writerow(["clip", *categories])
    for clip in sorted(labels):
        table.writerow([clip, *(f"{float(w):.6f}" for w in labels[clip])])
    write_bytes(os.path.join(root, EMOTION_LABELS_FILE), buffer.getvalue().encode())


def write_corpus_info(root: str, info: Mapping) -> None:
    write_bytes(
        os.path.join(root, "corpus.json"),
        (json.dumps(info, indent=2, sort_keys=True) + "\n").encode(),
    )


def write_clip(
    root: str,
    name: str,
    *,
    waveform: np.ndarray,
    sample_rate: int,
    vertices: np.ndarray,
    rotation: np.ndarray | None = None,
    translation: np.ndarray | None = None,
    neutral_vertices: np.ndarray | None = None,
) -> None:
    """One clip's files: wav, vertices [frames, V*3], and optionally head pose and neutral track."""
    write_wav(os.path.join(root, "wav", f"{name}.wav"), waveform, sample_rate)
    write_npy(os.path.join(root, "vertices_npy", f"{name}.npy"), np.asarray(vertices, np.float32))
    if rotation is not None and translation is not None:
        write_npz(
            os.path.join(root, "head_pose", f"{name}.npz"),
            rotation=np.asarray(rotation, np.float32),
            translation=np.asarray(translation, np.float32),
        )
    if neutral_vertices is not None:
        write_npy(
            os.path.join(root, "neutral_vertices_npy", f"{name}.npy"),
            np.asarray(neutral_vertices, np.float32),
        )
