"""sdetalk_jax/losses.py: every term of the objective, against its formula."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sdetalk_jax import losses
from sdetalk_jax.data.face_model import rotation_matrices
from sdetalk_jax.models import head_motion, ops, vclub
from tests.model_fixtures import (
    FPS,
    HeadOutputs,
    LossConfig,
    _perturbed,
    generator_outputs,
    loss_config,
    make_batch,
    moved,
    networks_and_initial_params,
    nodding,
    pose_batch,
)


@pytest.fixture(scope="module")
def networks_and_params():
    return networks_and_initial_params()


def test_the_vertex_terms_are_mean_squared_millimetres_over_real_frames():
    """L_n and L_exp (Eq. 5): the squared error in mm^2 per coordinate, averaged over the
    coordinates of each frame and over the frames that are not padding (numpy reference)."""
    batch = make_batch([12, 7], 12)
    rng = np.random.default_rng(5)
    shape = batch["vertices"].shape
    outputs = types.SimpleNamespace(
        neutral=batch["neutral_vertices"] + 0.001 * rng.normal(size=shape).astype(np.float32),
        expression=batch["vertices"] + 0.002 * rng.normal(size=shape).astype(np.float32),
        rotation=batch["rotation"],
        translation=batch["translation"],
        mean_rotation=None,
    )
    terms = losses.reconstruction_losses(outputs, batch, LossConfig)
    mask = np.asarray(batch["frame_mask"])
    for term, target in (("neutral", "neutral_vertices"), ("expression", "vertices")):
        error = (
            np.asarray(getattr(outputs, term), np.float64) - np.asarray(batch[target])
        ) * 1000.0
        expected = np.square(error).mean(axis=-1)[mask].mean()
        np.testing.assert_allclose(terms[term], expected, rtol=1e-5)


def test_the_style_term_asks_for_speed_and_size_but_not_direction():
    frames = 150
    truth = nodding(frames)
    batch = pose_batch(frames)
    config = loss_config()

    def style(rotation):
        return float(losses.head_style_loss(rotation, truth, batch, config))

    still = jnp.broadcast_to(jnp.eye(3), truth.shape)
    assert style(truth) == pytest.approx(0.0, abs=1e-6)
    assert style(still) == pytest.approx(2.0, abs=0.05)  # both envelopes missed entirely
    # The same motion in a direction of its own: phase shifted, or nodding the other way.
    assert style(nodding(frames, phase=2.0)) < 0.15
    assert style(nodding(frames, phase=np.pi)) < 0.15
    # Half the size, or the same motion as shaking instead of nodding: clearly wrong.
    assert style(nodding(frames, amplitude_deg=1.5)) > 0.4
    shaking = jnp.einsum("ij,bnjk,kl->bnil", _swap_nod_and_shake(), truth, _swap_nod_and_shake().T)
    assert style(shaking) > 1.0
    # Jitter as fast as the truth but going nowhere: the speed matches, the size does not.
    rng = np.random.default_rng(0)
    speed = np.abs(np.diff(np.radians(3.0) * np.sin(2 * np.pi * 1.8 * np.arange(frames) / FPS)))
    jitter = np.cumsum(speed.mean() * np.where(rng.random(frames) < 0.5, -1, 1)) * 0.1
    jittery = jnp.asarray(rotation_matrices(jitter, 0 * jitter, 0 * jitter)[None], jnp.float32)
    assert style(jittery) > 0.5


def _swap_nod_and_shake():
    return jnp.asarray([[0.0, 1, 0], [1, 0, 0], [0, 0, -1]])


def test_the_style_term_ignores_padding_and_clips_without_head_pose():
    frames = 120
    config = loss_config()
    truth, generated = nodding(frames), nodding(frames, phase=1.0, amplitude_deg=2.0)
    alone = losses.head_style_loss(generated, truth, pose_batch(frames), config)
    padded = losses.head_style_loss(
        jnp.pad(generated, ((0, 0), (0, 20), (0, 0), (0, 0)), constant_values=3.0),
        jnp.pad(truth, ((0, 0), (0, 20), (0, 0), (0, 0))),
        pose_batch(frames + 20, [frames]),
        config,
    )
    np.testing.assert_allclose(padded, alone, rtol=1e-5)
    # A second clip without head pose (its "truth" is still) changes nothing.
    two = losses.head_style_loss(
        jnp.concatenate([generated, generated]),
        jnp.concatenate([truth, jnp.broadcast_to(jnp.eye(3), truth.shape)]),
        pose_batch(frames, has_head_pose=(True, False)),
        config,
    )
    np.testing.assert_allclose(two, alone, rtol=1e-5)


def test_the_gain_term_asks_for_the_speakers_expected_speed_per_axis():
    frames = 150
    truth = nodding(frames, shake=0.3)
    config = loss_config(head_gain_width_frames=4.0)
    # Per-frame speed of the step into each frame (a vanishing width does not smooth).
    raw, _, _ = losses.head_motion_envelopes(truth, jnp.ones((1, frames)), 1e-3, 1e-3)
    matching = jnp.pad(raw, ((0, 0), (1, 0), (0, 0))) / np.sqrt(2 / np.pi)

    def gain_error(gain, target=truth, batch=None):
        batch = batch or pose_batch(gain.shape[1])
        mean_abs = head_motion.head_noise_mean_abs("gaussian")
        return float(losses.head_gain_loss(gain, target, batch, config, mean_abs))

    assert gain_error(matching) == pytest.approx(0.0, abs=1e-4)
    assert gain_error(0.5 * matching) == pytest.approx(0.25, rel=0.01)  # half as fast
    # Shaking as much as it should nod and the other way round: clearly wrong.
    assert gain_error(matching[..., jnp.array([1, 0, 2])]) > 0.8
    # The right mean speed at every moment, but not when the speaker moves.
    level = jnp.broadcast_to(matching[:, 1:].mean(1, keepdims=True), matching.shape)
    assert gain_error(level) > 0.15
    # Padding and a clip without head pose change nothing.
    padded = jnp.pad(matching, ((0, 0), (0, 20), (0, 0)), constant_values=5.0)
    padded_truth = jnp.pad(truth, ((0, 0), (0, 20), (0, 0), (0, 0)))
    alone = gain_error(0.5 * matching)
    assert gain_error(0.5 * padded, padded_truth, pose_batch(frames + 20, [frames])) == (
        pytest.approx(alone, rel=1e-5)
    )
    two = gain_error(
        jnp.concatenate([0.5 * matching, matching]),
        jnp.concatenate([truth, jnp.broadcast_to(jnp.eye(3), truth.shape)]),
        pose_batch(frames, has_head_pose=(True, False)),
    )
    assert two == pytest.approx(alone, rel=1e-5)


def test_the_rotation_term_is_the_templates_vertex_error_in_mm2():
    rng = np.random.default_rng(1)
    template = rng.normal(size=(2, 30 * 3)).astype(np.float32) * 0.08  # metres
    rotation = jnp.asarray(
        rotation_matrices(*rng.normal(scale=0.05, size=(3, 2 * 5))).reshape(2, 5, 3, 3),
        jnp.float32,
    )
    target = jnp.asarray(
        rotation_matrices(*rng.normal(scale=0.05, size=(3, 2 * 5))).reshape(2, 5, 3, 3),
        jnp.float32,
    )
    vertices = template.reshape(2, 1, 30, 3) * 1000.0
    explicit = np.mean(
        np.sum(np.square(vertices @ np.asarray(rotation) - vertices @ np.asarray(target)), -1), -1
    )
    got = losses.rotation_error_per_frame(rotation, target, jnp.asarray(template), loss_config())
    np.testing.assert_allclose(got, explicit, rtol=1e-4)
    # A 5 degree error costs a visible amount in the template's mm^2, the units of L_exp, at the
    # paper's 0.001 (on matrix entries it would cost about 2e-6).
    five = jnp.asarray(rotation_matrices(np.radians([5.0]), [0.0], [0.0])[None], jnp.float32)
    eye = jnp.eye(3)[None, None]
    assert (
        0.001 * float(losses.rotation_error_per_frame(five, eye, template[:1], loss_config())[0, 0])
        > 0.01
    )


def still_faces_turning(seed, frames):
    """G's outputs for 2 clips of 20 vertices: no expression, the head turning at random."""
    rng = np.random.default_rng(seed)
    rotation = rotation_matrices(*rng.normal(scale=0.05, size=(3, 2 * frames)))
    return HeadOutputs(
        expression=jnp.zeros((2, frames, 60)),
        rotation=jnp.asarray(rotation.reshape(2, frames, 3, 3), jnp.float32),
        translation=jnp.zeros((2, frames, 3)),
    )


def test_diversity_measures_rotations_by_how_far_they_move_the_template():
    rng = np.random.default_rng(2)
    frames = 6
    template = jnp.asarray(rng.normal(size=(2, 20 * 3)).astype(np.float32) * 0.08)
    first, second = still_faces_turning(3, frames), still_faces_turning(4, frames)
    ones = jnp.ones((2, frames, 4))
    batch = {**pose_batch(frames, has_head_pose=(True, False)), "template": template}
    value = losses.diversity_loss(first, second, ones, -ones, batch, loss_config())
    vertices = np.asarray(template).reshape(2, 1, 20, 3) * 1000.0
    moved = vertices @ np.asarray(first.rotation) - vertices @ np.asarray(second.rotation)
    per_frame = np.abs(moved).mean(axis=(-1, -2)) / 2.0  # |z1 - z2| = 2
    # the clip without head pose counts its (zero) expression distance only
    np.testing.assert_allclose(value, per_frame[0].sum() / (2 * frames), rtol=1e-4)


def test_diversity_weights_the_expression_of_clips_without_head_pose_on_its_own():
    """On a clip without head pose L_d sees only the expression, weighted by
    `loss.lambda_f_without_head_pose`; a clip with head pose keeps lambda_f beside its head."""
    frames = 4
    rng = np.random.default_rng(8)
    expression = rng.normal(size=(2, 2, frames, 60)).astype(np.float32) * 1e-4
    first, second = (
        HeadOutputs(
            expression=jnp.asarray(faces), rotation=jnp.tile(jnp.eye(3), (2, frames, 1, 1)),
            translation=jnp.zeros((2, frames, 3)),
        )
        for faces in expression
    )  # fmt: skip
    ones = jnp.ones((2, frames, 4))
    batch = {
        **pose_batch(frames, has_head_pose=(True, False)),
        "template": jnp.asarray(rng.normal(size=(2, 60)).astype(np.float32)),
    }
    config = loss_config(lambda_f=0.1, lambda_f_without_head_pose=7.0)
    value = losses.diversity_loss(first, second, ones, -ones, batch, config)
    distance = np.abs(expression[0] - expression[1]).mean(axis=-1) * 1000.0 / 2.0  # |z1 - z2| = 2
    expected = (0.1 * distance[0].sum() + 7.0 * distance[1].sum()) / (2 * frames)
    np.testing.assert_allclose(value, expected, rtol=1e-5)


def test_diversity_measures_rotations_on_the_configured_subset_of_vertices():
    """`loss.rotation_distance_vertices` (configs/biwi.py): the distance over every third
    vertex of 20 where at most 7 are asked for, and over all of them where 0 or 20 or more are."""
    rows = jnp.arange(2 * 3 * 20, dtype=jnp.float32).reshape(2, 3, 20)
    np.testing.assert_array_equal(losses.distance_vertices(rows, 7), rows[..., ::3])
    assert losses.distance_vertices(rows, 7).shape == (2, 3, 7)
    for every in (0, 20, 64):
        np.testing.assert_array_equal(losses.distance_vertices(rows, every), rows)

    frames = 5
    rng = np.random.default_rng(5)
    template = jnp.asarray(rng.normal(size=(2, 20 * 3)).astype(np.float32) * 0.08)
    first, second = still_faces_turning(6, frames), still_faces_turning(7, frames)
    ones = jnp.ones((2, frames, 4))
    batch = {**pose_batch(frames, has_head_pose=(True, True)), "template": template}
    value = losses.diversity_loss(
        first, second, ones, -ones, batch, loss_config(rotation_distance_vertices=7)
    )
    vertices = np.asarray(template).reshape(2, 1, 20, 3)[:, :, ::3] * 1000.0
    moved = vertices @ np.asarray(first.rotation) - vertices @ np.asarray(second.rotation)
    np.testing.assert_allclose(value, np.abs(moved).mean() / 2.0, rtol=1e-4)


def test_classification_loss_can_leave_out_neutral_recordings():
    mixture = jnp.array([[0.5, 0.5], [1.0, 0.0]])
    batch = {
        "emotion": jnp.array([[0.5, 0.5], [0.0, 1.0]]),  # row 1 (neutral recording) is wrong by 2
        "clip_mask": jnp.array([True, True]),
        "has_emotion": jnp.array([True, True]),
        "emotional": jnp.array([True, False]),
    }
    assert float(losses.emotion_classification_loss(mixture, batch)) == pytest.approx(1.0)
    assert float(losses.emotion_classification_loss(mixture, batch, neutral_clips=False)) == 0.0
    # With model.emotion_statistics e's own classifier is trained beside y_e.
    outputs = types.SimpleNamespace(mixture=mixture, embedding_mixture=None)
    assert float(losses.classification_terms(outputs, batch)) == pytest.approx(1.0)
    outputs.embedding_mixture = jnp.array([[1.0, 0.0], [0.0, 1.0]])  # wrong by 0.5, row 0
    assert float(losses.classification_terms(outputs, batch)) == pytest.approx(1.25)


def test_emotional_speech_loss_is_binary_cross_entropy_over_real_clips():
    batch = {
        "clip_mask": jnp.array([True, True, False]),
        "emotional": jnp.array([True, False, True]),
    }
    # Confident and right on clip 0, undecided on clip 1, the padding row is ignored.
    logits = jnp.array([20.0, 0.0, -20.0])
    expected = (0.0 + np.log(2.0)) / 2
    assert float(losses.emotional_speech_loss(logits, batch)) == pytest.approx(expected, abs=1e-6)


def test_the_vclub_marginal_is_exact_and_alive_at_batch_one():
    rng = np.random.default_rng(5)
    frames, speakers, dim = 20, 4, 3
    table = rng.normal(size=(speakers, 2)).astype(np.float32)
    y = rng.normal(size=(frames, dim)).astype(np.float32)
    context = rng.normal(size=(frames, 5)).astype(np.float32)

    def gaussian(x):  # any q(y|x) that depends on x
        return jnp.tanh(x @ jnp.ones((x.shape[-1], dim))), 0.1 * x @ jnp.ones((x.shape[-1], dim))

    speaker = 1
    identity = np.broadcast_to(table[speaker], (frames, 2))
    factors = {
        "identity": jnp.asarray(identity)[None],
        "context": jnp.asarray(context)[None],
        "embedding": jnp.asarray(y)[None],
    }
    estimates = {
        "identity->context": (jnp.zeros((1, frames, 5)), jnp.zeros((1, frames, 5))),
        "identity->embedding": tuple(v[None] for v in gaussian(identity)),
        "context->embedding": tuple(v[None] for v in gaussian(context)),
    }
    speaker_estimates = {
        "identity->context": (jnp.zeros((speakers, 5)), jnp.zeros((speakers, 5))),
        "identity->embedding": gaussian(table),
    }
    weights = jnp.ones((1, frames))
    bounds = losses.vclub_upper_bound(estimates, factors, weights, speaker_estimates)

    def log_q(values, mean, log_variance):
        return np.asarray(ops.gaussian_log_likelihood(values, mean, log_variance))

    # Brute force: the speakers' marginal for p, all pairs of real frames for (c, e).
    mean, log_variance = gaussian(identity)
    s_mean, s_log_variance = gaussian(table)
    negative = np.mean([log_q(y, s_mean[s], s_log_variance[s]) for s in range(speakers)], axis=0)
    expected = np.mean(log_q(y, mean, log_variance) - negative)
    np.testing.assert_allclose(bounds["mi_identity_embedding"], expected, rtol=1e-4)
    assert abs(expected) > 1e-2  # one speaker in the batch, and still not zero
    c_mean, c_log_variance = gaussian(context)
    pairs = np.array([[log_q(y[j], c_mean[i], c_log_variance[i]) for j in range(frames)]
                      for i in range(frames)])  # fmt: skip
    expected_ce = np.mean(np.diag(pairs) - pairs.mean(axis=1))
    np.testing.assert_allclose(bounds["mi_context_embedding"], expected_ce, rtol=1e-4, atol=1e-5)


def test_mi_bound_moves_identity_and_emotion_not_estimators(networks_and_params):
    networks, params = networks_and_params
    params = _perturbed(params)
    batch = make_batch([12, 8], 12)
    weights = batch["frame_mask"].astype(jnp.float32)

    def bound(generator_params, estimator_params):
        out, _ = generator_outputs(networks, {**params, "generator": generator_params}, batch)
        factors = vclub.per_frame_factors(out)
        variables = {"params": estimator_params}
        estimates = networks.estimators.apply(variables, factors)
        speakers = networks.estimators.apply(
            variables, out.identity_table, method="speaker_marginal"
        )
        return losses.vclub_upper_bound(estimates, factors, weights, speakers)["mi"]

    generator_grads, estimator_grads = jax.jit(jax.grad(bound, argnums=(0, 1)))(
        params["generator"], params["estimators"]
    )
    assert moved(generator_grads, "identity") > 0 and moved(generator_grads, "emotion") > 0
    assert moved(generator_grads, "face") == 0
    # The estimators do feel the bound (it is a function of them)...
    assert sum(np.abs(np.asarray(g)).sum() for g in jax.tree.leaves(estimator_grads)) > 0
    # ...but the training step never lets it move them: the generator's update takes gradients
    # with respect to the generator's parameters only (tests/test_train_step.py::test_the_
    # generators_mi_term_never_moves_the_estimators runs the step itself).


def test_the_discriminators_emotion_head_leaves_out_neutral_recordings_when_asked():
    mixture = jnp.array([[0.5, 0.5], [1.0, 0.0]])
    batch = {
        "emotion": jnp.array([[0.5, 0.5], [0.0, 1.0]]),
        "clip_mask": jnp.array([True, True]),
        "has_emotion": jnp.array([True, True]),
        "emotional": jnp.array([True, False]),
        "subject": jnp.array([0, 1]),
    }
    logits = jnp.zeros((2, 2))
    _, with_neutral = losses.auxiliary_losses(logits, mixture, batch)
    _, without = losses.auxiliary_losses(logits, mixture, batch, neutral_clips=False)
    assert float(with_neutral) == pytest.approx(1.0) and float(without) == 0.0
