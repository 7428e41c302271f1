import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import traverse_util

from sdetalk_jax import losses, optim
from sdetalk_jax.config_files import repository_config
from sdetalk_jax.models import sdetalk
from sdetalk_jax.models.networks import Networks
from sdetalk_jax.train import make_train_step

CONFIG = sdetalk.SDETalkConfig(
    num_vertices=40, context_dim=16, num_subjects=3, num_emotions=5, hidden=32, heads=4,
    feedforward=64, identity_dim=8, frequency_bands=8, frequency_dim=8, discriminator_blocks=1,
)  # fmt: skip


PAPER = repository_config("biwi")
LossConfig = PAPER.loss


def make_batch(lengths, frames, seed=0):
    """Row r of clip data depends only on (seed, r), never on `frames` or the other rows, so the
    same clip can be batched with different amounts of padding."""
    rows = [_make_batch([length], 32, (seed, row)) for row, length in enumerate(lengths)]
    full = {k: jnp.concatenate([r[k] for r in rows]) for k in rows[0]}
    full["subject"] = jnp.arange(len(lengths), dtype=jnp.int32) % CONFIG.num_subjects
    full["subject_onehot"] = jax.nn.one_hot(full["subject"], CONFIG.num_subjects)
    return {k: (v[:, :frames] if v.ndim >= 2 and v.shape[1] == 32 else v) for k, v in full.items()}


def _make_batch(lengths, frames, seed):
    rng = np.random.default_rng(seed)
    batch_size = len(lengths)
    mask = np.zeros((batch_size, frames), bool)
    for row, length in enumerate(lengths):
        mask[row, :length] = True
    v3 = CONFIG.num_vertices * 3
    template = rng.normal(size=(batch_size, v3)).astype(np.float32) * 0.05
    vertices = template[:, None] + 0.002 * rng.normal(size=(batch_size, frames, v3)).astype(
        np.float32
    )
    emotion = rng.dirichlet(np.ones(CONFIG.num_emotions), size=batch_size).astype(np.float32)
    batch = {
        "context": rng.normal(size=(batch_size, frames, CONFIG.context_dim)).astype(np.float32),
        "mel": rng.normal(size=(batch_size, frames, 128)).astype(np.float32) - 4,
        "template": template,
        "vertices": vertices,
        "neutral_vertices": vertices - 0.001,
        "rotation": np.broadcast_to(np.eye(3, dtype=np.float32), (batch_size, frames, 3, 3)).copy(),
        "translation": 0.003 * rng.normal(size=(batch_size, frames, 3)).astype(np.float32),
        "emotion": emotion,
        "subject": np.arange(batch_size, dtype=np.int32) % CONFIG.num_subjects,
        "has_head_pose": np.ones(batch_size, bool),
        "has_emotion": np.ones(batch_size, bool),
        "emotional": np.ones(batch_size, bool),
        "has_neutral": np.ones(batch_size, bool),
        "frame_mask": mask,
        "clip_mask": mask.any(1),
    }
    # Padding holds garbage on purpose: masking must make it irrelevant.
    for key in ("context", "mel", "vertices", "neutral_vertices", "translation"):
        batch[key][~mask] = 1e3
    batch["emotion"][~mask.any(1)] = 0.5
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    batch["subject_onehot"] = jax.nn.one_hot(batch["subject"], CONFIG.num_subjects)
    return batch


@pytest.fixture(scope="module")
def networks_and_params():
    networks = Networks.build(CONFIG)
    return networks, networks.init_params(jax.random.key(0))


def generator_outputs(networks, params, batch, seed=1):
    noise = jax.random.normal(jax.random.key(seed), batch["frame_mask"].shape + (CONFIG.hidden,))
    return networks.generator.apply({"params": params["generator"]}, batch, noise), noise


def test_output_shapes_and_rigid_head_motion(networks_and_params):
    networks, params = networks_and_params
    batch = make_batch([12, 9], 12)
    out, _ = generator_outputs(networks, params, batch)
    v3 = CONFIG.num_vertices * 3
    assert out["neutral"].shape == out["expression"].shape == out["posed"].shape == (2, 12, v3)
    assert out["mixture"].shape == (2, CONFIG.num_emotions)
    np.testing.assert_allclose(out["mixture"].sum(-1), 1.0, rtol=1e-5)
    assert out["rotation"].shape == (2, 12, 3, 3) and out["translation"].shape == (2, 12, 3)
    rotation = np.asarray(out["rotation"])
    np.testing.assert_allclose(
        rotation @ np.swapaxes(rotation, -1, -2),
        np.broadcast_to(np.eye(3), rotation.shape),
        atol=1e-5,
    )
    np.testing.assert_allclose(np.linalg.det(rotation), 1.0, atol=1e-5)
    faces = np.asarray(out["expression"]).reshape(2, 12, -1, 3)
    posed = faces @ rotation + np.asarray(out["translation"])[:, :, None]
    np.testing.assert_allclose(np.asarray(out["posed"]).reshape(posed.shape), posed, atol=1e-6)
    # Eq. 2 at initialisation: the neutral generator starts from the template.
    np.testing.assert_allclose(
        out["neutral"], jnp.broadcast_to(batch["template"][:, None], (2, 12, v3)), atol=1e-6
    )


def all_losses(networks, params, batch):
    out, noise = generator_outputs(networks, params, batch)
    second, noise_2 = generator_outputs(networks, params, batch, seed=2)
    terms = losses.reconstruction_losses(out, batch, LossConfig)
    factors = sdetalk.per_frame_factors(out)
    estimates = networks.estimators.apply({"params": params["estimators"]}, factors)
    weights = batch["frame_mask"].astype(jnp.float32)
    terms["log_likelihood"] = losses.estimator_log_likelihood(estimates, factors, weights)
    terms["classification"] = losses.emotion_classification_loss(out["mixture"], batch)
    terms["diversity"] = losses.diversity_loss(out, second, noise, noise_2, batch, LossConfig)
    terms["emotional_speech"] = losses.emotional_speech_loss(out["emotional_logit"], batch)
    return terms, out


def test_padding_changes_neither_outputs_nor_losses(networks_and_params):
    networks, params = networks_and_params
    alone = make_batch([10], 10)
    padded = make_batch([10], 16)  # same clip (same seed), 6 frames of garbage padding
    with_row = make_batch([10, 0], 16)  # plus a padding row
    with_row = {k: v for k, v in with_row.items()}
    terms_alone, out_alone = all_losses(networks, params, alone)
    terms_padded, out_padded = all_losses(networks, params, padded)
    np.testing.assert_allclose(
        out_padded["expression"][0, :10], out_alone["expression"][0], atol=1e-5
    )
    np.testing.assert_allclose(out_padded["mixture"], out_alone["mixture"], atol=1e-6)
    for name in (
        "neutral",
        "expression",
        "rotation",
        "translation",
        "classification",
        "log_likelihood",
        "diversity",
        "emotional_speech",
    ):
        np.testing.assert_allclose(terms_padded[name], terms_alone[name], rtol=2e-4, err_msg=name)
    terms_row, _ = all_losses(networks, params, with_row)
    for name in ("neutral", "expression", "classification", "log_likelihood"):
        np.testing.assert_allclose(terms_row[name], terms_alone[name], rtol=2e-4, err_msg=name)


def moved(grads, top):
    flat = traverse_util.flatten_dict(grads)
    return float(sum(np.abs(np.asarray(v)).sum() for k, v in flat.items() if k[0] == top))


@pytest.mark.parametrize(
    "term, moves, still",
    [
        ("neutral", ["neutral", "identity"], ["classifier", "face", "diversity"]),
        # G reads f^n with its gradient stopped: face terms never reach G_n.
        ("expression", ["face", "emotion"], ["classifier", "neutral", "identity"]),
        ("rotation", ["face"], ["classifier", "neutral"]),
        ("classification", ["classifier", "emotion"], ["neutral", "face", "identity"]),
        ("diversity", ["face", "diversity"], ["classifier", "neutral"]),
        ("emotional_speech", ["classifier", "emotion"], ["neutral", "face", "identity"]),
    ],
)
def test_each_loss_moves_the_parameters_it_should(networks_and_params, term, moves, still):
    networks, params = networks_and_params
    batch = make_batch([12, 8], 12)
    # Break the zero-initialised heads so every path carries gradient.
    params = jax.tree.map(lambda x: x + 0.01 * jnp.ones_like(x), params)

    def loss(generator_params):
        terms, _ = all_losses(networks, {**params, "generator": generator_params}, batch)
        return terms[term]

    grads = jax.grad(loss)(params["generator"])
    for name in moves:
        assert moved(grads, name) > 0, f"{term} should move {name}"
    for name in still:
        assert moved(grads, name) == 0, f"{term} should not move {name}"


def test_mi_bound_moves_identity_and_emotion_not_estimators(networks_and_params):
    networks, params = networks_and_params
    batch = make_batch([12, 8], 12)
    weights = batch["frame_mask"].astype(jnp.float32)

    def bound(generator_params, estimator_params):
        out, _ = generator_outputs(networks, {**params, "generator": generator_params}, batch)
        factors = sdetalk.per_frame_factors(out)
        estimates = networks.estimators.apply({"params": estimator_params}, factors)
        return losses.vclub_upper_bound(estimates, factors, weights, jax.random.key(3))["mi"]

    generator_grads = jax.grad(bound)(params["generator"], params["estimators"])
    assert moved(generator_grads, "identity") > 0 and moved(generator_grads, "emotion") > 0
    assert moved(generator_grads, "face") == 0


def test_one_training_step_updates_all_three_networks(networks_and_params):
    networks, params = networks_and_params
    from sdetalk_jax.optim import optimizer

    tx = optimizer(PAPER)
    state = {
        "step": jnp.zeros((), jnp.int32),
        "params": params,
        "opt_state": {k: tx.init(v) for k, v in params.items()},
    }
    step = jax.jit(lambda s, b, k: make_train_step(networks, LossConfig)(s, b, k, tx))
    batch = make_batch([12, 8], 12)
    new_state, metrics = step(state, batch, jax.random.key(0))
    assert int(new_state["step"]) == 1
    for name in ("generator", "discriminator", "estimators"):
        before = traverse_util.flatten_dict(params[name])
        after = traverse_util.flatten_dict(new_state["params"][name])
        assert any(not np.array_equal(before[k], after[k]) for k in before), name
    assert all(np.isfinite(float(v)) for v in metrics.values())
    posed = sdetalk.pose_faces(batch["vertices"], batch["rotation"], batch["translation"])
    assert posed.shape == batch["vertices"].shape


def test_rotation_from_6d_identity():
    np.testing.assert_allclose(
        sdetalk.rotation_from_6d(jnp.array([1.0, 0, 0, 0, 1, 0])), np.eye(3), atol=1e-7
    )


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


def test_warmup_cosine_schedule_rises_then_decays_to_zero():
    train_config = PAPER.train.copy_and_resolve_references()
    train_config.lr_schedule, train_config.warmup_steps = "warmup_cosine", 10
    schedule = optim.learning_rate(train_config, 100)
    rates = [float(schedule(step)) for step in (0, 5, 10, 55, 100)]
    peak = train_config.learning_rate
    assert (
        rates[0] == 0.0 and rates[1] == pytest.approx(peak / 2) and rates[2] == pytest.approx(peak)
    )
    assert rates[2] > rates[3] > rates[4] and rates[4] == pytest.approx(0.0, abs=1e-12)
    assert optim.learning_rate(PAPER.train, 100) == peak  # the paper's fixed rate
    # The optimiser state's structure does not depend on the schedule's length (restoring needs
    # none), and a schedule's Adam updates follow the schedule.
    params = {"w": jnp.ones(3)}
    config = PAPER.copy_and_resolve_references()
    config.train = train_config
    short, long = optim.optimizer(config, 5), optim.optimizer(config, 500)
    assert jax.tree.structure(short.init(params)) == jax.tree.structure(long.init(params))
    grads = {"w": jnp.ones(3)}
    update, _ = short.update(grads, short.init(params), params)
    np.testing.assert_array_equal(update["w"], 0.0)  # step 0 of the warm-up: rate 0
    train_config.lr_schedule = "exponential"
    with pytest.raises(ValueError, match="lr_schedule"):
        optim.learning_rate(train_config, 100)


def test_emotional_speech_loss_is_binary_cross_entropy_over_real_clips():
    batch = {
        "clip_mask": jnp.array([True, True, False]),
        "emotional": jnp.array([True, False, True]),
    }
    # Confident and right on clip 0, undecided on clip 1, the padding row is ignored.
    logits = jnp.array([20.0, 0.0, -20.0])
    expected = (0.0 + np.log(2.0)) / 2
    assert float(losses.emotional_speech_loss(logits, batch)) == pytest.approx(expected, abs=1e-6)


def test_dropout_acts_only_in_training_and_is_keyed():
    import dataclasses

    config = dataclasses.replace(CONFIG, dropout=0.5)
    networks = Networks.build(config)
    params = {"params": networks.init_params(jax.random.key(0))["generator"]}
    batch = make_batch([12, 9], 12)
    noise = jnp.zeros(batch["frame_mask"].shape + (config.hidden,))

    def embedding(**kwargs):
        return np.asarray(networks.generator.apply(params, batch, noise, **kwargs)["embedding"])

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
        plain.generator.apply(params, batch, noise, deterministic=False)["embedding"],
        plain.generator.apply(params, batch, noise)["embedding"],
    )


def _perturbed(params, scale=0.05, seed=7):
    """Parameters moved away from initialisation, where heads are zero and rotations identities."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    moved_leaves = [
        leaf + scale * jax.random.normal(key, leaf.shape, leaf.dtype)
        for leaf, key in zip(leaves, keys, strict=True)
    ]
    return jax.tree.unflatten(tree, moved_leaves)


def test_rotation_from_6d_gives_rotations_and_recovers_a_known_one():
    rng = np.random.default_rng(0)
    raw = jnp.asarray(rng.normal(size=(64, 6)))
    rotations = np.asarray(sdetalk.rotation_from_6d(raw), np.float64)
    identity = np.broadcast_to(np.eye(3), rotations.shape)
    np.testing.assert_allclose(rotations @ rotations.transpose(0, 2, 1), identity, atol=1e-5)
    np.testing.assert_allclose(np.linalg.det(rotations), 1.0, atol=1e-5)
    # The first two rows of a rotation are its own 6-D parameters.
    from sdetalk_jax.data.face_model import rotation_matrices

    known = rotation_matrices(np.array([0.3]), np.array([-0.5]), np.array([0.2]))[0]
    np.testing.assert_allclose(
        sdetalk.rotation_from_6d(jnp.asarray(known[:2].reshape(6))), known, atol=1e-6
    )


def test_the_generators_mi_term_never_moves_the_estimators(networks_and_params):
    """The estimators learn only by maximum likelihood; what the generator minimises of Eq. 6
    must not reach them, whatever its weight (issue 14's missing half of the MI test)."""
    networks, params = networks_and_params
    params = _perturbed(params)
    from sdetalk_jax.optim import optimizer

    tx = optimizer(PAPER)
    state = {
        "step": jnp.zeros((), jnp.int32),
        "params": params,
        "opt_state": {k: tx.init(v) for k, v in params.items()},
    }
    batch = make_batch([12, 8], 12)
    results = []
    for weight in (0.0, 10.0):
        config = ml_collections.ConfigDict(LossConfig.to_dict())
        config.mi_weight = weight
        new_state, _ = make_train_step(networks, config)(state, batch, jax.random.key(0), tx)
        results.append(new_state["params"])
    before = traverse_util.flatten_dict(results[0]["estimators"])
    after = traverse_util.flatten_dict(results[1]["estimators"])
    for name in before:
        np.testing.assert_array_equal(before[name], after[name], err_msg=str(name))
    moved_generator = traverse_util.flatten_dict(results[1]["generator"])
    assert any(
        not np.array_equal(v, traverse_util.flatten_dict(results[0]["generator"])[k])
        for k, v in moved_generator.items()
    )  # while the generator does feel the weight
