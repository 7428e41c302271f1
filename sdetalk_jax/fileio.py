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
import shutil
import socket
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


def write_npz(path: str, **arrays) -> None:
    """An uncompressed .npz that `np.load` reads, with fixed zip timestamps so that the same arrays
    always give the same bytes (`np.savez` stamps the current time). A value may be a
    `StoredFrames`: its .npy file is copied in a piece at a time, never read whole."""
    with atomic_output(path) as handle:
        write_npz_to(handle, arrays)


def npz_bytes(**arrays: np.ndarray) -> bytes:
    """The bytes `write_npz` writes."""
    buffer = io.BytesIO()
    write_npz_to(buffer, arrays)
    return buffer.getvalue()


def write_npz_to(handle, arrays: dict) -> None:
    with zipfile.ZipFile(handle, "w", zipfile.ZIP_STORED) as archive:
        for key in sorted(arrays):
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            value = arrays[key]
            if isinstance(value, StoredFrames):
                large = os.path.getsize(value.path) >= zipfile.ZIP64_LIMIT
                with archive.open(info, "w", force_zip64=large) as member:
                    value.copy_to(member)
            else:
                member = io.BytesIO()
                np.lib.format.write_array(member, np.asarray(value), allow_pickle=False)
                archive.writestr(info, member.getvalue())


class StoredFrames:
    """An array [N, ...] in a .npy file, read back a slice of frames at a time (`frames[a:b]`)
    with plain reads: unlike a memory map, reading it does not grow the process's resident memory."""

    def __init__(self, path: str):
        self.path = path
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            if version not in ((1, 0), (2, 0)):
                raise ValueError(f"{path}: .npy format {version} is not read here")
            read_header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            self.shape, fortran_order, self.dtype = read_header(handle)
            if fortran_order:
                raise ValueError(f"{path}: Fortran-ordered arrays are not read by frames")
            self.offset = handle.tell()
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: slice) -> np.ndarray:
        if not isinstance(rows, slice):
            raise TypeError("StoredFrames reads slices of frames (frames[a:b]), not single items")
        start, stop, step = rows.indices(len(self))
        if step != 1:
            raise IndexError("StoredFrames reads contiguous slices of frames")
        count = max(stop - start, 0)
        with open(self.path, "rb") as handle:
            handle.seek(self.offset + start * self.row_bytes)
            flat = np.fromfile(handle, self.dtype, count * self.row_bytes // self.dtype.itemsize)
        return flat.reshape((count,) + tuple(self.shape[1:]))

    def __array__(self, dtype=None, copy=None):
        whole = self[:]
        return whole if dtype is None else whole.astype(dtype)

    def copy_to(self, handle, piece_bytes: int = 1 << 24) -> None:
        """The whole .npy file, header included, into `handle`."""
        with open(self.path, "rb") as source:
            shutil.copyfileobj(source, handle, piece_bytes)


FRAMES_PREFIX = ".tmp-frames-"


def frames_folder_prefix(pid: int | None = None) -> str:
    """`.tmp-frames-HOST-PID-`: whose temporary frames a folder holds."""
    return f"{FRAMES_PREFIX}{socket.gethostname()}-{os.getpid() if pid is None else pid}-"


def process_is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's: alive
        return True
    return True


def remove_abandoned_frame_folders(directory: str) -> list[str]:
    """Removes the temporary frame folders in `directory` that a process of this host left when
    it was killed outright (SIGKILL, or SIGTERM, which skips Python's cleanup): those whose
    process is gone. Another host's, and a living process's, are left alone. Returns the paths."""
    host_prefix = f"{FRAMES_PREFIX}{socket.gethostname()}-"
    removed = []
    for name in sorted(os.listdir(directory)):
        if not name.startswith(host_prefix):
            continue
        pid = name[len(host_prefix) :].split("-", 1)[0]
        path = os.path.join(directory, name)
        if pid.isdigit() and not process_is_alive(int(pid)) and os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


class FrameFiles:
    """Arrays of a known number of frames, written a chunk of frames at a time (`append`) to .npy
    files in a temporary folder beside the outputs, and read back as `StoredFrames`: how `animate`
    keeps memory flat for audio of any length. With `num_frames` None (a stream of unknown
    length) the rows go to headerless files, given their .npy header when read back. The folder is
    removed on leaving the block, and the folders that killed processes of this host left are
    removed on entering it."""

    def __init__(self, directory: str, num_frames: int | None):
        self.directory, self.num_frames = directory, num_frames
        self.folder = ""
        self.handles: dict[str, object] = {}
        self.written: dict[str, int] = {}
        self.dtypes: dict[str, np.dtype] = {}
        self.row_shapes: dict[str, tuple] = {}

    def __enter__(self) -> FrameFiles:
        os.makedirs(self.directory, exist_ok=True)
        remove_abandoned_frame_folders(self.directory)
        self.folder = tempfile.mkdtemp(dir=self.directory, prefix=frames_folder_prefix())
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles.values():
            handle.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    def append(self, chunk: dict[str, np.ndarray]) -> None:
        for name, value in chunk.items():
            value = np.ascontiguousarray(value)
            if name not in self.handles:
                suffix = "npy" if self.num_frames is not None else "rows"
                handle = open(os.path.join(self.folder, f"{name}.{suffix}"), "wb")
                if self.num_frames is not None:
                    write_npy_header(handle, value.dtype, (self.num_frames,) + value.shape[1:])
                self.handles[name], self.written[name] = handle, 0
                self.dtypes[name], self.row_shapes[name] = value.dtype, value.shape[1:]
            if value.dtype != self.dtypes[name] or value.shape[1:] != self.row_shapes[name]:
                raise ValueError(
                    f"{name}: a chunk of {value.dtype} {value.shape[1:]} after chunks of "
                    f"{self.dtypes[name]} {self.row_shapes[name]}"
                )
            if self.num_frames is not None and self.written[name] + len(value) > self.num_frames:
                raise ValueError(f"{name}: more than the {self.num_frames} frames announced")
            value.tofile(self.handles[name])
            self.written[name] += len(value)

    def arrays(self) -> dict[str, StoredFrames]:
        """Every array, once all its frames are written (of a stream: as many as were written,
        the same for every array)."""
        expected = self.num_frames
        if expected is None:
            expected = max(self.written.values(), default=0)
        short = {name: count for name, count in self.written.items() if count != expected}
        if short:
            raise ValueError(f"frames missing (of {expected}): {short}")
        for handle in self.handles.values():
            handle.flush()
        if self.num_frames is not None:
            return {name: StoredFrames(handle.name) for name, handle in self.handles.items()}
        return {name: self._with_header(name, handle.name) for name, handle in self.handles.items()}

    def _with_header(self, name: str, rows_path: str) -> StoredFrames:
        """The headerless rows of `name` as a .npy file (copied a piece at a time)."""
        path = os.path.join(self.folder, f"{name}.npy")
        with open(path, "wb") as target, open(rows_path, "rb") as rows:
            write_npy_header(
                target, self.dtypes[name], (self.written[name],) + self.row_shapes[name]
            )
            shutil.copyfileobj(rows, target, 1 << 22)
        return StoredFrames(path)


def write_npy_header(handle, dtype: np.dtype, shape: tuple) -> None:
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(handle, header)


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
        self.handle = None
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
            # Opened once, each record flushed as it is written: a killed run loses no line.
            self.handle = open(self.path, "a")

    def write(self, step: int, prefix: str, values: dict) -> None:
        if not self.enabled:
            return
        record = {"step": step, **{f"{prefix}/{k}": float(v) for k, v in values.items()}}
        self.handle.write(json.dumps(record, sort_keys=True) + "\n")
        self.handle.flush()
        for name, value in record.items():
            if name != "step":
                self.tensorboard.add_scalar(name, value, step)

    def close(self):
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.handle is not None:
            self.handle.close()
            self.handle = None


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
