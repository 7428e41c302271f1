"""SDETalk's training step: one jitted update of the vCLUB estimators (maximum likelihood), the
consistency discriminator, then the generator (`losses.generator_objective`), in the order of
Sec. 2.2. A pure function of (state, batch): every random draw comes from
`fold_in(noise key, step)`, so a resumed run draws exactly what an uninterrupted one would. The
loop around it is `train`.
"""

from __future__ import annotations

import functools

import flax.struct
import jax
import jax.numpy as jnp

from sdetalk_jax import losses, optim, parallel
from sdetalk_jax.models.head_motion import head_noise_mean_abs
from sdetalk_jax.models.networks import Networks
from sdetalk_jax.models.ops import coordinate_rows, pose_rows
from sdetalk_jax.models.vclub import per_frame_factors


@flax.struct.dataclass
class DiscriminatorTerms:
    """D's objective and its parts on one batch (`discriminator_update`)."""

    total: jax.Array
    adversarial: jax.Array
    identity: jax.Array  # the identity head's cross-entropy on real faces
    emotion: jax.Array  # the emotion head's L2 on real faces

    def metrics(self) -> dict:
        return {
            "discriminator": self.total,
            "discriminator_adversarial": self.adversarial,
            "discriminator_identity": self.identity,
            "discriminator_emotion": self.emotion,
        }


def estimator_update(networks: Networks, params, opt_state, factors, frame_weights, tx):
    """vCLUB estimators: maximise log q(y|x) on the current (fixed) factors.
    Returns (params, opt_state, negative log-likelihood)."""

    def estimator_loss(estimator_params):
        estimates = networks.estimators.apply({"params": estimator_params}, factors)
        return -losses.estimator_log_likelihood(estimates, factors, frame_weights)

    nll, grads = jax.value_and_grad(estimator_loss)(params)
    params, opt_state = optim.apply_update(tx, grads, opt_state, params)
    return params, opt_state, nll


def faces_for_discriminator(batch, outputs=None):
    """The faces D judges, as coordinate rows [B, N, 3, V] (`coordinate_rows`): the speaker's
    (`outputs` None) or the generated ones, posed by Eq. 4 where the clip has head pose and
    unposed where it has none, on both sides: a clip without pose would otherwise show D a still
    head as real. Unposed is posed by R = I, T = 0, which leaves every value as it is."""
    if outputs is None:
        faces, rotation, translation = batch["vertices"], batch["rotation"], batch["translation"]
    else:
        faces, rotation, translation = outputs.expression, outputs.rotation, outputs.translation
    has_pose = batch["has_head_pose"]
    rotation = jnp.where(has_pose[:, None, None, None], rotation, jnp.eye(3))
    translation = jnp.where(has_pose[:, None, None], translation, 0.0)
    return pose_rows(coordinate_rows(faces), rotation, translation)


def discriminator_update(networks: Networks, params, opt_state, outputs, batch, loss_config, tx):
    """D: real (e, f_bar) against fake (e, f), plus its identity and emotion heads on real faces.
    Returns (params, opt_state, DiscriminatorTerms)."""
    real = faces_for_discriminator(batch)
    clip_weights = batch["clip_mask"].astype(jnp.float32)

    def discriminator_loss(discriminator_params):
        def apply(faces):
            return networks.discriminator.apply(
                {"params": discriminator_params},
                outputs.embedding,
                faces,
                batch["template"],
                batch["frame_mask"],
            )

        real_logits, identity_logits, mixture = apply(real)
        fake_logits, _, _ = apply(faces_for_discriminator(batch, outputs))
        adversarial, _ = losses.adversarial_losses(
            real_logits, fake_logits, clip_weights, loss_config.gan
        )
        identity, emotion = losses.auxiliary_losses(
            identity_logits, mixture, batch, loss_config.classify_neutral_clips
        )
        total = adversarial + identity + emotion
        return total, DiscriminatorTerms(total, adversarial, identity, emotion)

    (_, terms), grads = jax.value_and_grad(discriminator_loss, has_aux=True)(params)
    params, opt_state = optim.apply_update(tx, grads, opt_state, params)
    return params, opt_state, terms


def generator_terms(networks, first, second, noises, batch, others, loss_config):
    """Every term of the generator's objective from two samples of G (noises z1, z2), with the
    estimators and the discriminator as just updated (`others`). Returns (terms, total)."""
    frame_weights = batch["frame_mask"].astype(jnp.float32)
    terms = losses.reconstruction_losses(first, batch, loss_config)
    # With the head noise path, the style term shapes that path alone: G's own rotation is the
    # mean head's, left to L_r at z = 0, where a still-but-jittering head would pass for motion.
    turned = first.rotation if first.head_turn is None else first.head_turn
    terms["head_style"] = losses.head_style_loss(turned, batch["rotation"], batch, loss_config)
    terms["head_gain"] = jnp.zeros(())
    if first.head_gain is not None:
        terms["head_gain"] = losses.head_gain_loss(
            first.head_gain, batch["rotation"], batch, loss_config,
            head_noise_mean_abs(networks.config.head_noise),
        )  # fmt: skip
    first_factors = per_frame_factors(first)
    estimator_variables = {"params": others["estimators"]}
    estimates = networks.estimators.apply(estimator_variables, first_factors)
    speaker_estimates = networks.estimators.apply(
        estimator_variables, first.identity_table, method="speaker_marginal"
    )
    terms.update(
        losses.vclub_upper_bound(estimates, first_factors, frame_weights, speaker_estimates)
    )
    terms["classification"] = losses.classification_terms(
        first, batch, loss_config.classify_neutral_clips
    )
    terms["diversity"] = losses.diversity_loss(first, second, *noises, batch, loss_config)
    fake_logits, identity_logits, mixture = networks.discriminator.apply(
        {"params": others["discriminator"]},
        jax.lax.stop_gradient(first.embedding),
        faces_for_discriminator(batch, first),
        batch["template"],
        batch["frame_mask"],
    )
    _, terms["adversarial"] = losses.adversarial_losses(
        jnp.zeros_like(fake_logits), fake_logits, batch["clip_mask"].astype(jnp.float32),
        loss_config.gan,
    )  # fmt: skip
    aux_identity, aux_emotion = losses.auxiliary_losses(
        identity_logits, mixture, batch, loss_config.classify_neutral_clips
    )
    terms["emotional_speech"] = losses.emotional_speech_loss(first.emotional_logit, batch)
    terms["statistics_penalty"] = (
        jnp.zeros(()) if first.statistics_penalty is None else first.statistics_penalty
    )
    terms["guidance"], total = losses.generator_objective(
        terms, aux_identity, aux_emotion, loss_config
    )
    terms["total"] = total
    return terms, total


def step_noise(state, batch, noise_key, hidden: int):
    """(z1, z2 [B, N, hidden], the dropout keys) of one step, from fold_in(noise_key, step): the
    same draws after a resume. One dropout mask per step, the same for both noise samples: L_d
    then compares what the noise changes, not what dropout does."""
    step_key = jax.random.fold_in(noise_key, state["step"])
    noise_key_1, noise_key_2 = jax.random.split(step_key)
    dropout_rngs = {"dropout": jax.random.fold_in(step_key, 3)}
    shape = batch["frame_mask"].shape + (hidden,)
    noises = (jax.random.normal(noise_key_1, shape), jax.random.normal(noise_key_2, shape))
    return noises, dropout_rngs


def two_samples(networks: Networks, batch, noises, dropout_rngs, mean_head: bool):
    """generator params -> G's outputs for z1 (with the head at z = 0 if `mean_head`) and z2."""

    def generate_both(generator_params):
        variables = {"params": generator_params}
        # G_n's face does not depend on the noise: one pass serves both samples.
        neutral_parts = networks.generator.apply(variables, batch, method="neutral_face")

        def generate(noise, with_mean_head):
            outputs = networks.generator.apply(
                variables, batch, noise, deterministic=False, mean_head=with_mean_head,
                neutral_parts=neutral_parts, rngs=dropout_rngs,
            )  # fmt: skip
            # D poses them itself; kept, they would cost a backward pass of zeros
            return outputs.replace(posed=None)

        return generate(noises[0], mean_head), generate(noises[1], False)

    return generate_both


def make_train_step(networks: Networks, loss_config):
    """(state, batch, noise_key, tx) -> (state, metrics): one update of the estimators, the
    discriminator and the generator, in that order (Sec. 2.2)."""

    def step_fn(state, batch, noise_key, tx):
        params, opt_state = state["params"], state["opt_state"]
        noises, dropout_rngs = step_noise(state, batch, noise_key, networks.config.hidden)
        mean_head = loss_config.head_reconstruction == "mean"
        frame_weights = batch["frame_mask"].astype(jnp.float32)
        # G runs forward once: its first sample feeds the estimators' and D's updates (as a
        # constant), then the generator's terms, whose gradient goes back through the same pass.
        (first, second), pull_back = jax.vjp(
            two_samples(networks, batch, noises, dropout_rngs, mean_head), params["generator"]
        )
        outputs = jax.lax.stop_gradient(first)
        estimator_params, estimator_opt, estimator_nll = estimator_update(
            networks, params["estimators"], opt_state["estimators"],
            per_frame_factors(outputs), frame_weights, tx,
        )  # fmt: skip
        discriminator_params, discriminator_opt, d_terms = discriminator_update(
            networks, params["discriminator"], opt_state["discriminator"], outputs, batch,
            loss_config, tx,
        )  # fmt: skip
        others = {"estimators": estimator_params, "discriminator": discriminator_params}

        def generator_loss(samples):
            terms, total = generator_terms(networks, *samples, noises, batch, others, loss_config)
            return total, terms

        (_, terms), sample_grads = jax.value_and_grad(generator_loss, has_aux=True)((first, second))
        (grads,) = pull_back(sample_grads)
        generator_params, generator_opt = optim.apply_update(
            tx, grads, opt_state["generator"], params["generator"]
        )
        new_state = {
            "step": state["step"] + 1,
            "params": {"generator": generator_params, "discriminator": discriminator_params,
                       "estimators": estimator_params},
            "opt_state": {"generator": generator_opt, "discriminator": discriminator_opt,
                          "estimators": estimator_opt},
        }  # fmt: skip
        return new_state, {**terms, "estimator_nll": estimator_nll, **d_terms.metrics()}

    return step_fn


def compiled_train_step(
    networks, config, placement: parallel.Placement, noise_key, total_steps: int
):
    """The training step jitted over the mesh: state replicated, batch split along its rows.
    (state, batch) -> (state, metrics); the state's buffers are donated. `total_steps` is the
    length of the learning-rate schedule, if it decays."""
    tx = optim.optimizer(config, total_steps)
    step_fn = functools.partial(make_train_step(networks, config.loss), noise_key=noise_key, tx=tx)
    step_fn = optim.with_matmul_precision(step_fn, config.train.matmul_precision)
    return jax.jit(
        step_fn,
        in_shardings=(placement.replicated, placement.batch),
        out_shardings=(placement.replicated, placement.replicated),
        donate_argnums=(0,),
    )
