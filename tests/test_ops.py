"""sdetalk_jax/models/ops.py: rotations, clip statistics and smooth noise."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sdetalk_jax.data.face_model import rotation_matrices
from sdetalk_jax.models import ops
from tests.model_fixtures import CONFIG


def test_rotation_from_6d_identity():
    np.testing.assert_allclose(
        ops.rotation_from_6d(jnp.array([1.0, 0, 0, 0, 1, 0])), np.eye(3), atol=1e-7
    )


def test_rotation_from_6d_gives_rotations_and_recovers_a_known_one():
    rng = np.random.default_rng(0)
    raw = jnp.asarray(rng.normal(size=(64, 6)))
    rotations = np.asarray(ops.rotation_from_6d(raw), np.float64)
    identity = np.broadcast_to(np.eye(3), rotations.shape)
    np.testing.assert_allclose(rotations @ rotations.transpose(0, 2, 1), identity, atol=1e-5)
    np.testing.assert_allclose(np.linalg.det(rotations), 1.0, atol=1e-5)
    # The first two rows of a rotation are its own 6-D parameters.
    from sdetalk_jax.data.face_model import rotation_matrices

    known = rotation_matrices(np.array([0.3]), np.array([-0.5]), np.array([0.2]))[0]
    np.testing.assert_allclose(
        ops.rotation_from_6d(jnp.asarray(known[:2].reshape(6))), known, atol=1e-6
    )


def test_rotation_from_vector_is_read_back_by_the_metrics():
    from sdetalk_jax import metrics

    rng = np.random.default_rng(8)
    vectors = rng.normal(scale=0.3, size=(20, 3))
    rotations = np.asarray(ops.rotation_from_vector(jnp.asarray(vectors)), np.float64)
    identity = np.broadcast_to(np.eye(3), rotations.shape)
    np.testing.assert_allclose(rotations @ rotations.transpose(0, 2, 1), identity, atol=1e-5)
    np.testing.assert_allclose(np.linalg.det(rotations), 1.0, atol=1e-5)
    for vector, rotation in zip(vectors, rotations, strict=True):
        read = metrics.head_rotation_vectors(np.stack([np.eye(3), rotation]))[0]
        np.testing.assert_allclose(read, vector, atol=1e-5)
    # a pure nod turns about x, as the corpus' own pitch does (their signs are opposite)
    nod = np.asarray(ops.rotation_from_vector(jnp.asarray([0.2, 0.0, 0.0])))
    np.testing.assert_allclose(nod, rotation_matrices([-0.2], [0.0], [0.0])[0], atol=1e-6)
    gradient = jax.grad(lambda v: jnp.sum(ops.rotation_from_vector(v)[..., 0, 1]))(jnp.zeros(3))
    assert np.all(np.isfinite(gradient)) and np.abs(gradient).max() > 0.5


def test_clip_statistics_are_the_mel_summary_and_ignore_padding():
    mel = 3.0 * jax.random.normal(jax.random.key(0), (2, 12, CONFIG.mel_bins))
    mask = jnp.arange(12)[None] < jnp.array([[12], [9]])
    statistics = np.asarray(ops.clip_statistics(mel, mask))
    for row, frames in enumerate((12, 9)):
        scaled = (np.asarray(mel[row, :frames], np.float64) + 4.0) / 5.0
        expected = np.r_[scaled.mean(0), scaled.std(0), np.abs(np.diff(scaled, axis=0)).mean(0)]
        np.testing.assert_allclose(statistics[row], expected, rtol=1e-4, atol=1e-5)
    padded = jnp.concatenate([mel, 5.0 * jnp.ones((2, 4, CONFIG.mel_bins))], axis=1)
    padded_mask = jnp.concatenate([mask, jnp.zeros((2, 4), bool)], axis=1)
    np.testing.assert_allclose(ops.clip_statistics(padded, padded_mask), statistics, atol=1e-6)


def test_smooth_noise_is_unit_variance_smooth_and_blind_to_padding():
    key = jax.random.key(0)
    noise = jax.random.normal(key, (400, 40, 8))
    mask = jnp.ones((400, 40), bool)
    smooth = np.asarray(ops.smooth_noise(noise, mask, 3.0))
    assert smooth.std(axis=(0, 2)) == pytest.approx(np.ones(40), abs=0.1)  # every frame N(0, 1)
    lag_one = np.mean(smooth[:, 1:] * smooth[:, :-1])
    assert lag_one > 0.9 and abs(np.mean(np.asarray(noise)[:, 1:] * noise[:, :-1])) < 0.05
    np.testing.assert_array_equal(ops.smooth_noise(noise, mask, 0.0), noise)
    # Padding: the real frames' smoothed noise does not depend on what the padding holds.
    short = noise[:2, :30]
    padded = jnp.concatenate([short, 100.0 * jnp.ones((2, 10, 8))], axis=1)
    padded_mask = jnp.arange(40)[None] < 30
    np.testing.assert_allclose(
        ops.smooth_noise(padded, jnp.broadcast_to(padded_mask, (2, 40)), 3.0)[:, :30],
        ops.smooth_noise(short, jnp.ones((2, 30), bool), 3.0),
        atol=1e-5,
    )
