"""Writing a corpus in the BIWI layout (used by the synthetic generator and by tests).

Every file is written to a temporary name beside its target and renamed into place, so an
interrupted run never leaves a half-written file under the name a reader looks for.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import pickle
import tempfile
import zipfile
from collections.abc import Mapping, Sequence

import numpy as np
import soundfile

from sdetalk_jax.data.biwi import EMOTION_LABELS_FILE


@contextlib.contextmanager
def atomic_output(path: str, mode: str = "wb"):
    """Yields a handle to a temporary file that replaces `path` only if the block succeeds."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(
        dir=directory, prefix=".tmp-", suffix=os.path.basename(path)
    )
    try:
        with os.fdopen(descriptor, mode) as handle:
            yield handle
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)
        raise


def write_bytes(path: str, data: bytes) -> None:
    with atomic_output(path) as handle:
        handle.write(data)


def write_npy(path: str, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    write_bytes(path, buffer.getvalue())


def write_npz(path: str, **arrays: np.ndarray) -> None:
    """An uncompressed .npz that `np.load` reads, with fixed zip timestamps so that the same arrays
    always give the same bytes (`np.savez` stamps the current time)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for key in sorted(arrays):
            member = io.BytesIO()
            np.lib.format.write_array(member, np.asarray(arrays[key]), allow_pickle=False)
            archive.writestr(
                zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0)), member.getvalue()
            )
    write_bytes(path, buffer.getvalue())


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
