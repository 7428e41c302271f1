"""sdetalk_jax/models/layers.py: the dense layers and their hand-written gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sdetalk_jax.models import layers, ops


def test_the_neutral_layer_is_a_dense_on_context_and_identity_per_frame():
    """G_n's layer applies its identity rows once per clip: the same parameters give what an
    nn.Dense gives on every frame's (c (+) p), so runs trained before the change load as they
    were."""
    import flax.linen as nn

    rng = np.random.default_rng(0)
    frames, identity = rng.normal(size=(2, 5, 6)), rng.normal(size=(2, 3))
    layer = layers.FrameAndClipDense(7)
    params = layer.init(jax.random.key(0), frames, identity)
    params = jax.tree.map(lambda x: x + jnp.asarray(rng.normal(size=x.shape), x.dtype), params)
    concatenated = np.concatenate([frames, np.broadcast_to(identity[:, None], (2, 5, 3))], -1)
    expected = nn.Dense(7).apply(params, concatenated)
    result, (frame_part, clip_part) = layer.apply(params, frames, identity)
    np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(frame_part + clip_part[:, None], expected, rtol=1e-5, atol=1e-5)
    # G's query reads those parts through the parameters of an nn.Dense on their sum.
    query = layers.PartsDense(4)
    query_params = query.init(jax.random.key(1), frame_part, clip_part)
    assert jax.tree.map(np.shape, query_params) == jax.tree.map(
        np.shape, nn.Dense(4).init(jax.random.key(1), expected)
    )
    query_params = jax.tree.map(lambda x: x + jnp.asarray(rng.normal(size=x.shape)), query_params)
    np.testing.assert_allclose(
        query.apply(query_params, frame_part, clip_part),
        nn.Dense(4).apply(query_params, expected),
        rtol=1e-5,
        atol=1e-5,
    )


def test_the_discriminators_input_layer_is_a_dense_on_the_faces_read_as_coordinate_rows():
    """D reads the faces as coordinate rows [3, V] (`coordinate_rows`) through the parameters of
    an nn.Dense on the faces [V*3]: the same initial values, the same result (runs trained
    before load as they were)."""
    import flax.linen as nn

    rng = np.random.default_rng(1)
    faces = jnp.asarray(rng.normal(size=(2, 5, 4 * 3)), jnp.float32)
    rows = ops.coordinate_rows(faces)
    assert rows.shape == (2, 5, 3, 4)
    np.testing.assert_array_equal(rows[..., 1, 2], faces[..., 2 * 3 + 1])  # y of vertex 2
    layer = layers.CoordinateRowsDense(7)
    params = layer.init(jax.random.key(0), rows)
    dense_params = nn.Dense(7).init(jax.random.key(0), faces)
    jax.tree.map(np.testing.assert_array_equal, params, dense_params)
    params = jax.tree.map(lambda x: x + jnp.asarray(rng.normal(size=x.shape), x.dtype), params)
    np.testing.assert_allclose(
        layer.apply(params, rows), nn.Dense(7).apply(params, faces), rtol=1e-5, atol=1e-5
    )


def test_the_output_layers_gradients_are_autodiffs_of_their_formulas():
    """G's layers onto every vertex coordinate (`scaled_affine`, `frame_and_clip_affine`) have
    hand-written gradients: they must be what autodiff gives on the plain formulas, for every
    argument, the inputs included (G's query is trained through the expression layer)."""
    rng = np.random.default_rng(0)
    scale = 0.01

    def normal(*shape):
        return jnp.asarray(rng.normal(size=shape), jnp.float32)

    def plain_affine(inputs, kernel, bias):
        return scale * (inputs @ kernel + bias)

    def plain_frame_and_clip(frame_inputs, clip_inputs, kernel, bias):
        frames = frame_inputs.shape[1]
        clips = jnp.broadcast_to(clip_inputs[:, None], (len(clip_inputs), frames, 3))
        return scale * (jnp.concatenate([frame_inputs, clips], -1) @ kernel + bias)

    cases = [
        (lambda *a: layers.scaled_affine(*a, scale), plain_affine,
         (normal(2, 5, 6), normal(6, 7), normal(7))),
        (lambda *a: layers.scaled_affine(*a, scale), plain_affine,  # a pooled query [B, D]
         (normal(3, 6), normal(6, 7), normal(7))),
        (lambda *a: layers.frame_and_clip_affine(*a, scale)[0], plain_frame_and_clip,
         (normal(2, 5, 6), normal(2, 3), normal(9, 7), normal(7))),
    ]  # fmt: skip
    for custom, plain, arguments in cases:
        outputs = plain(*arguments)
        cotangent = normal(*outputs.shape)
        np.testing.assert_allclose(custom(*arguments), outputs, rtol=1e-6, atol=1e-7)
        _, custom_pull = jax.vjp(custom, *arguments)
        _, plain_pull = jax.vjp(plain, *arguments)
        for got, expected in zip(custom_pull(cotangent), plain_pull(cotangent), strict=True):
            assert got.shape == expected.shape
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    # G_n's two parts (what G's query reads) sum to the layer's result; no gradient goes
    # through them, and asking for one is an error, not a silent zero.
    arguments = cases[-1][2]
    outputs, frame_part, clip_part = layers.frame_and_clip_affine(*arguments, scale)
    np.testing.assert_allclose(
        scale * (frame_part + clip_part[:, None]),
        plain_frame_and_clip(*arguments),
        rtol=1e-6,
        atol=1e-7,
    )
    with pytest.raises(NotImplementedError, match="stop_gradient"):
        jax.grad(lambda k: layers.frame_and_clip_affine(arguments[0], arguments[1], k,
                                                         arguments[3], scale)[1].sum())(arguments[2])  # fmt: skip
