"""Reading `templates.pkl` without letting the file run code.

A pickle may name any importable callable and have it called while loading. The unpickler below
resolves only the few globals that plain containers and numpy arrays need; any other name is
refused with `UnsafePickleError` before it is imported, so nothing in the file can execute.
"""

from __future__ import annotations

import io
import os
import pickle

import numpy as np

# (module, name) pairs that numpy arrays and plain containers pickle through. numpy moved its core
# to `numpy._core` in 2.0, so both spellings occur in files in the wild.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    # Protocol 5 rebuilds arrays from out-of-band buffers through this constructor.
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("collections", "OrderedDict"),
    # Protocol-2 pickles written by Python 3 encode bytes through this pure function.
    ("_codecs", "encode"),
}


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle asked for something other than plain containers and numpy arrays."""


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, *, source: str, **kwargs):
        super().__init__(file, **kwargs)
        self._source = source

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise UnsafePickleError(
            f"{self._source}: refusing to load '{module}.{name}'; only plain containers and "
            "numpy arrays are allowed in this pickle (convert it to .npz to be sure)"
        )

    def persistent_load(self, pid):
        raise UnsafePickleError(f"{self._source}: persistent ids are not allowed ({pid!r})")


def restricted_loads(data: bytes, *, source: str = "<bytes>"):
    """Unpickles `data` allowing only containers and numpy arrays (latin1 for Python 2 files)."""
    try:
        return _RestrictedUnpickler(io.BytesIO(data), source=source, encoding="latin1").load()
    except UnsafePickleError:
        raise
    except Exception as err:
        raise pickle.UnpicklingError(f"{source}: not a readable pickle ({err})") from err


def restricted_load(path: str | os.PathLike):
    """Restricted unpickling of a file; see `restricted_loads`."""
    path = os.fspath(path)
    with open(path, "rb") as handle:
        return restricted_loads(handle.read(), source=path)


def _as_template_array(subject: str, value, source: str) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype.kind not in "fiu":
        raise ValueError(f"{source}: template '{subject}' is not numeric (dtype {array.dtype})")
    if array.ndim == 1 and array.size % 3 == 0:
        array = array.reshape(-1, 3)
    if array.ndim != 2 or array.shape[1] != 3:
        raise ValueError(f"{source}: template '{subject}' has shape {array.shape}, expected [V, 3]")
    return array.astype(np.float32)


def load_templates(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Loads `{subject: [V, 3]}` from `templates.pkl` (restricted) or `templates.npz`."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: template file not found")
    if path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as archive:
            raw = {key: archive[key] for key in archive.files}
    else:
        raw = restricted_load(path)
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a dict of subject -> [V, 3], got {type(raw).__name__}")
    return {str(subject): _as_template_array(str(subject), v, path) for subject, v in raw.items()}
