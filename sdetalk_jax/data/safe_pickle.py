"""Reading `templates.pkl` without letting the file run code or exhaust memory.

A pickle may name any importable callable and have it called while loading. The unpickler below
resolves only the few globals that plain containers and numpy arrays need; any other name is
refused with `UnsafePickleError` before it is imported, so nothing in the file can execute.

Even those few callables could be made to allocate far more than the file holds (an array
constructed with a huge shape, or bytes re-encoded through a growing codec, nested), so every call
and every array state is checked against a budget derived from the file's size before it runs:
the data of an honest template file is in the file itself. It runs on Python's own
(pure-Python) unpickler, whose opcodes can be checked one by one; template files are small.
"""

from __future__ import annotations

import io
import math
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
# Bytes in protocol-2 pickles are latin-1 text re-encoded; no other codec is needed (and 'hex' or
# 'base64', nested, would grow a few bytes into gigabytes).
_LATIN1 = {"latin1", "latin-1", "latin_1", "iso-8859-1", "iso8859-1", "l1"}
# Slack beyond twice the file's size: small arrays, dtypes and bookkeeping.
_BUDGET_SLACK = 1 << 20


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle asked for something other than plain containers and numpy arrays, or for more
    memory than its own size can justify."""


def _element_count(shape) -> int:
    if isinstance(shape, int | np.integer):
        shape = (shape,)
    if not isinstance(shape, tuple | list) or not all(
        isinstance(n, int | np.integer) and n >= 0 for n in shape
    ):
        raise TypeError(f"not an array shape: {shape!r}")
    return math.prod(int(n) for n in shape)


def _numeric_dtype(value) -> np.dtype:
    dtype = np.dtype(value)
    if dtype.kind not in "biuf":
        raise TypeError(f"dtype {dtype} is not numeric")
    return dtype


class _RestrictedUnpickler(pickle._Unpickler):
    """The pure-Python unpickler with every global, call (REDUCE, NEWOBJ) and array state (BUILD)
    checked before it runs."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file, *, source: str, budget: int, **kwargs):
        super().__init__(file, **kwargs)
        self._source = source
        self._budget = budget

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise UnsafePickleError(
            f"{self._source}: refusing to load '{module}.{name}'; only plain containers and "
            "numpy arrays are allowed in this pickle (convert it to .npz to be sure)"
        )

    def persistent_load(self, pid):
        raise UnsafePickleError(f"{self._source}: persistent ids are not allowed ({pid!r})")

    def _charge(self, nbytes: int, what: str) -> None:
        self._budget -= nbytes
        if self._budget < 0:
            raise UnsafePickleError(
                f"{self._source}: refusing to allocate {what} ({nbytes} bytes), more than a "
                "template file of this size can hold"
            )

    def _check_array(self, shape, dtype, what: str) -> None:
        self._charge(_element_count(shape) * _numeric_dtype(dtype).itemsize, what)

    def _check_call(self, func, args) -> None:
        """Refuses a call of an allowed global whose arguments would allocate beyond the budget
        or leave plain numeric data."""
        name = getattr(func, "__name__", repr(func))
        if func is np.dtype:
            _numeric_dtype(args[0])
        elif name == "encode":  # _codecs.encode
            text, encoding = args[0], (args[1] if len(args) > 1 else "utf-8")
            if not isinstance(text, str) or str(encoding).lower() not in _LATIN1:
                raise UnsafePickleError(
                    f"{self._source}: refusing codec call encode(..., {encoding!r})"
                )
            self._charge(len(text), "encoded bytes")
        elif func is np.ndarray:
            self._check_array(args[0], args[1] if len(args) > 1 else float, "an array")
        elif name == "_reconstruct":
            if args[0] is not np.ndarray:
                raise UnsafePickleError(f"{self._source}: refusing array subclass {args[0]!r}")
            self._check_array(args[1], args[2], "an array")
        elif name == "_frombuffer":
            self._check_array(args[2], args[1], "an array")
        elif name == "scalar":
            _numeric_dtype(args[0])

    def _guarded(self, call, describe):
        try:
            call()
        except UnsafePickleError:
            raise
        except (TypeError, ValueError, IndexError) as err:
            raise UnsafePickleError(f"{self._source}: refusing {describe} ({err})") from err

    def load_reduce(self):
        args, func = self.stack[-1], self.stack[-2]
        self._guarded(lambda: self._check_call(func, tuple(args)), "a call")
        super().load_reduce()

    dispatch[pickle.REDUCE[0]] = load_reduce

    def load_newobj(self):
        args, cls = self.stack[-1], self.stack[-2]
        self._guarded(lambda: self._check_call(cls, tuple(args)), "a constructor")
        super().load_newobj()

    dispatch[pickle.NEWOBJ[0]] = load_newobj

    def load_newobj_ex(self):
        raise UnsafePickleError(f"{self._source}: NEWOBJ_EX is not used by plain containers")

    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex

    def load_build(self):
        state, instance = self.stack[-1], self.stack[-2]
        if isinstance(instance, np.ndarray):
            # (version, shape, dtype, is_fortran, data): the shape and dtype the array becomes.
            self._guarded(
                lambda: self._check_array(state[1], state[2], "an array's contents"),
                "an array state",
            )
        super().load_build()

    dispatch[pickle.BUILD[0]] = load_build


def restricted_loads(data: bytes, *, source: str = "<bytes>"):
    """Unpickles `data` allowing only containers and numeric numpy arrays (latin1 for Python 2
    files), and no more memory than about twice the data's own size."""
    budget = 2 * len(data) + _BUDGET_SLACK
    try:
        unpickler = _RestrictedUnpickler(
            io.BytesIO(data), source=source, budget=budget, encoding="latin1"
        )
        return unpickler.load()
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
