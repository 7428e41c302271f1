"""Training SDETalk: `python -m sdetalk_jax.train --config configs/biwi.py --workdir runs/biwi`.

One jitted step alternates the three updates of Sec. 2.2: the vCLUB estimators (maximum likelihood),
the consistency discriminator, then the generator (L_rec + lambda_e (L_mi + L_cls) - lambda_d L_d +
lambda_g L_adv). Every random draw comes from `fold_in(training key, step)`, split by purpose, so a
resumed run draws exactly what an uninterrupted one would. Running the same command again resumes
from the last checkpoint, data position included.
"""

from __future__ import annotations

import functools
import json
import math
import os
import signal
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sdetalk_jax import losses, parallel, runtime
from sdetalk_jax.data import batching
from sdetalk_jax.data.pipeline import ClipDataset
from sdetalk_jax.inference import ASSETS, Assets

# Batch keys the networks read; the rest (raw audio, ...) stays on the host.
MODEL_KEYS = (
    "context", "mel", "template", "vertices", "neutral_vertices", "rotation", "translation",
    "emotion", "subject", "has_head_pose", "has_emotion", "has_neutral", "emotional", "frame_mask",
    "clip_mask",
)  # fmt: skip


class TrainingDiverged(RuntimeError):
    """A loss became NaN or Inf; the message names the step and the losses."""


# Purposes of randomness; each gets its own key, folded from its own seed (docs/scaling.md).
_INIT_PURPOSE, _NOISE_PURPOSE = 0, 1


def purpose_seeds(train_config) -> dict[str, int]:
    """The seed of each source of randomness: train.seed unless pinned by train.<purpose>_seed."""
    seeds = {}
    for purpose in ("data", "init", "noise"):
        pinned = train_config.get(f"{purpose}_seed", -1)
        seeds[purpose] = (
            int(pinned) if pinned is not None and pinned >= 0 else int(train_config.seed)
        )
    return seeds


def purpose_keys(seeds: dict[str, int]) -> dict:
    """One key per purpose, so a study can vary one source of randomness and hold the others:
    `init` (parameters) and `noise` (z1, z2 and the vCLUB negatives, per step by fold_in). The data
    order uses the integer data seed directly (`batching.epoch_plan`)."""
    return {
        "init": jax.random.fold_in(jax.random.key(seeds["init"]), _INIT_PURPOSE),
        "noise": jax.random.fold_in(jax.random.key(seeds["noise"]), _NOISE_PURPOSE),
    }


def prepare_batch(batch: dict, num_subjects: int) -> dict:
    """The model's inputs of a (local) batch, as numpy: the keys the networks read and the
    identity one-hot (an unseen subject, index -1, gets zeros)."""
    out = {key: np.asarray(batch[key]) for key in MODEL_KEYS}
    subject = out["subject"]
    out["subject_onehot"] = (subject[:, None] == np.arange(num_subjects)[None]).astype(np.float32)
    return out


def real_faces(batch):
    """Ground-truth posed faces f_bar = f_bar^e R_bar + T_bar (Eq. 4)."""
    faces = batch["vertices"].reshape(batch["vertices"].shape[:2] + (-1, 3))
    posed = (
        jnp.einsum("bnvi,bnij->bnvj", faces, batch["rotation"]) + batch["translation"][:, :, None]
    )
    return posed.reshape(batch["vertices"].shape)


def make_train_step(networks: runtime.Networks, loss_config):
    def step_fn(state, batch, noise_key, tx):
        params = state["params"]
        step_key = jax.random.fold_in(noise_key, state["step"])  # the same draws after a resume
        noise_key_1, noise_key_2, permutation_key = jax.random.split(step_key, 3)
        # One dropout mask per step, the same for both noise samples: L_d then compares what the
        # noise changes, not what dropout does.
        dropout_rngs = {"dropout": jax.random.fold_in(step_key, 3)}

        def generate(generator_params, noise):
            return networks.generator.apply(
                {"params": generator_params}, batch, noise, deterministic=False, rngs=dropout_rngs
            )

        shape = batch["frame_mask"].shape + (networks.config.hidden,)
        noise_1 = jax.random.normal(noise_key_1, shape)
        noise_2 = jax.random.normal(noise_key_2, shape)
        frame_weights = batch["frame_mask"].astype(jnp.float32)
        clip_weights = batch["clip_mask"].astype(jnp.float32)

        # 1. vCLUB estimators: maximise log q(y|x) on the current (fixed) factors.
        outputs = jax.lax.stop_gradient(generate(params["generator"], noise_1))
        factors = losses.per_frame_factors(outputs)

        def estimator_loss(estimator_params):
            estimates = networks.estimators.apply({"params": estimator_params}, factors)
            return -losses.estimator_log_likelihood(estimates, factors, frame_weights)

        estimator_nll, grads = jax.value_and_grad(estimator_loss)(params["estimators"])
        updates, estimator_opt = tx.update(
            grads, state["opt_state"]["estimators"], params["estimators"]
        )
        estimator_params = optax.apply_updates(params["estimators"], updates)

        # 2. Discriminator: real (e, f_bar) against fake (e, f), plus its identity / emotion heads on real.
        real = real_faces(batch)

        def discriminator_loss(discriminator_params):
            def apply(faces):
                return networks.discriminator.apply(
                    {"params": discriminator_params},
                    outputs["embedding"],
                    faces,
                    batch["template"],
                    batch["frame_mask"],
                )

            real_logits, identity_logits, mixture = apply(real)
            fake_logits, _, _ = apply(outputs["posed"])
            adversarial, _ = losses.adversarial_losses(
                real_logits, fake_logits, clip_weights, loss_config.gan
            )
            identity, emotion = losses.auxiliary_losses(identity_logits, mixture, batch)
            return adversarial + identity + emotion, (adversarial, identity, emotion)

        (discriminator_total, (d_adversarial, d_identity, d_emotion)), grads = jax.value_and_grad(
            discriminator_loss, has_aux=True
        )(params["discriminator"])
        updates, discriminator_opt = tx.update(
            grads, state["opt_state"]["discriminator"], params["discriminator"]
        )
        discriminator_params = optax.apply_updates(params["discriminator"], updates)

        # 3. Generator.
        def generator_loss(generator_params):
            first = generate(generator_params, noise_1)
            second = generate(generator_params, noise_2)
            terms = losses.reconstruction_losses(first, batch, loss_config)
            first_factors = losses.per_frame_factors(first)
            estimates = networks.estimators.apply({"params": estimator_params}, first_factors)
            terms.update(
                losses.vclub_upper_bound(estimates, first_factors, frame_weights, permutation_key)
            )
            terms["classification"] = losses.emotion_classification_loss(
                first["mixture"], batch, loss_config.classify_neutral_clips
            )
            terms["diversity"] = losses.diversity_loss(
                first, second, noise_1, noise_2, batch, loss_config
            )
            fake_logits, identity_logits, mixture = networks.discriminator.apply(
                {"params": discriminator_params},
                jax.lax.stop_gradient(first["embedding"]),
                first["posed"],
                batch["template"],
                batch["frame_mask"],
            )
            _, terms["adversarial"] = losses.adversarial_losses(
                jnp.zeros_like(fake_logits), fake_logits, clip_weights, loss_config.gan
            )
            aux_identity, aux_emotion = losses.auxiliary_losses(identity_logits, mixture, batch)
            terms["emotional_speech"] = losses.emotional_speech_loss(
                first["emotional_logit"], batch
            )
            terms["guidance"] = (  # L_e, plus our "spoken with emotion" term (0 in the paper)
                loss_config.mi_weight * terms["mi"]
                + terms["classification"]
                + loss_config.lambda_emotional * terms["emotional_speech"]
            )
            total = (
                terms["reconstruction"]
                + loss_config.lambda_e * terms["guidance"]
                - loss_config.lambda_d * terms["diversity"]
                + loss_config.lambda_g * (terms["adversarial"] + aux_identity + aux_emotion)
            )
            terms["total"] = total
            return total, terms

        (_, terms), grads = jax.value_and_grad(generator_loss, has_aux=True)(params["generator"])
        updates, generator_opt = tx.update(
            grads, state["opt_state"]["generator"], params["generator"]
        )
        generator_params = optax.apply_updates(params["generator"], updates)

        new_state = {
            "step": state["step"] + 1,
            "params": {
                "generator": generator_params,
                "discriminator": discriminator_params,
                "estimators": estimator_params,
            },
            "opt_state": {
                "generator": generator_opt,
                "discriminator": discriminator_opt,
                "estimators": estimator_opt,
            },
        }
        metrics = {
            **terms,
            "estimator_nll": estimator_nll,
            "discriminator": discriminator_total,
            "discriminator_adversarial": d_adversarial,
            "discriminator_identity": d_identity,
            "discriminator_emotion": d_emotion,
        }
        return new_state, metrics

    return step_fn


def compiled_train_step(
    networks, config, placement: parallel.Placement, noise_key, total_steps: int
):
    """The training step jitted over the mesh: state replicated, batch split along its rows.
    (state, batch) -> (state, metrics); the state's buffers are donated. `total_steps` is the
    length of the learning-rate schedule, if it decays."""
    tx = runtime.optimizer(config, total_steps)
    step_fn = functools.partial(make_train_step(networks, config.loss), noise_key=noise_key, tx=tx)
    return jax.jit(
        step_fn,
        in_shardings=(placement.replicated, placement.batch),
        out_shardings=(placement.replicated, placement.replicated),
        donate_argnums=(0,),
    )


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
        difference = (prediction - batch["vertices"]).reshape(prediction.shape[:2] + (-1, 3))
        per_frame = (
            jnp.mean(jnp.linalg.norm(difference, axis=-1), axis=-1) * loss_config.vertex_scale
        )
        return jnp.sum(per_frame * kinds[kind])

    template = jnp.broadcast_to(batch["template"][:, None], batch["vertices"].shape)
    # Angle between the two samples' rotations from the Frobenius norm of their difference,
    # ||R1 - R2|| = 2 sqrt(2) sin(angle / 2): well conditioned for the small angles this is
    # (the arccos of the trace loses most digits near the identity).
    chord = jnp.linalg.norm(
        (first["rotation"] - second["rotation"]).reshape(frames.shape + (9,)), axis=-1
    )
    rotation_difference = jnp.degrees(
        2 * jnp.arcsin(jnp.clip(chord / (2 * np.sqrt(2.0)), 0.0, 1.0))
    )
    terms = losses.reconstruction_losses(mean, batch, loss_config)
    sums = {"frames" + kind: jnp.sum(weights) for kind, weights in kinds.items()}
    for kind in kinds:  # split by clip kind: G must add an expression to emotional speech only
        sums["vertex_error_mm" + kind] = vertex_error_mm(mean["expression"], kind)
        sums["neutral_vertex_error_mm" + kind] = vertex_error_mm(mean["neutral"], kind)
    return {
        **sums,
        "clips": jnp.sum(clips),
        "sampled_vertex_error_mm": vertex_error_mm(first["expression"]),
        "template_vertex_error_mm": vertex_error_mm(template),
        "emotion_error": jnp.sum(
            jnp.sum(jnp.square(mean["mixture"] - batch["emotion"]), -1) * clips
        ),
        "mean_mixture_emotion_error": jnp.sum(
            jnp.sum(jnp.square(mean_mixture - batch["emotion"]), -1) * clips
        ),
        "head_rotation_key_difference_deg": jnp.sum(rotation_difference * frames),
        "reconstruction": terms["reconstruction"] * jnp.sum(frames),
    }


def compiled_evaluation(networks, loss_config, placement: parallel.Placement):
    r = placement.replicated
    return jax.jit(
        functools.partial(evaluation_sums, networks, loss_config),
        in_shardings=(r, placement.batch, r, r),
        out_shardings=r,
    )


def evaluate_split(
    dataset, networks, config, params, eval_fn, buckets, mean_mixture, placement
) -> dict:
    """Validation metrics of a split: each process evaluates its rows of every batch, the sums are
    reduced over the mesh by the jitted function."""
    totals: dict[str, float] = {}
    for batch_index, batch in dataset.batches(
        global_batch=config.train.global_batch, buckets=buckets, seed=0, epoch=0, shuffle=False,
        process_index=jax.process_index(), process_count=jax.process_count(),
    ):  # fmt: skip
        prepared = placement.shard_batch(prepare_batch(batch, networks.config.num_subjects))
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


class MetricWriter:
    """JSON lines and TensorBoard event files in the workdir (process 0 only)."""

    def __init__(self, workdir: str, enabled: bool = True):
        self.enabled = enabled
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.tensorboard = None
        if enabled:
            from tensorboardX import SummaryWriter

            self.tensorboard = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, prefix: str, values: dict) -> None:
        if not self.enabled:
            return
        record = {"step": step, **{f"{prefix}/{k}": float(v) for k, v in values.items()}}
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record, sort_keys=True) + "\n")
        for name, value in record.items():
            if name != "step":
                self.tensorboard.add_scalar(name, value, step)

    def close(self):
        if self.tensorboard is not None:
            self.tensorboard.close()


def environment_record() -> dict:
    """Python, every installed distribution with its exact version, the devices and processes."""
    from importlib import metadata

    packages = {}
    for distribution in metadata.distributions():
        name = distribution.metadata["Name"]
        if name:
            packages[name.lower()] = distribution.version
    return {
        "python": sys.version.split()[0],
        "packages": dict(sorted(packages.items())),
        "devices": [str(d) for d in jax.devices()],
        "process_count": jax.process_count(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


class StopRequest:
    """SIGTERM (a cluster pre-empting the job) sets a flag; the loop checks it after every step,
    saves a checkpoint and stops. All processes stop at the same step (they agree on the flag)."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def _handle(self, signum, frame):
        self.requested = True

    def __enter__(self):
        self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc):
        signal.signal(signal.SIGTERM, self._previous)

    def agreed(self) -> bool:
        if jax.process_count() == 1:
            return self.requested
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(np.array(self.requested))
        return bool(np.any(flags))


class Preempted(RuntimeError):
    """Training stopped on SIGTERM after saving a checkpoint."""


def _log(message: str) -> None:
    if jax.process_index() == 0:
        print(message, flush=True)


def train(config, workdir: str) -> dict:
    """Trains (or resumes) in `workdir` over every device of every process; returns the last
    validation metrics. Raises Preempted after a SIGTERM, once the checkpoint is saved."""
    lead = jax.process_index() == 0
    os.makedirs(workdir, exist_ok=True)
    mesh = parallel.data_mesh()
    placement = parallel.Placement(mesh)
    parallel.check_global_batch(config.train.global_batch, mesh)
    corpus = runtime.open_corpus(config, progress=config.train.progress and lead)
    encoder = runtime.context_encoder(config)
    train_subjects = tuple(config.data.splits.train_subjects)
    train_set = ClipDataset.from_corpus(corpus, "train", train_subjects, context_encoder=encoder)
    val_set = ClipDataset.from_corpus(corpus, "val", train_subjects, context_encoder=encoder)
    networks = runtime.Networks.build(runtime.model_config(config, corpus, encoder.hidden_size))
    longest = max(max(train_set.lengths), max(val_set.lengths))
    buckets = batching.bucket_lengths(
        longest, min_length=config.data.bucket_min, growth=config.data.bucket_growth
    )
    labelled = [c.emotion / c.emotion.sum() for c in train_set.clips if c.emotion is not None]
    mean_mixture = placement.replicate(
        np.mean(labelled, 0).astype(np.float32)
        if labelled
        else np.full((networks.config.num_emotions,), 1.0, np.float32)
    )
    seeds = purpose_seeds(config.train)
    keys = purpose_keys(seeds)

    if lead:
        runtime.write_json(
            os.path.join(workdir, "config.json"), json.loads(config.to_json_best_effort())
        )
        runtime.write_json(os.path.join(workdir, "environment.json"), environment_record())
        # What `animate` needs to run without the corpus: templates, mesh, regions, subject order.
        Assets.from_corpus(corpus, train_subjects).save(os.path.join(workdir, ASSETS))

    manager = runtime.checkpoint_manager(workdir, keep=config.train.keep_checkpoints)
    initial = jax.device_get(runtime.initial_state(networks, config, keys["init"]))
    if networks.config.speaker_baseline and manager.latest_step() is None:
        # A pass over the training audio; a resumed run restores the learnt baseline instead.
        baseline = initial["params"]["generator"]["emotion"]["speaker_baseline"]
        baseline["kernel"] = runtime.speaker_mel_baseline(train_set, networks.config)
    state = placement.replicate(initial)
    best_manager = runtime.checkpoint_manager(workdir, runtime.BEST, keep=1, best=True)
    position = {"epoch": 0, "batch": 0}
    if manager.latest_step() is not None:
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=placement.replicated), state
        )
        state, position = runtime.restore_checkpoint(manager, abstract)
        _log(
            f"resuming from step {int(parallel.to_host(state['step']))} "
            f"(epoch {position['epoch']}, batch {position['batch']})"
        )

    plans_per_epoch = len(
        batching.epoch_plan(
            train_set.lengths, global_batch=config.train.global_batch, buckets=buckets, seed=0, epoch=0,
        )
    )  # fmt: skip
    step_fn = compiled_train_step(
        networks, config, placement, keys["noise"], plans_per_epoch * config.train.epochs
    )
    eval_fn = compiled_evaluation(networks, config.loss, placement)
    writer = MetricWriter(workdir, enabled=lead)
    max_steps = config.train.max_steps or math.inf
    validation: dict = {}
    step = int(parallel.to_host(state["step"]))
    from tqdm import tqdm

    # Which step was saved last is tracked here rather than read back from disk: every process
    # must take the same decision (orbax saves are collective), even while process 0 is still
    # finalising an asynchronous save that another process cannot see yet.
    saved = {"step": manager.latest_step() or 0}

    def save(metrics=None):
        runtime.save_checkpoint(manager, state, position)
        saved["step"] = step
        if metrics is not None:
            runtime.save_checkpoint(best_manager, state, position, metrics=metrics)

    try:
        with StopRequest() as stop:
            for epoch in range(position["epoch"], config.train.epochs):
                start_batch = position["batch"] if epoch == position["epoch"] else 0
                bar = tqdm(
                    total=plans_per_epoch, initial=start_batch, unit="batch",
                    desc=f"epoch {epoch + 1}/{config.train.epochs}",
                    disable=not (config.train.progress and lead),
                )  # fmt: skip
                epoch_start = time.perf_counter()
                for batch_index, batch in train_set.batches(
                    global_batch=config.train.global_batch, buckets=buckets, seed=seeds["data"],
                    epoch=epoch, start_batch=start_batch, process_index=jax.process_index(),
                    process_count=jax.process_count(),
                ):  # fmt: skip
                    if step >= max_steps:
                        break
                    prepared = placement.shard_batch(
                        prepare_batch(batch, networks.config.num_subjects)
                    )
                    state, metrics = step_fn(state, prepared)
                    metrics = {k: float(v) for k, v in parallel.to_host(metrics).items()}
                    if not all(math.isfinite(v) for v in metrics.values()):
                        bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
                        raise TrainingDiverged(
                            f"non-finite loss at step {step} (epoch {epoch}, batch {batch_index}): {bad}; "
                            f"all losses: {metrics}. The last good checkpoint in {workdir}/checkpoints is intact."
                        )
                    step += 1
                    writer.write(step, "train", metrics)
                    bar.set_postfix(
                        rec=f"{metrics['reconstruction']:.3g}", cls=f"{metrics['classification']:.3g}",
                        mi=f"{metrics['mi']:.3g}", d=f"{metrics['discriminator']:.3g}",
                    )  # fmt: skip
                    bar.update(1)
                    position = {"epoch": epoch, "batch": batch_index + 1}
                    every = config.train.checkpoint_every_steps
                    if every and step % every == 0:
                        save()
                    if stop.agreed():
                        save()
                        raise Preempted(
                            f"SIGTERM: stopped after step {step} (epoch {epoch}, batch "
                            f"{batch_index + 1}) and saved a checkpoint in {workdir}/checkpoints; "
                            "run the same command to resume"
                        )
                bar.close()
                if step >= max_steps and position["batch"] < plans_per_epoch:
                    break
                position = {"epoch": epoch + 1, "batch": 0}
                validation = evaluate_split(
                    val_set, networks, config, state["params"]["generator"], eval_fn, buckets,
                    mean_mixture, placement,
                )  # fmt: skip
                writer.write(step, "val", validation)
                # Wall-clock time is the one thing that differs between identical runs: it is kept
                # under its own prefix (docs/scaling.md).
                writer.write(step, "time", {"epoch_seconds": time.perf_counter() - epoch_start})
                _log(
                    f"epoch {epoch + 1}: val vertex error {validation['vertex_error_mm']:.3f} mm "
                    f"(template {validation['template_vertex_error_mm']:.3f}, neutral generator "
                    f"{validation['neutral_vertex_error_mm']:.3f}; emotional clips "
                    f"{validation['vertex_error_mm/emotional_clips']:.3f} vs "
                    f"{validation['neutral_vertex_error_mm/emotional_clips']:.3f}, neutral clips "
                    f"{validation['vertex_error_mm/neutral_clips']:.3f} vs "
                    f"{validation['neutral_vertex_error_mm/neutral_clips']:.3f}), emotion error "
                    f"{validation['emotion_error']:.4f} (mean mixture "
                    f"{validation['mean_mixture_emotion_error']:.4f})"
                )
                save(metrics={"val_vertex_error_mm": validation["vertex_error_mm"]})
    finally:
        manager.wait_until_finished()
        best_manager.wait_until_finished()
        writer.close()
    if step > 0 and saved["step"] != step:
        save()
        manager.wait_until_finished()
    return validation


def main(argv=None):
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file(
        "config", None, "Python config file (configs/*.py).", lock_config=True
    )
    flags.DEFINE_string("workdir", None, "Run folder: checkpoints, metrics, config.")
    flags.mark_flags_as_required(["config", "workdir"])

    def run(_):
        from absl import logging

        from sdetalk_jax.data.biwi import DataError

        logging.set_verbosity(logging.WARNING)  # orbax logs every save step at INFO
        config = flags.FLAGS.config
        if config.train.deterministic_gpu:  # nothing has touched a device yet
            parallel.request_deterministic_gpu_ops()
        parallel.initialize_distributed(config.get("distributed"))
        try:
            train(config, flags.FLAGS.workdir)
        except Preempted as stopped:
            _log(str(stopped))
            sys.exit(0)
        except (DataError, TrainingDiverged, parallel.ConfigError) as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(1)

    app.run(run, argv=argv)


if __name__ == "__main__":
    main()
