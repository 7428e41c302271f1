import os
import pickle

import numpy as np
import pytest

from sdetalk_jax.data import safe_pickle


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_plain_dict_of_arrays_round_trips(tmp_path, protocol):
    templates = {"F2": np.arange(12, dtype=np.float64).reshape(4, 3), "M3": np.ones((4, 3))}
    path = os.fspath(tmp_path / "templates.pkl")
    with open(path, "wb") as handle:
        pickle.dump(templates, handle, protocol=protocol)

    loaded = safe_pickle.load_templates(path)

    assert sorted(loaded) == ["F2", "M3"]
    np.testing.assert_array_equal(loaded["F2"], templates["F2"])
    assert loaded["F2"].dtype == np.float32


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    path = os.fspath(tmp_path / "templates.pkl")
    with open(path, "wb") as handle:
        pickle.dump({"F2": _Exploit(marker)}, handle)

    with pytest.raises(safe_pickle.UnsafePickleError, match="refusing") as info:
        safe_pickle.load_templates(path)

    assert path in str(info.value)
    assert not marker.exists()


def test_npz_templates_and_flat_arrays(tmp_path):
    path = os.fspath(tmp_path / "templates.npz")
    np.savez(path, F2=np.zeros(12), M3=np.ones((4, 3)))
    loaded = safe_pickle.load_templates(path)
    assert loaded["F2"].shape == (4, 3)


def test_non_dict_or_bad_shape_is_refused(tmp_path):
    path = os.fspath(tmp_path / "templates.pkl")
    with open(path, "wb") as handle:
        pickle.dump([1, 2, 3], handle)
    with pytest.raises(ValueError, match="expected a dict"):
        safe_pickle.load_templates(path)
    with open(path, "wb") as handle:
        pickle.dump({"F2": np.zeros((4, 2))}, handle)
    with pytest.raises(ValueError, match=r"shape \(4, 2\)"):
        safe_pickle.load_templates(path)


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


# A few hundred bytes each, built opcode by opcode; each would allocate gigabytes if run.
MEMORY_BOMBS = {
    "ndarray with a huge shape": _global("numpy", "ndarray") + b"(I1000000000000\ntR.",
    "_reconstruct with a huge shape": _global("numpy.core.multiarray", "_reconstruct")
    + b"("
    + _global("numpy", "ndarray")
    + b"(I100000000000\ntC\x01btR.",
    # Each 'hex' round doubles the bytes: 40 nested calls turn 3 bytes into terabytes.
    "nested codec calls": _global("_codecs", "encode") * 40
    + b"(Vabc\nVhex\ntR"
    + b"Vhex\ntR" * 39
    + b".",
    "object array": _global("numpy", "dtype") + b"(VO8\nI0\nI1\ntR.",
}


class _HugeArrayState:
    """Pickles as an empty array whose state (BUILD) claims a 40 GB shape over 4 bytes of data."""

    def __reduce__(self):
        from numpy._core.multiarray import _reconstruct

        state = (1, (100000, 100000), np.dtype("f4"), False, b"abcd")
        return (_reconstruct, (np.ndarray, (0,), b"b"), state)


MEMORY_BOMBS["array state larger than the file"] = pickle.dumps(_HugeArrayState(), protocol=2)


@pytest.mark.parametrize("name", sorted(MEMORY_BOMBS))
def test_memory_bombs_are_refused_before_allocating(tmp_path, name):
    path = tmp_path / "templates.pkl"
    path.write_bytes(MEMORY_BOMBS[name])
    assert path.stat().st_size < 1000
    with pytest.raises(safe_pickle.UnsafePickleError, match="refusing") as info:
        safe_pickle.load_templates(os.fspath(path))
    assert os.fspath(path) in str(info.value)


def test_budget_follows_the_file_size(tmp_path):
    # A real BIWI-sized template file (23370 vertices, 14 subjects) loads; its arrays are in it.
    templates = {f"S{i}": np.full((23370, 3), i, np.float32) for i in range(14)}
    for protocol in (2, 5):
        path = os.fspath(tmp_path / f"templates{protocol}.pkl")
        with open(path, "wb") as handle:
            pickle.dump(templates, handle, protocol=protocol)
        loaded = safe_pickle.load_templates(path)
        assert loaded["S13"].shape == (23370, 3) and float(loaded["S13"][0, 0]) == 13.0
