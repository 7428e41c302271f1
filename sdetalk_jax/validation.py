"""Validation during training: per-batch sums of the validation metrics, computed in the jitted
function over the mesh, and their totals over a split.

The errors are those of the mean prediction (z = 0, the centre of the diversified embedding), in mm
as the `val/` records of metrics.jsonl report them; `sdetalk_jax.evaluate` computes the full set of
metrics of a finished run (LVE, FDD, head motion) in float64.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from sdetalk_jax import losses, metrics, optim, parallel
from sdetalk_jax.data.pipeline import model_batch


def evaluation_sums(networks, loss_config, params, batch, batch_index, mean_mixture):
    """Per-batch sums for validation: vertex errors (model, template, neutral-only), emotion
    error (model, mean mixture), head-motion difference between two noise keys.

    Errors are those of the mean prediction (z = 0, the centre of the diversified embedding); the
    diversity is measured between two samples with random z."""
    key_1, key_2 = jax.random.split(jax.random.fold_in(jax.random.key(1), batch_index))
    shape = batch["frame_mask"].shape + (networks.config.hidden,)
    mean = networks.generator.apply({"params": params}, batch, jnp.zeros(shape))
    first = networks.generator.apply({"params": params}, batch, jax.random.normal(key_1, shape))
    second = networks.generator.apply({"params": params}, batch, jax.random.normal(key_2, shape))
    frames = batch["frame_mask"].astype(jnp.float32)
    clips = batch["clip_mask"].astype(jnp.float32) * batch["has_emotion"].astype(jnp.float32)

    emotional = batch["emotional"].astype(jnp.float32)[:, None]
    kinds = {
        "": frames,
        "/emotional_clips": frames * emotional,
        "/neutral_clips": frames * (1 - emotional),
    }

    def vertex_error_mm(prediction, kind=""):
        distances = metrics.vertex_distances(prediction, batch["vertices"])
        per_frame = jnp.mean(distances, axis=-1) * loss_config.vertex_scale
        return jnp.sum(per_frame * kinds[kind])

    template = jnp.broadcast_to(batch["template"][:, None], batch["vertices"].shape)
    # Angle between the two samples' rotations from the Frobenius norm of their difference,
    # ||R1 - R2|| = 2 sqrt(2) sin(angle / 2): well conditioned for the small angles this is
    # (the arccos of the trace loses most digits near the identity).
    chord = jnp.linalg.norm(
        (first.rotation - second.rotation).reshape(frames.shape + (9,)), axis=-1
    )
    rotation_difference = jnp.degrees(
        2 * jnp.arcsin(jnp.clip(chord / (2 * np.sqrt(2.0)), 0.0, 1.0))
    )
    terms = losses.reconstruction_losses(mean, batch, loss_config)
    sums = {"frames" + kind: jnp.sum(weights) for kind, weights in kinds.items()}
    for kind in kinds:  # split by clip kind: G must add an expression to emotional speech only
        sums["vertex_error_mm" + kind] = vertex_error_mm(mean.expression, kind)
        sums["neutral_vertex_error_mm" + kind] = vertex_error_mm(mean.neutral, kind)
    return {
        **sums,
        "clips": jnp.sum(clips),
        "sampled_vertex_error_mm": vertex_error_mm(first.expression),
        "template_vertex_error_mm": vertex_error_mm(template),
        "emotion_error": jnp.sum(jnp.sum(jnp.square(mean.mixture - batch["emotion"]), -1) * clips),
        "mean_mixture_emotion_error": jnp.sum(
            jnp.sum(jnp.square(mean_mixture - batch["emotion"]), -1) * clips
        ),
        "head_rotation_key_difference_deg": jnp.sum(rotation_difference * frames),
        "reconstruction": terms["reconstruction"] * jnp.sum(frames),
    }


def compiled_evaluation(
    networks, loss_config, placement: parallel.Placement, matmul_precision: str = "default"
):
    r = placement.replicated
    sums = functools.partial(evaluation_sums, networks, loss_config)
    return jax.jit(
        optim.with_matmul_precision(sums, matmul_precision),
        in_shardings=(r, placement.batch, r, r),
        out_shardings=r,
    )


def evaluate_split(
    dataset, networks, config, params, eval_fn, buckets, mean_mixture, placement,
    between_batches=None,
) -> dict:  # fmt: skip
    """Validation metrics of a split: each process evaluates its rows of every batch, the sums are
    reduced over the mesh by the jitted function. `between_batches` is called by every process
    before each batch and may raise to stop."""
    totals: dict[str, float] = {}
    for batch_index, batch in dataset.batches(
        global_batch=config.train.global_batch, buckets=buckets, seed=0, epoch=0, shuffle=False,
        process_index=jax.process_index(), process_count=jax.process_count(),
    ):  # fmt: skip
        if between_batches is not None:
            between_batches()
        prepared = placement.shard_batch(
            model_batch(batch, batch["subject"], networks.config.num_subjects)
        )
        sums = eval_fn(params, prepared, placement.replicate(np.int32(batch_index)), mean_mixture)
        for name, value in parallel.to_host(sums).items():
            totals[name] = totals.get(name, 0.0) + float(value)
    clips = max(totals.pop("clips"), 1.0)
    frames = {
        name: max(totals.pop(name), 1.0) for name in list(totals) if name.startswith("frames")
    }
    results = {}
    for name, value in totals.items():
        kind = name[name.index("/") :] if "/" in name else ""
        results[name] = value / (clips if "emotion_error" in name else frames["frames" + kind])
    return results
