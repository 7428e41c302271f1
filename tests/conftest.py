"""Shared fixtures: tiny corpora in the BIWI layout, written by the tests themselves."""

from __future__ import annotations

import os

import numpy as np
import pytest

from sdetalk_jax.data import writer

TEST_XLA_FLAG = "--xla_backend_optimization_level=0"


def pytest_configure(config):
    """A persistent XLA compilation cache for the session, shared with the training processes the
    tests start: the same step functions are compiled once instead of once per test."""
    import tempfile

    import jax

    cache = os.environ.setdefault(
        "JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="sdetalk-xla-cache-")
    )
    # The tests' networks are tiny: compiling them takes longer than running them, and LLVM's
    # optimisation is most of the compile time (about a third of the suite's). Read when the
    # backend starts, so set before the first computation; the processes the tests start
    # inherit it (tests/test_scaling.py keeps it when it sets its own device count).
    flags = os.environ.get("XLA_FLAGS", "")
    if TEST_XLA_FLAG not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {TEST_XLA_FLAG}".strip()
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)


FPS = 25
SAMPLE_RATE = 16_000
NUM_VERTICES = 30
CATEGORIES = ("happy", "sad", "angry")


def tone(seconds: float, sample_rate: int = SAMPLE_RATE, frequency: float = 220.0) -> np.ndarray:
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    return (0.3 * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


def write_small_corpus(
    root: str,
    *,
    subjects=("F2", "M3", "F1"),
    sentences=(1, 2, 33, 37),
    seed: int = 0,
    as_pickle: bool = True,
) -> dict:
    """A valid corpus: every clip has audio, vertices, head pose and an emotion row."""
    rng = np.random.default_rng(seed)
    templates = {s: rng.normal(size=(NUM_VERTICES, 3)).astype(np.float32) for s in subjects}
    writer.write_templates(root, templates, as_pickle=as_pickle)
    writer.write_region(root, "lve", range(0, 10))
    writer.write_region(root, "fdd", range(10, 25))
    writer.write_corpus_info(root, {"fps": FPS})
    labels = {}
    for subject in subjects:
        for sentence in sentences:
            for emotional in (True, False):
                name = f"{subject}_{'e' if emotional else ''}{sentence:02d}"
                frames = int(rng.integers(20, 60))
                vertices = templates[subject].reshape(1, -1) + 0.01 * rng.normal(
                    size=(frames, NUM_VERTICES * 3)
                )
                rotation = np.broadcast_to(np.eye(3), (frames, 3, 3))
                translation = 0.01 * rng.normal(size=(frames, 3))
                writer.write_clip(
                    root,
                    name,
                    waveform=tone(frames / FPS + 0.02, frequency=150 + 10 * sentence),
                    sample_rate=SAMPLE_RATE,
                    vertices=vertices,
                    rotation=rotation,
                    translation=translation,
                )
                weights = rng.dirichlet(np.ones(len(CATEGORIES))) if emotional else np.ones(3) / 3
                labels[name] = weights
    writer.write_emotion_labels(root, CATEGORIES, labels)
    return {"templates": templates, "labels": labels}


@pytest.fixture
def small_corpus(tmp_path) -> str:
    root = os.fspath(tmp_path / "corpus")
    write_small_corpus(root)
    return root


def tiny_training_config(corpus_root: str, feature_cache: str):
    """configs/synthetic.py shrunk to seconds (tests/tiny_config.py) on the given corpus."""
    from tests.tiny_config import get_config

    config = get_config()
    config.data.root = corpus_root
    config.data.feature_cache = feature_cache
    return config
