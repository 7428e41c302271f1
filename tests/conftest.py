"""Shared fixtures: tiny corpora in the BIWI layout, written by the tests themselves."""

from __future__ import annotations

import os

import numpy as np
import pytest

from sdetalk_jax.data import writer

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
    """configs/synthetic.py shrunk to seconds: a 2-subject SynthBIWI (sentences 1-3 train, 4 val,
    5 test) and tiny networks."""
    from sdetalk_jax.config_files import repository_config

    config = repository_config("synthetic")
    config.data.root = corpus_root
    config.data.generate_if_missing = False
    config.data.feature_cache = feature_cache
    config.data.splits.train_subjects = ("F2", "F3")
    config.data.splits.train_sentences = (1, 3)
    config.data.splits.val_sentences = (4, 4)
    config.data.splits.test_sentences = (5, 5)
    config.data.bucket_min = 16
    config.model.wav2vec2_random = dict(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        conv_dim=(16,) * 7, num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2, seed=0,
    )  # fmt: skip
    config.model.hidden = 16
    config.model.heads = 2
    config.model.feedforward = 32
    config.model.identity_dim = 4
    config.model.frequency_bands = 8
    config.model.frequency_dim = 8
    config.model.discriminator_blocks = 1
    config.model.decoder_blocks = 1
    config.train.global_batch = 4
    config.train.epochs = 2
    config.train.progress = False
    return config
