"""What the project writes to disk outside the corpus: files written atomically, the run's metrics
(JSON lines and TensorBoard) and a record of the software environment.

Every file goes to a temporary name beside its target and is renamed into place, so an interrupted
run never leaves a half-written file under the name a reader looks for.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import tempfile
import zipfile

import numpy as np


def _umask() -> int:
    """The process's umask (read back by setting it: the only portable way)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str):
    """Yields a temporary path beside `path` for a writer that wants a file name (ffmpeg); the file
    replaces `path` only if the block succeeds, and is removed otherwise. Like any file the process
    creates, it gets the mode the umask allows (mkstemp alone would make it private, 0600)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(
        dir=directory, prefix=".tmp-", suffix=os.path.basename(path)
    )
    os.close(descriptor)
    try:
        os.chmod(temporary, 0o666 & ~_umask())
        yield temporary
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)
        raise


@contextlib.contextmanager
def atomic_output(path: str, mode: str = "wb"):
    """Yields a handle to a temporary file that replaces `path` only if the block succeeds."""
    with atomic_path(path) as temporary, open(temporary, mode) as handle:
        yield handle


def write_bytes(path: str, data: bytes) -> None:
    with atomic_output(path) as handle:
        handle.write(data)


def write_json(path: str, value) -> None:
    write_bytes(path, (json.dumps(value, indent=2, sort_keys=True, default=str) + "\n").encode())


def write_npy(path: str, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    write_bytes(path, buffer.getvalue())


def write_npz(path: str, **arrays: np.ndarray) -> None:
    """An uncompressed .npz that `np.load` reads, with fixed zip timestamps so that the same arrays
    always give the same bytes (`np.savez` stamps the current time)."""
    write_bytes(path, npz_bytes(**arrays))


def npz_bytes(**arrays: np.ndarray) -> bytes:
    """The bytes `write_npz` writes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for key in sorted(arrays):
            member = io.BytesIO()
            np.lib.format.write_array(member, np.asarray(arrays[key]), allow_pickle=False)
            archive.writestr(
                zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0)), member.getvalue()
            )
    return buffer.getvalue()


def truncate_records(path: str, step: int, *, keep_validation_at_step: bool = True) -> int:
    """Drops the records of `metrics.jsonl` after `step` (and, unless `keep_validation_at_step`,
    the validation and timing records at it), in place and atomically: a run resumed from the
    checkpoint of `step` then writes each later step once. Returns how many records it dropped."""
    if not os.path.exists(path):
        return 0
    with open(path) as handle:
        lines = handle.readlines()
    kept = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a kill
        at = record.get("step", 0)
        validation = any(k.startswith(("val/", "time/")) for k in record)
        if at < step or (at == step and (keep_validation_at_step or not validation)):
            kept.append(json.dumps(record, sort_keys=True) + "\n")
    if len(kept) != len(lines):
        write_bytes(path, "".join(kept).encode())
    return len(lines) - len(kept)


class MetricWriter:
    """JSON lines (`metrics.jsonl`) and TensorBoard event files in the workdir; a no-op when not
    `enabled` (every process but the first).

    `resume_step`: the step the run (re)starts from. Records after it, left by a run that was
    killed after its last checkpoint, are dropped from metrics.jsonl and hidden from TensorBoard
    (its purge_step), so that every step has one record."""

    def __init__(
        self,
        workdir: str,
        enabled: bool = True,
        *,
        resume_step: int | None = None,
        keep_validation_at_step: bool = True,
    ):
        self.enabled = enabled
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.tensorboard = None
        if enabled:
            from tensorboardX import SummaryWriter

            purge_step = None
            if resume_step is not None and os.path.exists(self.path):
                truncate_records(
                    self.path, resume_step, keep_validation_at_step=keep_validation_at_step
                )
                purge_step = resume_step + 1
            self.tensorboard = SummaryWriter(
                os.path.join(workdir, "tensorboard"), purge_step=purge_step
            )

    def write(self, step: int, prefix: str, values: dict) -> None:
        if not self.enabled:
            return
        record = {"step": step, **{f"{prefix}/{k}": float(v) for k, v in values.items()}}
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record, sort_keys=True) + "\n")
        for name, value in record.items():
            if name != "step":
                self.tensorboard.add_scalar(name, value, step)

    def close(self):
        if self.tensorboard is not None:
            self.tensorboard.close()


def environment_record() -> dict:
    """Python, every installed distribution with its exact version, the devices and processes."""
    from importlib import metadata

    import jax

    packages = {}
    for distribution in metadata.distributions():
        name = distribution.metadata["Name"]
        if name:
            packages[name.lower()] = distribution.version
    return {
        "python": sys.version.split()[0],
        "packages": dict(sorted(packages.items())),
        "devices": [str(d) for d in jax.devices()],
        "process_count": jax.process_count(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }
