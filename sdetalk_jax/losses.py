"""SDETalk's losses (paper Sec. 2.2). Every term is masked: padded frames and padding rows count for
nothing, so a clip's loss does not depend on how much padding its batch has."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from sdetalk_jax.models.ops import (
    coordinate_rows,
    gaussian_log_likelihood,
    gaussian_smooth,
    masked_mean,
)
from sdetalk_jax.models.vclub import MI_PAIRS


def _frame_weights(batch, flag: str | None = None):
    weights = batch["frame_mask"].astype(jnp.float32)
    if flag is not None:
        weights = weights * batch[flag].astype(jnp.float32)[:, None]
    return weights


def masked_frame_mean(per_frame, weights):
    """Mean of per-frame values [B, N] over frames with weight 1 (0 when there are none)."""
    return jnp.sum(per_frame * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def mean_per_frame(values):
    """[B, N, ...] -> [B, N]: the mean over the trailing axes, as a product with a vector (1/count).
    XLA's CPU backend reduces the rows of a [frames, V*3] difference of squares 2.2x slower than
    it multiplies them by a vector (benchmarks/vertex_layers.py). In float32 whatever `train.matmul_precision`
    asks: a loss is a sum, not a matmul."""
    rows = values.reshape(values.shape[:2] + (-1,))
    weights = jnp.full((rows.shape[-1],), 1.0 / rows.shape[-1], rows.dtype)
    return jnp.matmul(rows, weights, precision=jax.lax.Precision.HIGHEST)


def squared_error_per_frame(prediction, target, scale: float = 1.0):
    """Mean squared error per frame over the trailing axes, in (scale * unit)^2."""
    return mean_per_frame(jnp.square((prediction - target) * scale))


def rotation_error_per_frame(rotation, target, template, config):
    """The rotation term's per-frame error: the mean squared distance that the difference between
    the two rotations moves the subject's template vertices, per vertex (summed over x, y, z), in
    (vertex_scale * unit)^2 (mm^2 for data in metres): 3 times the per-coordinate mean of L_n and
    L_exp for the same displacement (docs/paper-notes.md). rotation, target [B, N, 3, 3];
    template [B, V*3]."""
    vertices = template.reshape(template.shape[0], -1, 3) * config.vertex_scale
    # mean_v |v D|^2 = trace(D^T M D) with M the template's second moment [3, 3]: the cost does
    # not grow with the vertex count.
    moment = jnp.einsum("bvi,bvj->bij", vertices, vertices) / vertices.shape[1]
    difference = rotation - target
    return jnp.einsum("bnij,bik,bnkj->bn", difference, moment, difference)


def reconstruction_losses(outputs, batch, config):
    """L_n, L_exp, L_r, L_t and L_rec (Eq. 5). The paper calls the expression term L_e; we call it
    L_exp to tell it apart from the emotional guidance loss L_e. L_r and L_t are taken on the
    sample's head (`loss.head_reconstruction = "sample"`, the paper) or on the head at z = 0
    ("mean", ours: docs/paper-notes.md), where `outputs` has it (evaluation's outputs are at z = 0
    already)."""
    scale = config.vertex_scale
    rotation, translation = outputs.rotation, outputs.translation
    if config.head_reconstruction == "mean" and outputs.mean_rotation is not None:
        rotation, translation = outputs.mean_rotation, outputs.mean_translation
    neutral_weights = _frame_weights(batch, "has_neutral")
    pose_weights = _frame_weights(batch, "has_head_pose")
    frame_weights = _frame_weights(batch)
    losses = {
        "neutral": masked_frame_mean(
            squared_error_per_frame(outputs.neutral, batch["neutral_vertices"], scale),
            neutral_weights,
        ),
        "expression": masked_frame_mean(
            squared_error_per_frame(outputs.expression, batch["vertices"], scale), frame_weights
        ),
        "rotation": masked_frame_mean(
            rotation_error_per_frame(rotation, batch["rotation"], batch["template"], config),
            pose_weights,
        ),
        "translation": masked_frame_mean(
            squared_error_per_frame(translation[..., None], batch["translation"][..., None], scale),
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


def _rotation_axis_vector(rotation):
    """axis * sin(angle) [..., 3] of rotations [..., 3, 3], from their antisymmetric part: x is
    nodding (pitch), y shaking (yaw), z tilting (roll), as in `metrics.head_rotation_vectors`."""
    return 0.5 * jnp.stack(
        [
            rotation[..., 2, 1] - rotation[..., 1, 2],
            rotation[..., 0, 2] - rotation[..., 2, 0],
            rotation[..., 1, 0] - rotation[..., 0, 1],
        ],
        axis=-1,
    )


def head_motion_envelopes(rotation, weights, speed_width: float, size_width: float):
    """(speed [B, N-1, 3], its weights [B, N-1], size [B, N, 3]): per axis (nod, shake, tilt),
    the head's angular speed (radians per frame) and its RMS angle from the clip's mean pose
    (radians), smoothed over time with Gaussians of `speed_width` and `size_width` frames. Speed
    does not see the direction of a movement at any width; the size does not once its width is
    more than a movement's half period."""
    relative = jnp.einsum("bnij,bnkj->bnik", rotation[:, 1:], rotation[:, :-1])
    velocity = _rotation_axis_vector(relative)
    speed_weights = weights[:, 1:] * weights[:, :-1]
    # sqrt(v^2 + eps^2): |v| with a gradient at rest
    speed = gaussian_smooth(jnp.sqrt(jnp.square(velocity) + 1e-10), speed_weights, speed_width)
    angle = _rotation_axis_vector(rotation)
    deviation = angle - masked_mean(angle, weights)[:, None]
    size = jnp.sqrt(gaussian_smooth(jnp.square(deviation), weights, size_width) + 1e-10)
    return speed, speed_weights, size


def head_style_loss(rotation, target, batch, config):
    """Our addition (docs/paper-notes.md), weight `loss.lambda_head_style`: the generated head
    moves as fast and as far as the speaker's, per axis and moment by moment, in a direction of
    its own. The squared error of the smoothed speed and size envelopes of
    `head_motion_envelopes`, each relative to the speaker's mean square, summed. Per-frame L2
    cannot ask for this: where the direction of a movement is not in the speech, its optimum is a
    still head."""
    weights = _frame_weights(batch, "has_head_pose")
    widths = (config.head_speed_width_frames, config.head_size_width_frames)
    speed, speed_weights, size = head_motion_envelopes(rotation, weights, *widths)
    true_speed, _, true_size = head_motion_envelopes(target, weights, *widths)
    return _relative_envelope_error(speed, true_speed, speed_weights) + _relative_envelope_error(
        size, true_size, weights
    )


def head_gain_loss(gain, target, batch, config, noise_mean_abs: float):
    """Our addition (docs/paper-notes.md), weight `loss.lambda_head_gain`: the head noise path's
    expected angular speed per axis, gain * E|n| (`noise_mean_abs`, from
    `head_motion.head_noise_mean_abs`), against the speaker's,
    both smoothed over `head_gain_width_frames`, as the relative squared error of
    `head_style_loss`. The style term judges one sample, whose speed is gain * |n|, so its gradient
    for the gain is as noisy as |n|; this term regresses the gain on how fast the speaker's head
    moves without drawing any noise. gain [B, N, 3] is the angular speed per noise unit of the step
    into each frame (`integrate_velocity`)."""
    weights = _frame_weights(batch, "has_head_pose")
    width = config.head_gain_width_frames
    true_speed, speed_weights, _ = head_motion_envelopes(target, weights, width, width)
    expected = gaussian_smooth(gain[:, 1:] * noise_mean_abs, speed_weights, width)
    return _relative_envelope_error(expected, true_speed, speed_weights)


def _relative_envelope_error(generated, true, frame_weights):
    """Squared error of two [B, N, 3] envelopes summed over axes, over the true one's mean square."""
    error = masked_frame_mean(jnp.sum(jnp.square(generated - true), -1), frame_weights)
    scale = masked_frame_mean(jnp.sum(jnp.square(true), -1), frame_weights)
    return error / jnp.maximum(scale, 1e-12)


def estimator_log_likelihood(estimates, factors, weights):
    """Mean log q(y|x) over real frames, summed over the three pairs: what the estimators maximise."""
    total = 0.0
    for x_name, y_name in MI_PAIRS:
        mean, log_variance = estimates[f"{x_name}->{y_name}"]
        total = total + masked_frame_mean(
            gaussian_log_likelihood(factors[y_name], mean, log_variance), weights
        )
    return total


def expected_log_likelihood(y, weights, mean, log_variance):
    """Mean over the real frames j (weights [M]) of log q(y_j | x) for each Gaussian q(.|x)
    (mean, log_variance [..., D]), exactly, from the first two moments of y [M, D]."""
    count = jnp.maximum(weights.sum(), 1.0)
    first = jnp.sum(y * weights[:, None], 0) / count
    second = jnp.sum(jnp.square(y) * weights[:, None], 0) / count
    squared = second - 2 * mean * first + jnp.square(mean)
    return -0.5 * jnp.sum(squared * jnp.exp(-log_variance) + log_variance, axis=-1)


def log_likelihood_per_speaker(y, mean, log_variance):
    """log q(y_i | p_s) [M, S] for frames y [M, D] under each speaker's Gaussian (mean,
    log_variance [S, D]), as matrix products rather than an [M, S, D] array."""
    precision = jnp.exp(-log_variance)
    squared = (
        jnp.square(y) @ precision.T
        - 2 * y @ (mean * precision).T
        + jnp.sum(jnp.square(mean) * precision, -1)
    )
    return -0.5 * (squared + jnp.sum(log_variance, -1))


def vclub_upper_bound(estimates, factors, weights, identity_estimates):
    """vCLUB (Cheng et al., 2020), Eq. 6, summed over its three pairs: per real frame i,
    log q(y_i | x_i) minus the mean of log q(y | x) over the marginal, averaged over real frames.

    The marginal is taken in closed form, with no sampling, so that padding cannot change it:
    for pairs (p, y) it is over every training speaker's identity p_s (`identity_estimates`:
    q(.|p_s) [S, D] each), because a batch of one speaker (global batch 1) would compare p with
    itself and the two terms would cancel; for (c, e) it is over the real frames of the batch
    (`expected_log_likelihood`)."""
    flat_weights = weights.reshape(-1)
    count = jnp.maximum(flat_weights.sum(), 1.0)
    bounds = {}
    for x_name, y_name in MI_PAIRS:
        mean, log_variance = estimates[f"{x_name}->{y_name}"]
        y = factors[y_name].reshape(-1, factors[y_name].shape[-1])
        mean, log_variance = mean.reshape(y.shape), log_variance.reshape(y.shape)
        positive = gaussian_log_likelihood(y, mean, log_variance)
        if x_name == "identity":
            negative = jnp.mean(
                log_likelihood_per_speaker(y, *identity_estimates[f"{x_name}->{y_name}"]), axis=1
            )
        else:
            negative = expected_log_likelihood(y, flat_weights, mean, log_variance)
        bound = jnp.sum((positive - negative) * flat_weights) / count
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


def classification_terms(outputs, batch, neutral_clips: bool = True):
    """L_cls of y_e (`outputs.mixture`) and, with `model.emotion_statistics` (y_e read from the
    voice statistics), also of e's own classifier (`outputs.embedding_mixture`): the term by
    which L_cls trains e in the paper, kept so that e stays emotional for G."""
    total = emotion_classification_loss(outputs.mixture, batch, neutral_clips)
    if outputs.embedding_mixture is not None:
        total = total + emotion_classification_loss(outputs.embedding_mixture, batch, neutral_clips)
    return total


def emotional_speech_loss(emotional_logit, batch):
    """Binary cross-entropy of "spoken with emotion" (the emotional take, not the neutral one)
    per clip: our addition to L_e, docs/paper-notes.md. A mixture label cannot say "no emotion",
    so without it nothing but the face tells e that a neutral recording is neutral."""
    weights = batch["clip_mask"].astype(jnp.float32)
    target = batch["emotional"].astype(jnp.float32)
    per_clip = optax.sigmoid_binary_cross_entropy(emotional_logit, target)
    return jnp.sum(per_clip * weights) / jnp.maximum(weights.sum(), 1.0)


def distance_vertices(rows, most: int):
    """Coordinate rows [..., 3, V] of at most `most` of the V vertices, evenly strided (all of
    them where `most` is 0 or at least V): what the rotations' distance in L_d is measured on.
    How far a rotation moves a face's vertices varies smoothly over the face, so a strided
    subset gives nearly its mean (benchmarks/vertex_layers.py measures it at BIWI size), and the
    [frames, 3, V] rotated template is the size of the subset, not of the mesh."""
    vertices = rows.shape[-1]
    if most <= 0 or most >= vertices:
        return rows
    return rows[..., :: -(-vertices // most)]


def diversity_loss(first, second, noise_first, noise_second, batch, config):
    """L_d (Eq. 7): output distance over noise distance, per frame; capped at `diversity_cap` so that
    maximising it cannot run away (as the mode-seeking losses it follows do). The rotations'
    distance is how far apart they put the template's vertices (mean absolute coordinate, mm),
    the units of the other two distances. The head's part counts only for clips with head pose;
    on clips without it the expression distance is weighted by `lambda_f_without_head_pose`
    instead of lambda_f (docs/paper-notes.md).
    first, second: `GeneratorOutputs` of the two noise draws."""
    scale = config.vertex_scale

    def distance(a, b, s=1.0):
        return mean_per_frame(jnp.abs((a - b) * s))

    # the template as coordinate rows [3, V], as `pose_rows` poses faces (faster on a CPU)
    template_rows = distance_vertices(
        coordinate_rows(batch["template"] * scale), config.rotation_distance_vertices
    )
    moved = jnp.einsum("bnij,biv->bnjv", first.rotation - second.rotation, template_rows)
    rotation_distance = mean_per_frame(jnp.abs(moved))
    head = rotation_distance + distance(first.translation, second.translation, scale)
    has_pose = batch["has_head_pose"][:, None]
    expression_weight = jnp.where(has_pose, config.lambda_f, config.lambda_f_without_head_pose)
    numerator = expression_weight * distance(first.expression, second.expression, scale)
    numerator = numerator + has_pose.astype(jnp.float32) * head
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


def auxiliary_losses(identity_logits, mixture, batch, neutral_clips: bool = True):
    """D's auxiliary heads: identity cross-entropy (known training subjects) and emotion L2 (over
    the clips L_cls counts: `loss.classify_neutral_clips`)."""
    subject = batch["subject"]
    known = (subject >= 0).astype(jnp.float32) * batch["clip_mask"].astype(jnp.float32)
    log_probabilities = jax.nn.log_softmax(identity_logits, axis=-1)
    picked = jnp.take_along_axis(log_probabilities, jnp.maximum(subject, 0)[:, None], axis=-1)[:, 0]
    identity = -jnp.sum(picked * known) / jnp.maximum(known.sum(), 1.0)
    return identity, emotion_classification_loss(mixture, batch, neutral_clips)


def generator_objective(terms, auxiliary_identity, auxiliary_emotion, config):
    """What the generator minimises (Sec. 2.2), from its terms: (L_e, total) with

        L_e   = mi_weight L_mi (Eq. 6) + L_cls + lambda_emotional L_emotional
        total = L_rec (Eq. 5) + lambda_e L_e - lambda_d L_d (Eq. 7)
                + lambda_g (L_adv + D's identity and emotion terms on the generated faces)
                + lambda_head_style L_head_style + lambda_head_gain L_head_gain
                + lambda_statistics ||W_s||^2

    L_emotional ("spoken with emotion"), L_head_style, L_head_gain and the ridge penalty on the
    voice statistics' readout W_s (`model.emotion_statistics`) are our additions, 0 in the paper
    (docs/paper-notes.md). `terms` holds reconstruction, mi, classification, emotional_speech,
    diversity, adversarial, head_style, head_gain, statistics_penalty."""
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
        + config.lambda_head_style * terms["head_style"]
        + config.lambda_head_gain * terms["head_gain"]
        + config.lambda_statistics * terms["statistics_penalty"]
    )
    return guidance, total
