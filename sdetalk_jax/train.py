"""Training SDETalk: `python -m sdetalk_jax.train --config configs/biwi.py --workdir runs/biwi`.

The loop around the jitted step (`train_step`): the corpus, the networks and the keys of a run
(`setup`), a new or restored state (`restore_or_init`), epochs with validation and checkpoints
(`Trainer`), then the emotion prototypes of the trained run (`save_emotion_prototypes`). Every random
draw comes from a key split by purpose (`purpose_keys`), so a resumed run draws exactly what an
uninterrupted one would. Running the same command again resumes from the last checkpoint, data
position included.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time

import jax
import numpy as np

from sdetalk_jax import checkpoint, cli, emotion_control, optim, parallel, validation
from sdetalk_jax.data import batching, biwi
from sdetalk_jax.data.corpus import open_corpus, with_loss_scale
from sdetalk_jax.data.labels import EMOTION_LABELS_FILE
from sdetalk_jax.data.pipeline import ClipDataset, mean_emotion_mixture, model_batch
from sdetalk_jax.fileio import MetricWriter, environment_record, write_json
from sdetalk_jax.models.config import SDETalkConfig
from sdetalk_jax.models.networks import Networks, statistics_standardisation
from sdetalk_jax.models.wav2vec2.convert import CheckpointError
from sdetalk_jax.models.wav2vec2.encoder import ContextEncoder
from sdetalk_jax.train_step import compiled_train_step


class TrainingDiverged(RuntimeError):
    """A loss became NaN or Inf; the message names the step and the losses."""


# Purposes of randomness; each gets its own key, folded from its own seed (docs/scaling.md).
_INIT_PURPOSE, _NOISE_PURPOSE = 0, 1


def purpose_seeds(train_config) -> dict[str, int]:
    """The seed of each source of randomness: train.seed unless pinned by train.<purpose>_seed."""
    seeds = {}
    for purpose in ("data", "init", "noise"):
        pinned = train_config[f"{purpose}_seed"]
        seeds[purpose] = int(pinned) if pinned >= 0 else int(train_config.seed)
    return seeds


def purpose_keys(seeds: dict[str, int]) -> dict:
    """One key per purpose, so a study can vary one source of randomness and hold the others:
    `init` (parameters) and `noise` (z1 and z2, per step by fold_in). The data
    order uses the integer data seed directly (`batching.epoch_plan`)."""
    return {
        "init": jax.random.fold_in(jax.random.key(seeds["init"]), _INIT_PURPOSE),
        "noise": jax.random.fold_in(jax.random.key(seeds["noise"]), _NOISE_PURPOSE),
    }


# ---------------------------------------------------------------------------------------------
# The loop


@dataclasses.dataclass
class Setup:
    """Everything a run is built from, before any state exists."""

    placement: parallel.Placement
    corpus: biwi.Corpus
    assets: checkpoint.Assets
    train_set: ClipDataset
    val_set: ClipDataset
    networks: Networks
    buckets: tuple[int, ...]
    mean_mixture: jax.Array
    seeds: dict[str, int]
    keys: dict
    notes: list[str]  # `supervision_notes` of the training clips


def stop_before_training(stop: parallel.StopRequest, during: str):
    """A check for the passes before training starts (corpus, features, speaker levels): they
    stop within a clip of a SIGTERM or Ctrl-C, with nothing to save."""

    def check():
        if stop.local():
            raise parallel.Preempted(
                f"{stop.name} during {during}: stopped before training started (nothing to save); "
                "run the same command to start again"
            )

    return check


def has_head_pose(clips) -> bool:
    """Whether any of the clips has head pose (head_pose/)."""
    return any(clip.head_pose_path is not None for clip in clips)


def head_pose_note(clips) -> str | None:
    """What to tell the user when no training clip has head pose (None when some have)."""
    if has_head_pose(clips):
        return None
    return (
        "note: no training clip has head pose (head_pose/): the head's rotation and translation "
        "terms and its part of the adversarial and diversity terms are off, so head motion is "
        "not learned and the head is held at the rest pose in every sample; the diversity term "
        "holds samples apart by their expression alone (loss.lambda_f_without_head_pose)"
    )


def emotion_labels_note(clips) -> str | None:
    """What to tell the user when no training clip has an emotion label (None when some have)."""
    if any(clip.emotion is not None for clip in clips):
        return None
    return (
        f"note: no training clip has an emotion label ({EMOTION_LABELS_FILE}): L_cls and the "
        "discriminator's emotion head are off (zero), so the emotion mixture y_e is not learned"
    )


def supervision_notes(clips) -> list[str]:
    """Every part of the objective that the training clips leave without a target: said at the
    start of training, saved with the run (`checkpoint.save_run_notes`) and repeated by evaluate."""
    return [note for note in (head_pose_note(clips), emotion_labels_note(clips)) if note]


def setup(config, stop: parallel.StopRequest) -> Setup:
    """Opens the corpus, the frozen encoder and the datasets, and builds the networks."""
    lead = jax.process_index() == 0
    placement = parallel.Placement(parallel.data_mesh())
    parallel.check_global_batch(config.train.global_batch, placement.mesh)
    corpus = open_corpus(
        config, progress=config.train.progress and lead, generator=lead,
        barrier=parallel.barrier, between_clips=stop_before_training(stop, "corpus scanning"),
    )  # fmt: skip
    encoder = ContextEncoder.from_config(config)
    train_subjects = tuple(config.data.splits.train_subjects)
    train_set = ClipDataset.from_corpus(corpus, "train", train_subjects, context_encoder=encoder)
    val_set = ClipDataset.from_corpus(corpus, "val", train_subjects, context_encoder=encoder)
    assets = checkpoint.Assets.from_corpus(
        corpus, train_subjects, encoder.fingerprint, head_pose=has_head_pose(train_set.clips)
    )
    for dataset in (train_set, val_set):  # all now, so that the encoder is not kept in training
        dataset.compute_audio_features(
            stop_before_training(stop, "the audio features"),
            progress=config.train.progress and lead,
        )
    notes = supervision_notes(train_set.clips)
    for note in notes:
        _log(note)
    model_config = SDETalkConfig.for_run(
        config, context_dim=encoder.hidden_size, **assets.dimensions
    )
    longest = max(max(train_set.lengths), max(val_set.lengths))
    buckets = batching.bucket_lengths(
        longest, min_length=config.data.bucket_min, growth=config.data.bucket_growth
    )
    mean_mixture = mean_emotion_mixture(train_set.clips)
    if mean_mixture is None:
        mean_mixture = np.full((model_config.num_emotions,), 1.0)
    seeds = purpose_seeds(config.train)
    return Setup(
        placement=placement, corpus=corpus, assets=assets, train_set=train_set, val_set=val_set,
        networks=Networks.build(model_config), buckets=buckets,
        mean_mixture=placement.replicate(mean_mixture.astype(np.float32)), seeds=seeds,
        keys=purpose_keys(seeds), notes=notes,
    )  # fmt: skip


def write_run_metadata(
    config, workdir: str, assets: checkpoint.Assets, notes: list[str] = ()
) -> None:
    """The run's config, its software environment, what `animate` needs to run without the corpus
    (templates, mesh, regions, subject order) and what the training data left out (`notes`)."""
    write_json(os.path.join(workdir, "config.json"), checkpoint.training_config_json(config))
    write_json(os.path.join(workdir, "environment.json"), environment_record())
    assets.save(os.path.join(workdir, checkpoint.ASSETS))
    checkpoint.save_run_notes(workdir, notes)


def restore_or_init(run: Setup, config, checkpoints: Checkpoints, stop) -> tuple[dict, dict]:
    """(state, data position): the last intact checkpoint's, or a new run's from the init key."""
    placement = run.placement
    initial = jax.device_get(optim.initial_state(run.networks, config, run.keys["init"]))
    resuming = checkpoints.latest.latest_step() is not None
    if run.networks.config.emotion_statistics and not resuming:
        readout = initial["params"]["generator"]["statistics"]
        readout["centre"], readout["scale"] = statistics_standardisation(
            run.train_set,
            between_clips=stop_before_training(stop, "the pass over the training audio"),
        )
    if not resuming:
        return placement.replicate(initial), {"epoch": 0, "batch": 0}
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=placement.replicated), initial
    )
    del initial  # not kept beside the restored state
    state, position = restore_latest_intact(checkpoints, abstract)
    _log(
        f"resuming from step {int(parallel.to_host(state['step']))} "
        f"(epoch {position['epoch']}, batch {position['batch']})"
    )
    return state, position


def restore_latest_intact(checkpoints: Checkpoints, abstract) -> tuple[dict, dict]:
    """The newest checkpoint that restores; a damaged one (a disk that filled up, a copy cut
    short) is moved to WORKDIR/damaged/ with a warning naming its step, and the one before it
    is tried. Raises RunError when none restores: nothing is started over behind the user's back."""
    workdir = checkpoints.workdir
    for step in sorted(checkpoints.latest.all_steps(), reverse=True):
        try:
            return checkpoint.restore_checkpoint(checkpoints.latest, abstract, step)
        except Exception as error:  # orbax raises many kinds on damaged files
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
            if jax.process_index() == 0:
                target = checkpoint.set_aside(workdir, step)
                print(
                    f"warning: checkpoint step {step} in {workdir}/{checkpoint.CHECKPOINTS} is "
                    f"damaged ({reason[:200]}); moved to {target}, trying the one before it",
                    flush=True,
                )
            parallel.barrier(f"sdetalk-set-aside-{step}")
            checkpoints.reopen()
    raise checkpoint.RunError(
        f"{workdir}/{checkpoint.CHECKPOINTS}: no checkpoint can be restored (the damaged ones are "
        f"in {workdir}/damaged); use another --workdir to start a new run"
    )


class Checkpoints:
    """The last few states and the best one. Which step was saved last is tracked here rather than
    read back from disk: every process must take the same decision (orbax saves are collective),
    even while process 0 is still finalising an asynchronous save that another cannot see yet."""

    def __init__(self, workdir: str, keep: int):
        self.workdir, self.keep = workdir, keep
        self.latest = checkpoint.checkpoint_manager(workdir, keep=keep)
        self.best = checkpoint.checkpoint_manager(workdir, checkpoint.BEST, keep=1, best=True)
        self.saved_step = self.latest.latest_step() or 0

    def reopen(self) -> None:
        """A new view of the last few, after a damaged one was moved away."""
        self.latest.close()
        self.latest = checkpoint.checkpoint_manager(self.workdir, keep=self.keep)
        self.saved_step = self.latest.latest_step() or 0

    def save(self, state, position, step: int, metrics: dict | None = None) -> None:
        checkpoint.save_checkpoint(self.latest, state, position)
        self.saved_step = step
        if metrics is not None:
            checkpoint.save_checkpoint(self.best, state, position, metrics=metrics)

    def wait(self) -> None:
        self.latest.wait_until_finished()
        self.best.wait_until_finished()


def _validation_line(epoch: int, validation: dict) -> str:
    v = validation
    return (
        f"epoch {epoch + 1}: val vertex error {v['vertex_error_mm']:.3f} mm "
        f"(template {v['template_vertex_error_mm']:.3f}, neutral generator "
        f"{v['neutral_vertex_error_mm']:.3f}; emotional clips "
        f"{v['vertex_error_mm/emotional_clips']:.3f} vs "
        f"{v['neutral_vertex_error_mm/emotional_clips']:.3f}, neutral clips "
        f"{v['vertex_error_mm/neutral_clips']:.3f} vs "
        f"{v['neutral_vertex_error_mm/neutral_clips']:.3f}), emotion error "
        f"{v['emotion_error']:.4f} (mean mixture {v['mean_mixture_emotion_error']:.4f})"
    )


def _check_finite(metrics: dict, step: int, epoch: int, batch_index: int, workdir: str) -> None:
    if not all(math.isfinite(v) for v in metrics.values()):
        bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
        raise TrainingDiverged(
            f"non-finite loss at step {step} (epoch {epoch}, batch {batch_index}): {bad}; "
            f"all losses: {metrics}. The last good checkpoint in {workdir}/checkpoints is intact."
        )


@dataclasses.dataclass
class Trainer:
    """The loop's fixed parts; `state`, `position` and `step` are what it advances."""

    config: object
    workdir: str
    run: Setup
    step_fn: object
    eval_fn: object
    writer: MetricWriter
    checkpoints: Checkpoints
    plans_per_epoch: int
    state: dict
    position: dict
    step: int
    # bucket lengths whose step has been compiled: the compiler's freed memory is handed back
    # after each (parallel.release_freed_host_memory)
    compiled_lengths: set = dataclasses.field(default_factory=set)

    def run_epoch(self, epoch: int, stop: parallel.StopRequest) -> bool:
        """Trains one epoch from the saved position; returns whether it ended (False when
        train.max_steps stopped it part-way). Raises Preempted after a SIGTERM, once saved."""
        from tqdm import tqdm

        config, run, lead = self.config, self.run, jax.process_index() == 0
        start_batch = self.position["batch"] if epoch == self.position["epoch"] else 0
        bar = tqdm(
            total=self.plans_per_epoch, initial=start_batch, unit="batch",
            desc=f"epoch {epoch + 1}/{config.train.epochs}",
            disable=not (config.train.progress and lead),
        )  # fmt: skip
        max_steps = config.train.max_steps or math.inf
        # A step's metrics are fetched after the next step is dispatched: the host never waits for
        # the device between steps. They are always checked before a checkpoint is saved, so a
        # non-finite loss is never saved (the state one step past it is dropped with the error).
        pending = None
        for batch_index, batch in run.train_set.batches(
            global_batch=config.train.global_batch, buckets=run.buckets, seed=run.seeds["data"],
            epoch=epoch, start_batch=start_batch, process_index=jax.process_index(),
            process_count=jax.process_count(),
        ):  # fmt: skip
            if self.step >= max_steps:
                break
            prepared = run.placement.shard_batch(
                model_batch(batch, batch["subject"], run.networks.config.num_subjects)
            )
            self.state, metrics = self.step_fn(self.state, prepared)
            length = batch["frame_mask"].shape[1]
            if length not in self.compiled_lengths:  # that step was compiled first
                self.compiled_lengths.add(length)
                parallel.release_freed_host_memory()
            if pending is not None:
                self.record(*pending, bar)
            pending = (self.step, epoch, batch_index, metrics)
            self.step += 1
            bar.update(1)
            self.position = {"epoch": epoch, "batch": batch_index + 1}
            every = config.train.checkpoint_every_steps
            saving = bool(every and self.step % every == 0)
            stopping = stop.agreed()
            if saving or stopping:
                self.record(*pending, bar)
                pending = None
                self.checkpoints.save(self.state, self.position, self.step)
            if stopping:
                raise parallel.Preempted(
                    f"{stop.name}: stopped after step {self.step} (epoch {epoch}, batch "
                    f"{batch_index + 1}) and saved a checkpoint in {self.workdir}/checkpoints; "
                    "run the same command to resume"
                )
        if pending is not None:
            self.record(*pending, bar)
        bar.close()
        return not (self.step >= max_steps and self.position["batch"] < self.plans_per_epoch)

    def record(self, step: int, epoch: int, batch_index: int, device_metrics, bar) -> None:
        """Fetches one step's metrics, stops on a non-finite loss, writes them (as step + 1, the
        number of updates done) and shows them on the progress bar."""
        metrics = {k: float(v) for k, v in parallel.to_host(device_metrics).items()}
        _check_finite(metrics, step, epoch, batch_index, self.workdir)
        self.writer.write(step + 1, "train", metrics)
        bar.set_postfix(
            rec=f"{metrics['reconstruction']:.3g}", cls=f"{metrics['classification']:.3g}",
            mi=f"{metrics['mi']:.3g}", d=f"{metrics['discriminator']:.3g}",
        )  # fmt: skip

    def end_epoch(self, epoch: int, epoch_start: float, stop: parallel.StopRequest) -> dict:
        """Validates, writes the records and saves the end-of-epoch checkpoint (and the best).
        A stop during validation saves the epoch's trained state (validation runs again on
        resume) and raises Preempted."""

        def between_batches():
            if stop.agreed():
                raise parallel.Preempted(
                    f"{stop.name}: stopped during the validation after step {self.step}"
                )

        try:
            validation_metrics = validation.evaluate_split(
                self.run.val_set, self.run.networks, self.config,
                self.state["params"]["generator"], self.eval_fn, self.run.buckets,
                self.run.mean_mixture, self.run.placement, between_batches=between_batches,
            )  # fmt: skip
        except parallel.Preempted as stopped:
            self.checkpoints.save(self.state, self.position, self.step)
            raise parallel.Preempted(
                f"{stopped} and saved a checkpoint in {self.workdir}/checkpoints; run the same "
                "command to resume"
            ) from None
        self.position = {"epoch": epoch + 1, "batch": 0}
        self.writer.write(self.step, "val", validation_metrics)
        # Wall-clock time is the one thing that differs between identical runs: it is kept
        # under its own prefix (docs/scaling.md).
        self.writer.write(self.step, "time", {"epoch_seconds": time.perf_counter() - epoch_start})
        _log(_validation_line(epoch, validation_metrics))
        self.checkpoints.save(
            self.state, self.position, self.step,
            metrics={"val_vertex_error_mm": validation_metrics["vertex_error_mm"]},
        )  # fmt: skip
        return validation_metrics


@dataclasses.dataclass
class TrainedRun:
    """What training ends with: the run's setup, its checkpoints and the last state."""

    run: Setup
    checkpoints: Checkpoints
    state: dict
    steps: int
    validation: dict


def train(config, workdir: str) -> dict:
    """Trains (or resumes) in `workdir` over every device of every process, then fits the emotion
    prototypes of the trained run; returns the last validation metrics. Raises Preempted after a
    SIGTERM or Ctrl-C, once the checkpoint is saved."""
    config = with_loss_scale(config)
    with parallel.StopRequest() as stop:
        trained = train_networks(config, workdir, stop)
        if trained.steps > 0:
            save_emotion_prototypes(config, workdir, trained)
    return trained.validation


def train_networks(config, workdir: str, stop: parallel.StopRequest) -> TrainedRun:
    """The training loop: from a new run or the last checkpoint to the last epoch's (or
    train.max_steps'), saved."""
    lead = jax.process_index() == 0
    config_json = checkpoint.training_config_json(config)
    checkpoint.check_resumable(workdir, config_json)  # before the long setup: the config alone
    run = setup(config, stop)
    checkpoint.check_same_data(workdir, run.assets)
    # Nothing is written before this point: a run that cannot start leaves no folder behind.
    os.makedirs(workdir, exist_ok=True)
    if lead:
        write_run_metadata(config, workdir, run.assets, run.notes)
    checkpoints = Checkpoints(workdir, config.train.keep_checkpoints)
    state, position = restore_or_init(run, config, checkpoints, stop)
    plans_per_epoch = len(
        batching.epoch_plan(
            run.train_set.lengths, global_batch=config.train.global_batch, buckets=run.buckets,
            seed=0, epoch=0,
        )
    )  # fmt: skip
    step = int(parallel.to_host(state["step"]))
    step_fn = compiled_train_step(
        run.networks,
        config,
        run.placement,
        run.keys["noise"],
        plans_per_epoch * config.train.epochs,
    )
    eval_fn = validation.compiled_evaluation(
        run.networks, config.loss, run.placement, config.train.matmul_precision
    )
    # Opened last, just before the block that closes it, so that no failure leaves it open.
    writer = MetricWriter(
        workdir, enabled=lead, resume_step=step, keep_validation_at_step=position["batch"] == 0
    )
    validation_metrics: dict = {}
    try:
        trainer = Trainer(
            config=config, workdir=workdir, run=run, step_fn=step_fn, eval_fn=eval_fn,
            writer=writer, checkpoints=checkpoints, plans_per_epoch=plans_per_epoch, state=state,
            position=position, step=step,
        )  # fmt: skip
        for epoch in range(position["epoch"], config.train.epochs):
            epoch_start = time.perf_counter()
            if not trainer.run_epoch(epoch, stop):
                break
            validation_metrics = trainer.end_epoch(epoch, epoch_start, stop)
    except parallel.Preempted:
        checkpoints.wait()
        # No process exits before every process's part of the save is complete: a scheduler that
        # kills the rest of a job when one task ends must not cut the checkpoint short.
        parallel.barrier("sdetalk-stopped-and-saved")
        raise
    finally:
        checkpoints.wait()
        writer.close()
    if trainer.step > 0 and checkpoints.saved_step != trainer.step:
        checkpoints.save(trainer.state, trainer.position, trainer.step)
        checkpoints.latest.wait_until_finished()
    return TrainedRun(run, checkpoints, trainer.state, trainer.step, validation_metrics)


def save_emotion_prototypes(config, workdir: str, trained: TrainedRun) -> None:
    """Fits the emotion prototypes (`emotion_control`) of the best checkpoint's generator to the
    training takes and saves them with the run: `animate --emotion` then needs no corpus. Every
    process computes them on its own host (the same numbers); the first writes them."""
    run, checkpoints, state = trained.run, trained.checkpoints, trained.state
    steps = config.train.emotion_prototype_steps
    categories = run.assets.emotion_categories
    if steps < 0 or not categories:
        return
    step = int(parallel.to_host(state["step"]))
    best_step = checkpoints.best.best_step()
    if best_step is not None and best_step != step:
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=run.placement.replicated),
            state,
        )
        state, _ = checkpoint.restore_checkpoint(checkpoints.best, abstract, best_step)
        step = best_step
    prototypes = emotion_control.gather_prototypes(
        run.networks.generator, parallel.to_host(state["params"]["generator"]), run.train_set,
        categories, step, refine_steps=steps,
        progress=config.train.progress and jax.process_index() == 0,
    )  # fmt: skip
    if jax.process_index() == 0:
        _log(f"emotion prototypes of step {step}: {prototypes.save(workdir)}")
    # No process exits before the file is written (a scheduler may end the job with the first).
    parallel.barrier("sdetalk-emotion-prototypes")


def _log(message: str) -> None:
    if jax.process_index() == 0:
        print(message, flush=True)


# ---------------------------------------------------------------------------------------------
# The command line


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser("python -m sdetalk_jax.train", __doc__)
    cli.add_config_arguments(parser)
    parser.add_argument("--workdir", required=True, help="run folder: checkpoints, metrics, config")
    args, config = cli.parse_with_config(parser, argv)
    from absl import logging

    logging.set_verbosity(logging.WARNING)  # orbax logs every save step at INFO
    if config.train.deterministic_gpu:  # nothing has touched a device yet
        parallel.request_deterministic_gpu_ops()
    try:
        parallel.initialize_distributed(config.get("distributed"))
        train(config, args.workdir)
    except parallel.Preempted as stopped:
        _log(str(stopped))
        return parallel.PREEMPTED_EXIT_CODE
    except (
        biwi.DataError, CheckpointError, checkpoint.RunError, TrainingDiverged,
        parallel.ConfigError,
    ) as error:  # fmt: skip
        return cli.report(error)
    return 0


if __name__ == "__main__":
    sys.exit(main())
