"""SDETalk's losses (paper Sec. 2.2). Every term is masked: padded frames and padding rows count for
nothing, so a clip's loss does not depend on how much padding its batch has."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from sdetalk_jax.models.sdetalk import MI_PAIRS, gaussian_log_likelihood


def _frame_weights(batch, flag: str | None = None):
    weights = batch["frame_mask"].astype(jnp.float32)
    if flag is not None:
        weights = weights * batch[flag].astype(jnp.float32)[:, None]
    return weights


def masked_frame_mean(per_frame, weights):
    """Mean of per-frame values [B, N] over frames with weight 1 (0 when there are none)."""
    return jnp.sum(per_frame * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def squared_error_per_frame(prediction, target, scale: float = 1.0):
    """Mean squared error per frame over the trailing axes, in (scale * unit)^2."""
    difference = (prediction - target) * scale
    return jnp.mean(jnp.square(difference).reshape(difference.shape[:2] + (-1,)), axis=-1)


def reconstruction_losses(outputs, batch, config):
    """L_n, L_exp, L_r, L_t and L_rec (Eq. 5). The paper calls the expression term L_e; we call it
    L_exp to tell it apart from the emotional guidance loss L_e."""
    scale = config.vertex_scale
    neutral_weights = _frame_weights(batch, "has_neutral")
    pose_weights = _frame_weights(batch, "has_head_pose")
    frame_weights = _frame_weights(batch)
    losses = {
        "neutral": masked_frame_mean(
            squared_error_per_frame(outputs["neutral"], batch["neutral_vertices"], scale),
            neutral_weights,
        ),
        "expression": masked_frame_mean(
            squared_error_per_frame(outputs["expression"], batch["vertices"], scale), frame_weights
        ),
        "rotation": masked_frame_mean(
            squared_error_per_frame(outputs["rotation"], batch["rotation"]), pose_weights
        ),
        "translation": masked_frame_mean(
            squared_error_per_frame(
                outputs["translation"][..., None], batch["translation"][..., None], scale
            ),
            pose_weights,
        ),
    }
    losses["reconstruction"] = (
        losses["neutral"]
        + losses["expression"]
        + config.lambda_r * losses["rotation"]
        + config.lambda_t * losses["translation"]
    )
    return losses


def estimator_log_likelihood(estimates, factors, weights):
    """Mean log q(y|x) over real frames, summed over the three pairs: what the estimators maximise."""
    total = 0.0
    for x_name, y_name in MI_PAIRS:
        mean, log_variance = estimates[f"{x_name}->{y_name}"]
        total = total + masked_frame_mean(
            gaussian_log_likelihood(factors[y_name], mean, log_variance), weights
        )
    return total


def vclub_upper_bound(estimates, factors, weights, key):
    """Sampled vCLUB (Cheng et al., 2020): log q(y_i|x_i) - log q(y_j|x_i) with j a random other
    frame of the batch, averaged over real frames; summed over the pairs of Eq. 6."""
    flat_weights = weights.reshape(-1)
    permutation = jax.random.permutation(key, flat_weights.shape[0])
    negative_weights = flat_weights * flat_weights[permutation]
    bounds = {}
    for x_name, y_name in MI_PAIRS:
        mean, log_variance = estimates[f"{x_name}->{y_name}"]
        y = factors[y_name].reshape(-1, factors[y_name].shape[-1])
        mean, log_variance = mean.reshape(y.shape), log_variance.reshape(y.shape)
        positive = gaussian_log_likelihood(y, mean, log_variance)
        negative = gaussian_log_likelihood(y[permutation], mean, log_variance)
        bound = jnp.sum(positive * flat_weights) / jnp.maximum(flat_weights.sum(), 1.0) - jnp.sum(
            negative * negative_weights
        ) / jnp.maximum(negative_weights.sum(), 1.0)
        bounds[f"mi_{x_name}_{y_name}"] = bound
    bounds["mi"] = sum(bounds.values())
    return bounds


def emotion_classification_loss(mixture, batch, neutral_clips: bool = True):
    """L_cls = ||y_e - y_e_bar||^2 per clip, averaged over clips that have labels (and are
    emotional recordings, unless `neutral_clips`)."""
    weights = batch["clip_mask"].astype(jnp.float32) * batch["has_emotion"].astype(jnp.float32)
    if not neutral_clips:
        weights = weights * batch["emotional"].astype(jnp.float32)
    per_clip = jnp.sum(jnp.square(mixture - batch["emotion"]), axis=-1)
    return jnp.sum(per_clip * weights) / jnp.maximum(weights.sum(), 1.0)


def emotional_speech_loss(emotional_logit, batch):
    """Binary cross-entropy of "spoken with emotion" (the emotional take, not the neutral one)
    per clip: our addition to L_e, docs/paper-notes.md. A mixture label cannot say "no emotion",
    so without it nothing but the face tells e that a neutral recording is neutral."""
    weights = batch["clip_mask"].astype(jnp.float32)
    target = batch["emotional"].astype(jnp.float32)
    per_clip = optax.sigmoid_binary_cross_entropy(emotional_logit, target)
    return jnp.sum(per_clip * weights) / jnp.maximum(weights.sum(), 1.0)


def diversity_loss(first, second, noise_first, noise_second, batch, config):
    """L_d (Eq. 7): output distance over noise distance, per frame; capped at `diversity_cap` so that
    maximising it cannot run away (as the mode-seeking losses it follows do)."""
    scale = config.vertex_scale

    def distance(a, b, s=1.0):
        return jnp.mean(jnp.abs((a - b) * s).reshape(a.shape[:2] + (-1,)), axis=-1)

    numerator = (
        config.lambda_f * distance(first["expression"], second["expression"], scale)
        + distance(first["rotation"], second["rotation"])
        + distance(first["translation"], second["translation"], scale)
    )
    denominator = distance(noise_first, noise_second) + 1e-6
    per_frame = jnp.minimum(numerator / denominator, config.diversity_cap)
    return masked_frame_mean(per_frame, _frame_weights(batch))


def adversarial_losses(real_logits, fake_logits, clip_weights, kind: str):
    """(discriminator loss, generator loss) for 'nonsaturating' or 'lsgan' (the paper's printed
    formula is garbled; see docs/paper-notes.md)."""

    def mean(values):
        return jnp.sum(values * clip_weights) / jnp.maximum(clip_weights.sum(), 1.0)

    if kind == "nonsaturating":
        discriminator = mean(jax.nn.softplus(-real_logits)) + mean(jax.nn.softplus(fake_logits))
        generator = mean(jax.nn.softplus(-fake_logits))
    elif kind == "lsgan":
        discriminator = mean(jnp.square(real_logits - 1)) + mean(jnp.square(fake_logits))
        generator = mean(jnp.square(fake_logits - 1))
    else:
        raise ValueError(f"unknown GAN loss '{kind}' (nonsaturating, lsgan)")
    return discriminator, generator


def auxiliary_losses(identity_logits, mixture, batch):
    """D's auxiliary heads: identity cross-entropy (known training subjects) and emotion L2."""
    subject = batch["subject"]
    known = (subject >= 0).astype(jnp.float32) * batch["clip_mask"].astype(jnp.float32)
    log_probabilities = jax.nn.log_softmax(identity_logits, axis=-1)
    picked = jnp.take_along_axis(log_probabilities, jnp.maximum(subject, 0)[:, None], axis=-1)[:, 0]
    identity = -jnp.sum(picked * known) / jnp.maximum(known.sum(), 1.0)
    return identity, emotion_classification_loss(mixture, batch)


def generator_objective(terms, auxiliary_identity, auxiliary_emotion, config):
    """What the generator minimises (Sec. 2.2), from its terms: (L_e, total) with

        L_e   = mi_weight L_mi (Eq. 6) + L_cls + lambda_emotional L_emotional
        total = L_rec (Eq. 5) + lambda_e L_e - lambda_d L_d (Eq. 7)
                + lambda_g (L_adv + D's identity and emotion terms on the generated faces)

    L_emotional ("spoken with emotion") is our addition, 0 in the paper (docs/paper-notes.md).
    `terms` holds reconstruction, mi, classification, emotional_speech, diversity, adversarial."""
    guidance = (
        config.mi_weight * terms["mi"]
        + terms["classification"]
        + config.lambda_emotional * terms["emotional_speech"]
    )
    total = (
        terms["reconstruction"]
        + config.lambda_e * guidance
        - config.lambda_d * terms["diversity"]
        + config.lambda_g * (terms["adversarial"] + auxiliary_identity + auxiliary_emotion)
    )
    return guidance, total
