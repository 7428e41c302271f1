import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from sdetalk_jax import losses, optim
from sdetalk_jax import metrics as metrics_module
from sdetalk_jax.config_files import repository_config
from sdetalk_jax.models import sdetalk
from sdetalk_jax.models.networks import Networks
from sdetalk_jax.train import faces_for_discriminator, make_train_step

CONFIG = sdetalk.SDETalkConfig(
    num_vertices=40, context_dim=16, num_subjects=3, num_emotions=5, hidden=32, heads=4,
    feedforward=64, identity_dim=8, frequency_bands=8, frequency_dim=8, discriminator_blocks=1,
    noise_smoothing_frames=2.0,
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
        "rotation": _head_rotations(rng, batch_size, frames),
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


def _head_rotations(rng, batch_size, frames):
    """Smooth random head motion of a few degrees [B, N, 3, 3]."""
    from sdetalk_jax.data.face_model import rotation_matrices

    angles = np.cumsum(0.01 * rng.normal(size=(batch_size, frames, 3)), axis=1)
    return np.stack([rotation_matrices(*row.T) for row in angles]).astype(np.float32)


@pytest.fixture(scope="module")
def networks_and_params():
    networks = Networks.build(CONFIG)
    return networks, networks.init_params(jax.random.key(0))


def clip_noise(batch, seed):
    """Noise z whose row r depends only on (seed, r), like the clip data of `make_batch`."""
    rows, frames = batch["frame_mask"].shape
    return jnp.stack(
        [
            jax.random.normal(jax.random.fold_in(jax.random.key(seed), r), (32, CONFIG.hidden))
            for r in range(rows)
        ]
    )[:, :frames]


_GENERATORS = {}


def generator_outputs(networks, params, batch, seed=1):
    """The generator's outputs under `clip_noise`, jitted (op by op it takes tens of seconds)."""
    if id(networks) not in _GENERATORS:
        _GENERATORS[id(networks)] = jax.jit(
            lambda p, b, z: networks.generator.apply({"params": p}, b, z)
        )
    noise = clip_noise(batch, seed)
    return _GENERATORS[id(networks)](params["generator"], batch, noise), noise


def test_output_shapes_and_rigid_head_motion(networks_and_params):
    networks, initial = networks_and_params
    batch = make_batch([12, 9], 12)
    v3 = CONFIG.num_vertices * 3
    # Eq. 2 at initialisation: the neutral generator starts from the template.
    at_init, _ = generator_outputs(networks, initial, batch)
    np.testing.assert_allclose(
        at_init["neutral"], jnp.broadcast_to(batch["template"][:, None], (2, 12, v3)), atol=1e-6
    )
    # Away from initialisation, where the rotation is no longer the identity:
    out, _ = generator_outputs(networks, _perturbed(initial, scale=0.3), batch)
    assert out["neutral"].shape == out["expression"].shape == out["posed"].shape == (2, 12, v3)
    assert out["mixture"].shape == (2, CONFIG.num_emotions)
    np.testing.assert_allclose(out["mixture"].sum(-1), 1.0, rtol=1e-5)
    assert out["rotation"].shape == (2, 12, 3, 3) and out["translation"].shape == (2, 12, 3)
    rotation = np.asarray(out["rotation"], np.float64)
    identity = np.broadcast_to(np.eye(3), rotation.shape)
    assert np.abs(rotation - identity).max() > 0.05  # a real rotation, not the identity
    np.testing.assert_allclose(rotation @ np.swapaxes(rotation, -1, -2), identity, atol=1e-5)
    np.testing.assert_allclose(np.linalg.det(rotation), 1.0, atol=1e-5)
    translation = np.asarray(out["translation"])
    assert np.abs(translation).max() > 1e-5
    faces = np.asarray(out["expression"]).reshape(2, 12, -1, 3)
    posed = faces @ rotation + translation[:, :, None]  # Eq. 4, row vectors
    np.testing.assert_allclose(np.asarray(out["posed"]).reshape(posed.shape), posed, atol=1e-6)
    # f^e = f^n + offset: the offset is not zero away from initialisation
    assert np.abs(np.asarray(out["expression"] - out["neutral"])).max() > 1e-5


def all_losses(networks, params, batch):
    out, noise = generator_outputs(networks, params, batch)
    second, noise_2 = generator_outputs(networks, params, batch, seed=2)
    terms = losses.reconstruction_losses(out, batch, LossConfig)
    factors = sdetalk.per_frame_factors(out)
    variables = {"params": params["estimators"]}
    estimates = networks.estimators.apply(variables, factors)
    speakers = networks.estimators.apply(
        variables, out["identity_table"], method="speaker_marginal"
    )
    weights = batch["frame_mask"].astype(jnp.float32)
    terms["log_likelihood"] = losses.estimator_log_likelihood(estimates, factors, weights)
    terms.update(losses.vclub_upper_bound(estimates, factors, weights, speakers))
    terms["classification"] = losses.emotion_classification_loss(out["mixture"], batch)
    terms["diversity"] = losses.diversity_loss(out, second, noise, noise_2, batch, LossConfig)
    terms["emotional_speech"] = losses.emotional_speech_loss(out["emotional_logit"], batch)
    terms["head_style"] = losses.head_style_loss(
        out["rotation"], batch["rotation"], batch, LossConfig
    )
    for side, faces in (
        ("real", faces_for_discriminator(batch)),
        ("fake", faces_for_discriminator(batch, out)),
    ):
        logit, identity_logits, mixture = networks.discriminator.apply(
            {"params": params["discriminator"]}, out["embedding"], faces, batch["template"],
            batch["frame_mask"],
        )  # fmt: skip
        terms[f"discriminator_{side}"] = logit
        terms[f"discriminator_{side}_identity"] = identity_logits
        terms[f"discriminator_{side}_emotion"] = mixture
    return terms, out


_JITTED = {}


def jitted_losses(networks):
    """`all_losses` compiled once per networks: op by op, the gradients take minutes."""
    if id(networks) not in _JITTED:
        _JITTED[id(networks)] = jax.jit(lambda params, batch: all_losses(networks, params, batch))
    return _JITTED[id(networks)]


PADDING_INVARIANT = (
    "neutral", "expression", "rotation", "translation", "classification", "log_likelihood",
    "mi_identity_context", "mi_identity_embedding", "mi_context_embedding", "diversity",
    "emotional_speech", "head_style", "discriminator_real", "discriminator_fake",
    "discriminator_real_identity", "discriminator_fake_emotion",
)  # fmt: skip


def test_padding_changes_neither_outputs_nor_losses(networks_and_params):
    networks, params = networks_and_params
    params = _perturbed(params, scale=0.1)  # heads away from zero, rotations away from I
    compute = jitted_losses(networks)
    alone = make_batch([10], 10)
    padded = make_batch([10], 16)  # same clip (same seed), 6 frames of garbage padding
    terms_alone, out_alone = compute(params, alone)
    terms_padded, out_padded = compute(params, padded)
    for name in ("expression", "rotation", "translation", "posed"):
        np.testing.assert_allclose(
            out_padded[name][0, :10], out_alone[name][0], atol=1e-5, err_msg=name
        )
    np.testing.assert_allclose(out_padded["mixture"], out_alone["mixture"], atol=1e-6)
    assert float(terms_alone["head_style"]) > 0.01 and float(terms_alone["rotation"]) > 1e-3
    for name in PADDING_INVARIANT:
        np.testing.assert_allclose(
            terms_padded[name], terms_alone[name], rtol=2e-4, atol=1e-6, err_msg=name
        )
    # A padding row changes no clip's terms either (two real clips, with and without a third
    # row of padding).
    pair = make_batch([10, 7], 16)
    with_row = make_batch([10, 7, 0], 16)
    terms_pair, _ = compute(params, pair)
    terms_row, _ = compute(params, with_row)
    for name in PADDING_INVARIANT:
        if name.startswith("discriminator"):
            np.testing.assert_allclose(
                terms_row[name][:2], terms_pair[name], rtol=2e-4, atol=1e-6, err_msg=name
            )
        else:
            np.testing.assert_allclose(
                terms_row[name], terms_pair[name], rtol=2e-4, atol=1e-6, err_msg=name
            )


def moved(grads, top):
    flat = traverse_util.flatten_dict(grads)
    return float(sum(np.abs(np.asarray(v)).sum() for k, v in flat.items() if k[0] == top))


GRADIENT_TERMS = (
    "neutral", "expression", "rotation", "classification", "diversity", "emotional_speech",
)  # fmt: skip


@pytest.fixture(scope="module")
def term_gradients(networks_and_params):
    """The generator's gradient of each term in GRADIENT_TERMS, in one compilation."""
    networks, params = networks_and_params
    batch = make_batch([12, 8], 12)
    # Break the zero-initialised heads so every path carries gradient.
    params = jax.tree.map(lambda x: x + 0.01 * jnp.ones_like(x), params)

    def gradients(generator_params):
        def term(name):
            def loss(p):
                terms, _ = all_losses(networks, {**params, "generator": p}, batch)
                return terms[name]

            return jax.grad(loss)(generator_params)

        return {name: term(name) for name in GRADIENT_TERMS}

    return jax.jit(gradients)(params["generator"])


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
def test_each_loss_moves_the_parameters_it_should(term_gradients, term, moves, still):
    grads = term_gradients[term]
    for name in moves:
        assert moved(grads, name) > 0, f"{term} should move {name}"
    for name in still:
        assert moved(grads, name) == 0, f"{term} should not move {name}"


def test_mi_bound_moves_identity_and_emotion_not_estimators(networks_and_params):
    networks, params = networks_and_params
    params = _perturbed(params)
    batch = make_batch([12, 8], 12)
    weights = batch["frame_mask"].astype(jnp.float32)

    def bound(generator_params, estimator_params):
        out, _ = generator_outputs(networks, {**params, "generator": generator_params}, batch)
        factors = sdetalk.per_frame_factors(out)
        variables = {"params": estimator_params}
        estimates = networks.estimators.apply(variables, factors)
        speakers = networks.estimators.apply(
            variables, out["identity_table"], method="speaker_marginal"
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
    # with respect to the generator's parameters only (test_the_generators_mi_term_never_moves_
    # the_estimators runs the step itself).


@pytest.fixture(scope="module")
def training_step(networks_and_params):
    """(step(state, batch, key), tx): the paper's losses, with lambda_emotional = 1 so that every
    generator parameter has a gradient, and Adam at 3e-3; compiled once for the tests below."""
    from sdetalk_jax.optim import optimizer

    networks, _ = networks_and_params
    config = PAPER.copy_and_resolve_references()
    config.train.learning_rate = 3e-3
    config.loss.lambda_emotional = 1.0
    tx = optimizer(config)
    return jax.jit(lambda s, b, k: make_train_step(networks, config.loss)(s, b, k, tx)), tx


def test_one_training_step_updates_all_three_networks(networks_and_params, training_step):
    networks, params = networks_and_params
    params = _perturbed(params)
    step, tx = training_step
    state = fresh_state(params, tx)
    batch = make_batch([12, 8], 12)
    new_state, metrics = step(state, batch, jax.random.key(0))
    assert int(new_state["step"]) == 1
    for name in ("generator", "discriminator", "estimators"):
        before = traverse_util.flatten_dict(params[name])
        after = traverse_util.flatten_dict(new_state["params"][name])
        unchanged = [k for k in before if np.array_equal(before[k], after[k])]
        assert not unchanged, f"{name}: {unchanged} did not move"
    assert all(np.isfinite(float(v)) for v in metrics.values())


def test_the_generator_maximises_diversity_and_sees_the_updated_discriminator(
    networks_and_params, training_step
):
    networks, params = networks_and_params
    params = _perturbed(params)
    terms = {
        "reconstruction": 1.0, "mi": 0.5, "classification": 0.2, "emotional_speech": 0.3,
        "diversity": 0.4, "adversarial": 0.7, "head_style": 0.6, "head_gain": 0.9,
        "statistics_penalty": 1.1,
    }  # fmt: skip
    _, total = losses.generator_objective(terms, 0.1, 0.2, LossConfig)
    _, more_diverse = losses.generator_objective({**terms, "diversity": 1.4}, 0.1, 0.2, LossConfig)
    # L_d is subtracted (Eq. 7 is maximised): more diversity, lower objective
    assert more_diverse - total == pytest.approx(-LossConfig.lambda_d)
    # Our head terms enter with their weights (0 in the paper's config).
    weighted = LossConfig.copy_and_resolve_references()
    weighted.lambda_head_gain, weighted.lambda_head_style = 2.0, 3.0
    weighted.lambda_statistics = 4.0
    _, with_ours = losses.generator_objective(terms, 0.1, 0.2, weighted)
    assert with_ours - total == pytest.approx(2.0 * 0.9 + 3.0 * 0.6 + 4.0 * 1.1)

    step, tx = training_step
    state = fresh_state(params, tx)
    batch = make_batch([12, 8], 12)
    new_state, metrics = step(state, batch, jax.random.key(0))

    # The generator's adversarial term, recomputed from the step's own noise with D before and
    # after its update: the step reports (and so trains on) the updated D's.
    noise_key, _ = jax.random.split(jax.random.fold_in(jax.random.key(0), 0))
    noise = jax.random.normal(noise_key, batch["frame_mask"].shape + (CONFIG.hidden,))
    out = networks.generator.apply({"params": params["generator"]}, batch, noise)

    def adversarial(discriminator_params):
        logit, _, _ = networks.discriminator.apply(
            {"params": discriminator_params}, out["embedding"],
            faces_for_discriminator(batch, out), batch["template"], batch["frame_mask"],
        )  # fmt: skip
        _, value = losses.adversarial_losses(
            jnp.zeros_like(logit), logit, batch["clip_mask"].astype(jnp.float32), LossConfig.gan
        )
        return float(value)

    updated = adversarial(new_state["params"]["discriminator"])
    stale = adversarial(params["discriminator"])
    assert abs(updated - stale) > 1e-5
    assert float(metrics["adversarial"]) == pytest.approx(updated, rel=1e-4)


def test_a_short_training_run_fits_its_own_clips(networks_and_params, training_step):
    """150 steps on two clips, from initialisation: the reconstruction loss falls and the
    expression beats the template on those clips."""
    networks, params = networks_and_params
    step, tx = training_step
    state = fresh_state(params, tx)
    batch = make_batch([12, 10], 12)
    history = []
    for _ in range(150):
        state, metrics = step(state, batch, jax.random.key(0))
        history.append(float(metrics["reconstruction"]))
    assert np.mean(history[-10:]) < 0.5 * np.mean(history[:3])
    out, _ = generator_outputs(networks, state["params"], batch)
    mask = np.asarray(batch["frame_mask"])

    def vertex_error(faces):
        return float(
            metrics_module.vertex_distances(
                np.asarray(faces)[mask], np.asarray(batch["vertices"])[mask]
            ).mean()
        )

    template = np.broadcast_to(np.asarray(batch["template"])[:, None], batch["vertices"].shape)
    assert vertex_error(out["expression"]) < 0.8 * vertex_error(template)


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
    # With model.emotion_statistics e's own classifier is trained beside y_e.
    outputs = {"mixture": mixture}
    assert float(losses.classification_terms(outputs, batch)) == pytest.approx(1.0)
    outputs["embedding_mixture"] = jnp.array([[1.0, 0.0], [0.0, 1.0]])  # wrong by 0.5, row 0
    assert float(losses.classification_terms(outputs, batch)) == pytest.approx(1.25)


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


def fresh_state(params, tx):
    """A training state at step 0 with these parameters."""
    return {
        "step": jnp.zeros((), jnp.int32),
        "params": params,
        "opt_state": {k: tx.init(v) for k, v in params.items()},
    }


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


def test_the_generators_mi_term_never_moves_the_estimators(networks_and_params, training_step):
    """The estimators learn only by maximum likelihood; what the generator minimises of Eq. 6
    must not reach them, whatever its weight (issue 14's missing half of the MI test)."""
    networks, params = networks_and_params
    params = _perturbed(params)
    weighted_step, tx = training_step  # L_mi at the paper's weight, 1
    config = PAPER.copy_and_resolve_references()
    config.loss.lambda_emotional = 1.0  # as in the shared step: only the MI weight differs
    config.loss.mi_weight = 0.0
    unweighted_step = jax.jit(lambda s, b, k: make_train_step(networks, config.loss)(s, b, k, tx))
    state = fresh_state(params, tx)
    batch = make_batch([12, 8], 12)
    results = [
        step(state, batch, jax.random.key(0))[0]["params"]
        for step in (unweighted_step, weighted_step)
    ]
    before = traverse_util.flatten_dict(results[0]["estimators"])
    after = traverse_util.flatten_dict(results[1]["estimators"])
    for name in before:
        np.testing.assert_array_equal(before[name], after[name], err_msg=str(name))
    moved_generator = traverse_util.flatten_dict(results[1]["generator"])
    assert any(
        not np.array_equal(v, traverse_util.flatten_dict(results[0]["generator"])[k])
        for k, v in moved_generator.items()
    )  # while the generator does feel the weight


@pytest.mark.parametrize("order", ["sequential", "parallel"])
def test_the_emotion_networks_frequency_block_reads_what_the_order_says(order):
    """Item 5 of issue 14: in the paper's order the frequency block attends over the temporal
    block's output, at the paper's 4 heads and width; in ours both read the mel side by side."""
    import dataclasses

    config = dataclasses.replace(CONFIG, emotion_attention=order)
    network = sdetalk.EmotionEmbeddingNetwork(config)
    mel = 3.0 * jax.random.normal(jax.random.key(0), (2, 12, config.mel_bins))
    mask = jnp.arange(12)[None] < jnp.array([[12], [9]])
    params = network.init(jax.random.key(1), mel, mask)["params"]

    def frequency_output(params):
        _, state = network.apply(
            {"params": params}, mel, mask, capture_intermediates=True,
            mutable=["intermediates"],
        )  # fmt: skip
        return np.asarray(state["intermediates"]["frequency"]["__call__"][0])

    # The temporal block's last LayerNorm, scaled: its output (not the mel) changes.
    norm = params["temporal"]["norm_feedforward"]
    moved = {**params, "temporal": {**params["temporal"], "norm_feedforward": {
        **norm, "scale": 3.0 * norm["scale"]}}}  # fmt: skip
    before = frequency_output(params)
    changed = np.abs(frequency_output(moved) - before).max() / np.abs(before).max()
    query = params["frequency"]["block"]["self_attention"]["query"]["kernel"]
    if order == "sequential":
        assert changed > 0.05
        assert query.shape == (config.hidden, config.heads, config.hidden // config.heads)
    else:
        assert changed == 0.0
        assert query.shape == (config.frequency_dim, 2, config.frequency_dim // 2)


@pytest.mark.parametrize("centring", ["utterance", "none"])
def test_utterance_centring_hears_no_voice_level_and_ignores_padding(centring):
    """`mel_centring = "utterance"`: a voice louder or brighter in every frame (a per-bin offset
    over the whole clip) gives the same emotional embedding; without it, another one. Padding
    changes neither."""
    import dataclasses

    config = dataclasses.replace(CONFIG, mel_centring=centring)
    network = sdetalk.EmotionEmbeddingNetwork(config)
    mel = 3.0 * jax.random.normal(jax.random.key(0), (2, 12, config.mel_bins))
    mask = jnp.arange(12)[None] < jnp.array([[12], [9]])
    params = _perturbed({"emotion": network.init(jax.random.key(1), mel, mask)["params"]})
    embed = jax.jit(lambda m, k: network.apply({"params": params["emotion"]}, m, k))
    level = jax.random.normal(jax.random.key(2), (2, 1, config.mel_bins)) * mask[..., None]
    moved = np.abs(embed(mel + level, mask) - embed(mel, mask)).max()  # real frames only
    if centring == "utterance":
        assert moved < 1e-4
    else:
        assert moved > 1e-2
    padded = jnp.concatenate([mel, 5.0 * jnp.ones((2, 4, config.mel_bins))], axis=1)
    padded_mask = jnp.concatenate([mask, jnp.zeros((2, 4), bool)], axis=1)
    np.testing.assert_allclose(
        embed(padded, padded_mask)[:, :12] * mask[..., None], embed(mel, mask), atol=1e-5
    )
    with pytest.raises(ValueError, match="speaker_baseline does nothing"):
        dataclasses.replace(config, mel_centring="utterance", speaker_baseline=True)
    with pytest.raises(ValueError, match="'none' \\(the paper\\) or 'utterance'"):
        dataclasses.replace(config, mel_centring="speaker")


@pytest.mark.parametrize(
    "options",
    [{}, {"head_noise_path": True, "head_mean_pose": "rest", "dropout": 0.2}],
    ids=["paper", "head-noise-path-and-dropout"],
)
def test_the_steps_generator_update_is_plain_autodiff_of_its_objective(
    networks_and_params, options
):
    """The step computes G_n once for both samples and runs G forward once for the estimators,
    D and its own gradient (`make_train_step`). With plain SGD at rate 1 its generator update
    must be minus the gradient of the objective written out directly: each sample a full pass of
    G, differentiated by jax.grad, against the estimators and D as the step updated them (with
    the step's dropout key, and with our head noise path too)."""
    import dataclasses

    import optax

    from sdetalk_jax.train import generator_terms

    networks, params = networks_and_params
    if options:
        networks = Networks.build(dataclasses.replace(CONFIG, **options))
        params = networks.init_params(jax.random.key(0))
    params = _perturbed(params)
    config = PAPER.copy_and_resolve_references()
    config.loss.lambda_emotional = 1.0
    config.loss.head_reconstruction = "mean"  # the first sample also carries the head at z = 0
    tx = optax.sgd(1.0)
    batch = make_batch([12, 8], 12)
    key = jax.random.key(0)
    step = jax.jit(lambda s, b, k: make_train_step(networks, config.loss)(s, b, k, tx))
    new_state, metrics = step(fresh_state(params, tx), batch, key)

    step_key = jax.random.fold_in(key, 0)
    noise_keys = jax.random.split(step_key)
    noises = tuple(
        jax.random.normal(k, batch["frame_mask"].shape + (CONFIG.hidden,)) for k in noise_keys
    )
    others = {name: new_state["params"][name] for name in ("estimators", "discriminator")}

    def objective(generator_params):
        def sample(noise, mean_head):
            return networks.generator.apply(
                {"params": generator_params}, batch, noise, deterministic=False,
                mean_head=mean_head, rngs={"dropout": jax.random.fold_in(step_key, 3)},
            )  # fmt: skip

        first, second = sample(noises[0], True), sample(noises[1], False)
        terms, total = generator_terms(networks, first, second, noises, batch, others, config.loss)
        return total, terms

    (total, terms), grads = jax.jit(jax.value_and_grad(objective, has_aux=True))(
        params["generator"]
    )
    assert float(metrics["total"]) == pytest.approx(float(total), rel=1e-5)
    steps = traverse_util.flatten_dict(
        jax.tree.map(jnp.subtract, params["generator"], new_state["params"]["generator"])
    )
    gradients = traverse_util.flatten_dict(grads)
    overall = np.sqrt(sum(np.sum(np.square(g)) for g in gradients.values()))
    for name, gradient in gradients.items():
        # float32 sums in another order: the difference is rounding, small against the tensor's
        # own gradient or (for one that is zero in exact arithmetic, like attention key biases)
        # against the whole gradient
        difference = np.linalg.norm(np.asarray(steps[name]) - np.asarray(gradient))
        assert difference <= 2e-5 * np.linalg.norm(gradient) + 1e-8 * overall, name
    assert np.abs(steps[("neutral", "kernel")]).max() > 0  # the step moved G_n


def test_the_neutral_layer_is_a_dense_on_context_and_identity_per_frame():
    """G_n's layer applies its identity rows once per clip: the same parameters give what an
    nn.Dense gives on every frame's (c (+) p), so runs trained before the change load as they
    were."""
    import flax.linen as nn

    rng = np.random.default_rng(0)
    frames, identity = rng.normal(size=(2, 5, 6)), rng.normal(size=(2, 3))
    layer = sdetalk.FrameAndClipDense(7)
    params = layer.init(jax.random.key(0), frames, identity)
    params = jax.tree.map(lambda x: x + jnp.asarray(rng.normal(size=x.shape), x.dtype), params)
    concatenated = np.concatenate([frames, np.broadcast_to(identity[:, None], (2, 5, 3))], -1)
    expected = nn.Dense(7).apply(params, concatenated)
    result, (frame_part, clip_part) = layer.apply(params, frames, identity)
    np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(frame_part + clip_part[:, None], expected, rtol=1e-5, atol=1e-5)
    # G's query reads those parts through the parameters of an nn.Dense on their sum.
    query = sdetalk.PartsDense(4)
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
    rows = sdetalk.coordinate_rows(faces)
    assert rows.shape == (2, 5, 3, 4)
    np.testing.assert_array_equal(rows[..., 1, 2], faces[..., 2 * 3 + 1])  # y of vertex 2
    layer = sdetalk.CoordinateRowsDense(7)
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
        (lambda *a: sdetalk.scaled_affine(*a, scale), plain_affine,
         (normal(2, 5, 6), normal(6, 7), normal(7))),
        (lambda *a: sdetalk.scaled_affine(*a, scale), plain_affine,  # a pooled query [B, D]
         (normal(3, 6), normal(6, 7), normal(7))),
        (lambda *a: sdetalk.frame_and_clip_affine(*a, scale)[0], plain_frame_and_clip,
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
    outputs, frame_part, clip_part = sdetalk.frame_and_clip_affine(*arguments, scale)
    np.testing.assert_allclose(
        scale * (frame_part + clip_part[:, None]),
        plain_frame_and_clip(*arguments),
        rtol=1e-6,
        atol=1e-7,
    )
    with pytest.raises(NotImplementedError, match="stop_gradient"):
        jax.grad(lambda k: sdetalk.frame_and_clip_affine(arguments[0], arguments[1], k,
                                                         arguments[3], scale)[1].sum())(arguments[2])  # fmt: skip


def test_the_vertex_terms_are_mean_squared_millimetres_over_real_frames():
    """L_n and L_exp (Eq. 5): the squared error in mm^2 per coordinate, averaged over the
    coordinates of each frame and over the frames that are not padding (numpy reference)."""
    batch = make_batch([12, 7], 12)
    rng = np.random.default_rng(5)
    shape = batch["vertices"].shape
    outputs = {
        "neutral": batch["neutral_vertices"] + 0.001 * rng.normal(size=shape).astype(np.float32),
        "expression": batch["vertices"] + 0.002 * rng.normal(size=shape).astype(np.float32),
        "rotation": batch["rotation"],
        "translation": batch["translation"],
    }
    terms = losses.reconstruction_losses(outputs, batch, LossConfig)
    mask = np.asarray(batch["frame_mask"])
    for term, target in (("neutral", "neutral_vertices"), ("expression", "vertices")):
        error = (np.asarray(outputs[term], np.float64) - np.asarray(batch[target])) * 1000.0
        expected = np.square(error).mean(axis=-1)[mask].mean()
        np.testing.assert_allclose(terms[term], expected, rtol=1e-5)


def test_clip_statistics_are_the_mel_summary_and_ignore_padding():
    mel = 3.0 * jax.random.normal(jax.random.key(0), (2, 12, CONFIG.mel_bins))
    mask = jnp.arange(12)[None] < jnp.array([[12], [9]])
    statistics = np.asarray(sdetalk.clip_statistics(mel, mask))
    for row, frames in enumerate((12, 9)):
        scaled = (np.asarray(mel[row, :frames], np.float64) + 4.0) / 5.0
        expected = np.r_[scaled.mean(0), scaled.std(0), np.abs(np.diff(scaled, axis=0)).mean(0)]
        np.testing.assert_allclose(statistics[row], expected, rtol=1e-4, atol=1e-5)
    padded = jnp.concatenate([mel, 5.0 * jnp.ones((2, 4, CONFIG.mel_bins))], axis=1)
    padded_mask = jnp.concatenate([mask, jnp.zeros((2, 4), bool)], axis=1)
    np.testing.assert_allclose(sdetalk.clip_statistics(padded, padded_mask), statistics, atol=1e-6)


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
        sdetalk.clip_statistics(batch["mel"], batch["frame_mask"]) - readout["centre"]
    ) / readout["scale"]
    expected = jax.nn.softmax(standardised @ readout["kernel"] + readout["bias"])
    np.testing.assert_allclose(outputs["mixture"], expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(outputs["embedding_mixture"], without["mixture"], rtol=1e-6)
    assert np.abs(outputs["mixture"] - without["mixture"]).max() > 1e-2
    np.testing.assert_allclose(outputs["posed"], without["posed"], rtol=1e-6)
    assert float(outputs["statistics_penalty"]) == pytest.approx(
        float(jnp.sum(jnp.square(readout["kernel"]))), rel=1e-5
    )
    # A request: row 0 names a category (y_e read from the steered e, as in the paper), row 1
    # only the voice's own emotion (at another intensity: y_e still the voice statistics').
    requested = {
        **batch,
        "emotion_target": jnp.ones((2, CONFIG.hidden)) * jnp.array([[1.0], [0.0]]),
        "emotion_inferred_weight": jnp.array([0.0, 1.0]),
    }
    steered = generate(params, requested)
    paper_steered = paper.generator.apply({"params": paper_params}, requested, noise)
    np.testing.assert_array_equal(steered["mixture"][0], paper_steered["mixture"][0])
    np.testing.assert_allclose(steered["mixture"][1], expected[1], rtol=1e-4, atol=1e-6)
    assert "statistics_penalty" not in steered


@pytest.mark.parametrize(
    "precision, marker",
    [
        ("default", None),
        ("float32", "[HIGHEST, HIGHEST]"),
        ("tensorfloat32", "[HIGH, HIGH]"),
        ("bfloat16", "lhs_precision_type = bf16"),
    ],
)
def test_the_step_and_validation_compute_their_matmuls_at_train_matmul_precision(
    networks_and_params, precision, marker
):
    """`train.matmul_precision`: every dot of the compiled step and of validation carries it
    (checked in the lowered program: XLA's CPU backend computes float32 whatever is asked)."""
    from sdetalk_jax import validation
    from sdetalk_jax.parallel import Placement, data_mesh
    from sdetalk_jax.train import compiled_train_step

    networks, params = networks_and_params
    config = PAPER.copy_and_resolve_references()
    config.train.matmul_precision = precision
    placement = Placement(data_mesh())
    batch = make_batch([12, 8], 12)
    step = compiled_train_step(networks, config, placement, jax.random.key(1), 10)
    evaluation = validation.compiled_evaluation(networks, config.loss, placement, precision)
    programs = [
        step.lower(fresh_state(params, optim.optimizer(config)), batch).as_text(),
        evaluation.lower(
            params["generator"], batch, np.int32(0), jnp.ones(CONFIG.num_emotions) / 5
        ).as_text(),
    ]
    for program in programs:
        dots = [line for line in program.splitlines() if "dot_general" in line]
        # Pinned to float32 whatever the setting: Eq. 4 (a product with [3, 3] rotations,
        # forward and backward) and the losses' per-frame means (a product with a vector).
        if marker == "[HIGHEST, HIGHEST]":
            assert len(dots) > 10 and all(marker in line for line in dots)
            continue
        pinned = [line for line in dots if "[HIGHEST, HIGHEST]" in line]
        posing = [line for line in pinned if re.search(r"tensor<(\d+x)*3x3xf32>", line)]
        means = [line for line in pinned if re.search(r"tensor<\d+xf32>", line)]
        assert set(pinned) == set(posing + means)
        if program is programs[0]:  # the step has both (validation compares unposed faces)
            assert posing and means
        free = [line for line in dots if line not in pinned]
        assert len(free) > 10
        if marker is None:
            assert not any("HIGH" in line or "bf16" in line for line in free)
        else:
            assert all(marker in line for line in free)
    with pytest.raises(ValueError, match="train.matmul_precision is 'half'"):
        optim.with_matmul_precision(lambda: None, "half")
