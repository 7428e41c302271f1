"""sdetalk_jax/train_step.py: the jitted training step, its gradients and what D is shown."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from sdetalk_jax import losses, optim
from sdetalk_jax import metrics as metrics_module
from sdetalk_jax.data.face_model import rotation_matrices
from sdetalk_jax.models import ops
from sdetalk_jax.models.networks import Networks
from sdetalk_jax.train_step import faces_for_discriminator, make_train_step
from tests.model_fixtures import (
    CONFIG,
    PAPER,
    HeadOutputs,
    LossConfig,
    _perturbed,
    all_losses,
    fresh_state,
    generator_outputs,
    jitted_losses,
    make_batch,
    moved,
    networks_and_initial_params,
)


@pytest.fixture(scope="module")
def networks_and_params():
    return networks_and_initial_params()


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
            getattr(out_padded, name)[0, :10],
            getattr(out_alone, name)[0],
            atol=1e-5,
            err_msg=name,
        )
    np.testing.assert_allclose(out_padded.mixture, out_alone.mixture, atol=1e-6)
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
            {"params": discriminator_params}, out.embedding,
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
    assert vertex_error(out.expression) < 0.8 * vertex_error(template)


def test_the_generators_mi_term_never_moves_the_estimators(networks_and_params, training_step):
    """The estimators learn only by maximum likelihood; what the generator minimises of Eq. 6
    must not reach them, whatever its weight."""
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

    from sdetalk_jax.train_step import generator_terms

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


def test_the_discriminator_sees_no_head_pose_where_a_clip_has_none():
    rng = np.random.default_rng(6)
    vertices = jnp.asarray(rng.normal(size=(2, 4, 9)), jnp.float32)
    rotation = jnp.asarray(
        rotation_matrices(*rng.normal(scale=0.2, size=(3, 8))).reshape(2, 4, 3, 3), jnp.float32
    )
    translation = jnp.asarray(rng.normal(size=(2, 4, 3)), jnp.float32)
    batch = {
        "vertices": vertices, "rotation": rotation, "translation": translation,
        "has_head_pose": jnp.asarray([True, False]),
    }  # fmt: skip
    rows = ops.coordinate_rows
    real = faces_for_discriminator(batch)
    np.testing.assert_allclose(
        real[0], rows(ops.pose_faces(vertices, rotation, translation))[0], atol=1e-6
    )
    np.testing.assert_array_equal(real[1], rows(vertices)[1])  # R = I, T = 0 change nothing
    outputs = HeadOutputs(
        expression=vertices - 1.0,
        rotation=jnp.swapaxes(rotation, -1, -2),
        translation=-translation,
    )
    fake = faces_for_discriminator(batch, outputs)
    posed = ops.pose_faces(outputs.expression, outputs.rotation, outputs.translation)
    np.testing.assert_allclose(fake[0], rows(posed)[0], atol=1e-6)
    np.testing.assert_array_equal(fake[1], rows(outputs.expression)[1])
    # and where a clip has no head pose, G's head gets no gradient from D's faces
    _, pull_back = jax.vjp(lambda o: faces_for_discriminator(batch, o), outputs)
    (grads,) = pull_back(jnp.ones_like(fake))
    for name in ("rotation", "translation"):
        assert (
            np.abs(getattr(grads, name)[1]).max() == 0.0
            and np.abs(getattr(grads, name)[0]).max() > 0.0
        ), name


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
    from sdetalk_jax.train_step import compiled_train_step

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
