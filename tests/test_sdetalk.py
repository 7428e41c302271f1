"""sdetalk_jax/models/sdetalk.py: the generator's outputs, dropout, and reading the emotion."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sdetalk_jax.models import ops
from sdetalk_jax.models.networks import Networks
from tests.model_fixtures import (
    CONFIG,
    _perturbed,
    clip_noise,
    generator_outputs,
    make_batch,
    networks_and_initial_params,
)


@pytest.fixture(scope="module")
def networks_and_params():
    return networks_and_initial_params()


def test_output_shapes_and_rigid_head_motion(networks_and_params):
    networks, initial = networks_and_params
    batch = make_batch([12, 9], 12)
    v3 = CONFIG.num_vertices * 3
    # Eq. 2 at initialisation: the neutral generator starts from the template.
    at_init, _ = generator_outputs(networks, initial, batch)
    np.testing.assert_allclose(
        at_init.neutral, jnp.broadcast_to(batch["template"][:, None], (2, 12, v3)), atol=1e-6
    )
    # Away from initialisation, where the rotation is no longer the identity:
    out, _ = generator_outputs(networks, _perturbed(initial, scale=0.3), batch)
    assert out.neutral.shape == out.expression.shape == out.posed.shape == (2, 12, v3)
    assert out.mixture.shape == (2, CONFIG.num_emotions)
    np.testing.assert_allclose(out.mixture.sum(-1), 1.0, rtol=1e-5)
    assert out.rotation.shape == (2, 12, 3, 3) and out.translation.shape == (2, 12, 3)
    rotation = np.asarray(out.rotation, np.float64)
    identity = np.broadcast_to(np.eye(3), rotation.shape)
    assert np.abs(rotation - identity).max() > 0.05  # a real rotation, not the identity
    np.testing.assert_allclose(rotation @ np.swapaxes(rotation, -1, -2), identity, atol=1e-5)
    np.testing.assert_allclose(np.linalg.det(rotation), 1.0, atol=1e-5)
    translation = np.asarray(out.translation)
    assert np.abs(translation).max() > 1e-5
    faces = np.asarray(out.expression).reshape(2, 12, -1, 3)
    posed = faces @ rotation + translation[:, :, None]  # Eq. 4, row vectors
    np.testing.assert_allclose(np.asarray(out.posed).reshape(posed.shape), posed, atol=1e-6)
    # f^e = f^n + offset: the offset is not zero away from initialisation
    assert np.abs(np.asarray(out.expression - out.neutral)).max() > 1e-5


def test_dropout_acts_only_in_training_and_is_keyed():
    import dataclasses

    config = dataclasses.replace(CONFIG, dropout=0.5)
    networks = Networks.build(config)
    params = {"params": networks.init_params(jax.random.key(0))["generator"]}
    batch = make_batch([12, 9], 12)
    noise = jnp.zeros(batch["frame_mask"].shape + (config.hidden,))

    def embedding(**kwargs):
        return np.asarray(networks.generator.apply(params, batch, noise, **kwargs).embedding)

    def trained(seed):
        rngs = {"dropout": jax.random.key(seed)}
        return embedding(deterministic=False, rngs=rngs)

    evaluated = embedding()
    np.testing.assert_array_equal(evaluated, embedding(deterministic=True))
    np.testing.assert_array_equal(trained(1), trained(1))  # the same key, the same mask
    assert np.abs(trained(1) - trained(2)).max() > 1e-3
    assert np.abs(trained(1) - evaluated).max() > 1e-3
    # At rate 0 training is deterministic and needs no key.
    plain = Networks.build(CONFIG)
    np.testing.assert_array_equal(
        plain.generator.apply(params, batch, noise, deterministic=False).embedding,
        plain.generator.apply(params, batch, noise).embedding,
    )


def test_with_voice_statistics_y_e_is_their_readout_and_e_keeps_its_classifier():
    """`model.emotion_statistics`: y_e = softmax(((s - centre) / scale) W + b), with s the clip
    statistics; e's classifier's own mixture is kept beside it (L_cls trains e by it); the face
    is the paper's; the penalty is ||W||^2; a requested emotion is read from e, as without the
    option."""
    import dataclasses

    networks = Networks.build(dataclasses.replace(CONFIG, emotion_statistics=True))
    params = _perturbed(networks.init_params(jax.random.key(0)))["generator"]
    readout = params["statistics"]
    readout["scale"] = 1.0 + jnp.abs(readout["scale"])
    paper = Networks.build(CONFIG)
    paper_params = {k: v for k, v in params.items() if k != "statistics"}
    batch = make_batch([12, 8], 12)
    noise = clip_noise(batch, 1)

    def generate(params, batch=batch):
        return networks.generator.apply({"params": params}, batch, noise)

    outputs = generate(params)
    without = paper.generator.apply({"params": paper_params}, batch, noise)
    standardised = (
        ops.clip_statistics(batch["mel"], batch["frame_mask"]) - readout["centre"]
    ) / readout["scale"]
    expected = jax.nn.softmax(standardised @ readout["kernel"] + readout["bias"])
    np.testing.assert_allclose(outputs.mixture, expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(outputs.embedding_mixture, without.mixture, rtol=1e-6)
    assert np.abs(outputs.mixture - without.mixture).max() > 1e-2
    np.testing.assert_allclose(outputs.posed, without.posed, rtol=1e-6)
    assert float(outputs.statistics_penalty) == pytest.approx(
        float(jnp.sum(jnp.square(readout["kernel"]))), rel=1e-5
    )
    # A request: row 0 names a category (y_e read from the steered e, as in the paper), row 1
    # only the voice's own emotion (at another intensity: y_e still the voice statistics').
    requested = {
        **batch,
        "emotion_target": jnp.ones((2, CONFIG.hidden)) * jnp.array([[1.0], [0.0]]),
        "emotion_inferred_weight": jnp.array([0.0, 1.0]),
        "expression_scale": jnp.ones((2,)),
    }
    steered = generate(params, requested)
    paper_steered = paper.generator.apply({"params": paper_params}, requested, noise)
    np.testing.assert_array_equal(steered.mixture[0], paper_steered.mixture[0])
    np.testing.assert_allclose(steered.mixture[1], expected[1], rtol=1e-4, atol=1e-6)
    assert steered.statistics_penalty is None and steered.embedding_mixture is None
