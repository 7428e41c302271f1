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
