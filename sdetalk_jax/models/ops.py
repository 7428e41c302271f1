"""The array operations the networks and the losses share: masked means over real frames,
smoothing over time, positions, the emotion network's mel summary, rotations and Eq. 4's posing.
Pure functions of arrays, no parameters."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def sinusoidal_positions(length: int, dim: int) -> jnp.ndarray:
    position = np.arange(length)[:, None]
    rate = np.exp(-np.log(10_000.0) * np.arange(0, dim, 2) / dim)
    table = np.zeros((length, dim), np.float32)
    table[:, 0::2] = np.sin(position * rate)
    table[:, 1::2] = np.cos(position * rate)
    return jnp.asarray(table)


def masked_mean(values: jax.Array, mask: jax.Array, axis: int = 1) -> jax.Array:
    """Mean over `axis` of values [B, N, ...] counting only frames where mask [B, N] is true."""
    weights = mask.astype(values.dtype).reshape(mask.shape + (1,) * (values.ndim - mask.ndim))
    total = jnp.sum(values * weights, axis=axis)
    count = jnp.maximum(jnp.sum(weights, axis=axis), 1.0)
    return total / count


def gaussian_kernel(frames: int, width: float) -> jax.Array:
    """[N, N] weights exp(-(t - s)^2 / (2 width^2)) between frames t and s."""
    positions = jnp.arange(frames, dtype=jnp.float32)
    return jnp.exp(-0.5 * jnp.square((positions[:, None] - positions[None]) / width))


def smooth_noise(noise, mask, width: float):
    """Noise z [B, N, D] smoothed over time by a Gaussian of standard deviation `width` frames,
    over real frames only (mask [B, N]), and rescaled so that each frame is again N(0, I): the
    same clip gets the same smoothed noise whatever its padding. width 0: z unchanged."""
    if width <= 0:
        return noise
    kernel = gaussian_kernel(noise.shape[1], width)
    weights = mask.astype(noise.dtype)
    smoothed = jnp.einsum("ts,bs,bsd->btd", kernel, weights, noise)
    # The sum of independent N(0, 1) with these weights has variance sum(kernel^2).
    variance = jnp.einsum("ts,bs->bt", jnp.square(kernel), weights)
    return smoothed / jnp.sqrt(jnp.maximum(variance, 1e-12))[..., None]


def scaled_mel(mel):
    """The emotion network's input scale: log-mel values lie in about [-14, 6]."""
    return (mel + 4.0) / 5.0


def clip_statistics(mel, mask) -> jax.Array:
    """[B, 3 bins]: per bin of the scaled log-mel [B, N, bins], the clip's mean over its real
    frames (mask [B, N]), its standard deviation and its mean absolute change from one real frame
    to the next: the summary from which studies/unseen_emotion_ceiling.py's probes tell emotion
    for voices never heard. Padding changes nothing."""
    values = scaled_mel(mel)
    mean = masked_mean(values, mask)
    spread = jnp.sqrt(masked_mean(jnp.square(values - mean[:, None]), mask) + 1e-6)
    step_mask = mask[:, 1:] & mask[:, :-1]
    change = masked_mean(jnp.abs(jnp.diff(values, axis=1)), step_mask)
    return jnp.concatenate([mean, spread, change], -1)


def loudness_window(mel, mask, frames: int) -> jax.Array:
    """[B, N, frames]: each frame's loudness (mean log-mel, standardised over the clip's real
    frames: louder or softer than this clip usually is) and that of the `frames - 1` frames before
    it; zero before the clip and on padding, so that padding changes nothing."""
    level = mel.mean(-1)[..., None]
    centred = level - masked_mean(level, mask)[:, None]
    spread = jnp.sqrt(masked_mean(jnp.square(centred), mask) + 1e-6)[:, None]
    level = (centred / spread)[..., 0] * mask.astype(mel.dtype)
    padded = jnp.pad(level, ((0, 0), (frames - 1, 0)))
    length = level.shape[1]
    window = jnp.stack(
        [padded[:, frames - 1 - k : frames - 1 - k + length] for k in range(frames)], -1
    )
    return window * mask[..., None].astype(mel.dtype)


def coordinate_rows(faces):
    """[..., V*3] (x, y, z of each vertex in turn) -> [..., 3, V]: one row per coordinate axis."""
    return jnp.swapaxes(faces.reshape(faces.shape[:-1] + (-1, 3)), -1, -2)


def pose_rows(rows, rotation, translation):
    """Eq. 4 on coordinate rows: rows [B, N, 3, V] (`coordinate_rows`), rotation [B, N, 3, 3]
    (row vectors times R), translation [B, N, 3] -> posed rows [B, N, 3, V] (R^T times the rows,
    plus T). XLA's CPU backend runs this, forward and backward, 3x faster than a batch of
    [V, 3] x [3, 3] products on the vertices (benchmarks/vertex_layers.py). Always in float32,
    whatever `train.matmul_precision` asks: the rows are positions (0.1 m) whose motion is
    a thousandth of that, which TF32 or bfloat16 inputs would round away."""
    return (
        jnp.einsum("bnij,bniv->bnjv", rotation, rows, precision=jax.lax.Precision.HIGHEST)
        + translation[..., None]
    )


def pose_faces(faces, rotation, translation):
    """f = f^e R + T (Eq. 4): faces [B, N, V*3], rotation [B, N, 3, 3] (row vectors times R),
    translation [B, N, 3] -> posed faces [B, N, V*3]."""
    posed = pose_rows(coordinate_rows(faces), rotation, translation)
    return jnp.swapaxes(posed, -1, -2).reshape(faces.shape)


def rotation_from_6d(raw: jax.Array) -> jax.Array:
    """Continuous 6-D rotation parameters [..., 6] -> rotation matrices [..., 3, 3] (Gram-Schmidt,
    Zhou et al. 2019). Rows are the orthonormal basis; used as f^e @ R (Eq. 4)."""
    a1, a2 = raw[..., :3], raw[..., 3:]
    b1 = a1 / (jnp.linalg.norm(a1, axis=-1, keepdims=True) + 1e-8)
    a2 = a2 - jnp.sum(b1 * a2, axis=-1, keepdims=True) * b1
    b2 = a2 / (jnp.linalg.norm(a2, axis=-1, keepdims=True) + 1e-8)
    b3 = jnp.cross(b1, b2)
    return jnp.stack([b1, b2, b3], axis=-2)


def gaussian_smooth(values, mask, width: float):
    """Gaussian-weighted mean over time (standard deviation `width` frames) of values [B, N, K] over
    real frames only (mask [B, N], or weights): each frame's value over its neighbourhood."""
    kernel = gaussian_kernel(values.shape[1], width)
    weights = mask.astype(values.dtype)
    total = jnp.einsum("ts,bs,bsk->btk", kernel, weights, values)
    return total / jnp.maximum(jnp.einsum("ts,bs->bt", kernel, weights), 1e-6)[..., None]


def rotation_from_vector(vector: jax.Array) -> jax.Array:
    """Rotation matrices [..., 3, 3] from axis * angle vectors [..., 3] (Rodrigues), such that
    `metrics.head_rotation_vectors` reads the vector back: x nods, y shakes, z tilts. Written with
    sin(t)/t and (1 - cos t)/t^2 so that the gradient at the zero vector is finite."""
    x, y, z = vector[..., 0], vector[..., 1], vector[..., 2]
    zero = jnp.zeros_like(x)
    skew = jnp.stack(
        [jnp.stack([zero, -z, y], -1), jnp.stack([z, zero, -x], -1), jnp.stack([-y, x, zero], -1)],
        axis=-2,
    )
    angle = jnp.sqrt(jnp.sum(jnp.square(vector), -1) + 1e-12)[..., None, None]
    first = jnp.sin(angle) / angle
    second = (1 - jnp.cos(angle)) / jnp.square(angle)
    return jnp.eye(3) + first * skew + second * (skew @ skew)


def gaussian_log_likelihood(y, mean, log_variance):
    """log q(y|x) up to a constant, summed over the last axis."""
    return -0.5 * jnp.sum(jnp.square(y - mean) * jnp.exp(-log_variance) + log_variance, axis=-1)
