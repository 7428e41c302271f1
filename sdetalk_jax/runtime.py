"""What the trainer, `evaluate` and `animate` share: building the corpus view, the frozen context
encoder and the networks from a config, and saving / restoring checkpoints. Nothing here trains."""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

from sdetalk_jax.data import biwi, synthetic
from sdetalk_jax.models import sdetalk
from sdetalk_jax.models.wav2vec2.encoder import ContextEncoder
from sdetalk_jax.models.wav2vec2.model import Wav2Vec2Config, Wav2Vec2Model

CHECKPOINTS = "checkpoints"
BEST = "best"


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache"))
    return os.path.join(base, "sdetalk_jax", "wav2vec2")


def open_corpus(config, *, progress: bool = False) -> biwi.Corpus:
    """Scans the configured corpus (generating SynthBIWI first when the config asks for it)."""
    root = config.data.root
    if config.data.generate_if_missing and not os.path.exists(root):
        print(f"{root}: not found; generating the synthetic corpus (docs/data.md)")
        generate_synthetic(root, dict(config.data.synthetic), progress=progress)
    elif config.data.generate_if_missing:
        warn_if_other_synthetic(root, dict(config.data.synthetic))
    splits = biwi.SplitSpec.from_config(config.data.splits)
    try:
        corpus = biwi.scan_corpus(root, splits, progress=progress)
    except biwi.DataError as err:
        if "docs/data.md" in str(err):
            raise
        raise biwi.DataError(f"{err} (see docs/data.md)") from err
    if corpus.errors:
        names = ", ".join(sorted({os.path.basename(p.path) for p in corpus.errors})[:10])
        print(
            f"warning: {len(corpus.errors)} problems in {root}; left out: {names} (python -m sdetalk_jax.data check --root {root})"
        )
    if not corpus.split("train"):
        raise biwi.DataError(
            f"{root}: no usable training clips for subjects {list(splits.train_subjects)}; "
            "see docs/data.md, or use --config configs/synthetic.py"
        )
    return corpus


def warn_if_other_synthetic(root: str, parameters: dict) -> None:
    """A SynthBIWI corpus left by an older version (or other parameters) is used as it is, never
    replaced behind the user's back; but they are told, since its results will differ."""
    previous = synthetic.existing_parameters(root)
    wanted = {
        **synthetic.corpus_parameters(**parameters),
        "format_version": synthetic.FORMAT_VERSION,
    }
    if previous is not None and previous != wanted:
        print(
            f"warning: {root} holds a SynthBIWI corpus {previous}, not the configured {wanted}; "
            f"using it as it is (to regenerate: python -m {synthetic.GENERATOR} --out {root} --force"
            + "".join(f" --{name} {value}" for name, value in parameters.items())
            + ")"
        )


def generate_synthetic(root: str, parameters: dict, *, progress: bool) -> None:
    """Runs the SynthBIWI generator as its own process: its per-clip worker processes re-import the
    parent's main module, which for the trainer would mean importing JAX once per clip."""
    import subprocess
    import sys

    command = [sys.executable, "-m", synthetic.GENERATOR, "--out", root]
    for name, value in parameters.items():
        command += [f"--{name}", str(value)]
    if not progress:
        command.append("--quiet")
    result = subprocess.run(command, check=False)
    if result.returncode != 0:
        raise biwi.DataError(
            f"{root}: generating the synthetic corpus failed (exit {result.returncode})"
        )


def context_encoder(config) -> ContextEncoder:
    """The frozen wav2vec 2.0: pretrained from a folder / hub cache, or small and random (seeded)."""
    cache_dir = config.data.feature_cache or default_cache_dir()
    if config.model.wav2vec2_checkpoint:
        return ContextEncoder.from_pretrained(config.model.wav2vec2_checkpoint, cache_dir=cache_dir)
    settings = dict(config.model.wav2vec2_random)
    seed = settings.pop("seed", 0)
    encoder_config = Wav2Vec2Config.from_dict(settings)
    # Jitted: one compilation instead of one per initialiser op.
    params = jax.jit(Wav2Vec2Model(encoder_config).init)(
        jax.random.key(seed), np.zeros((1, encoder_config.receptive_field * 2), np.float32)
    )["params"]
    return ContextEncoder(encoder_config, params, cache_dir=cache_dir)


def model_config(config, corpus: biwi.Corpus, context_dim: int) -> sdetalk.SDETalkConfig:
    return sdetalk.SDETalkConfig.from_config(
        config.model,
        num_vertices=corpus.num_vertices,
        context_dim=context_dim,
        num_subjects=len(config.data.splits.train_subjects),
        num_emotions=max(len(corpus.emotion_categories), 1),
        motion_unit=1.0 / config.loss.vertex_scale,
    )


@dataclasses.dataclass(frozen=True)
class Networks:
    config: sdetalk.SDETalkConfig
    generator: sdetalk.Generator
    discriminator: sdetalk.Discriminator
    estimators: sdetalk.MIEstimators

    @classmethod
    def build(cls, model_config: sdetalk.SDETalkConfig) -> Networks:
        return cls(
            model_config,
            sdetalk.Generator(model_config),
            sdetalk.Discriminator(model_config),
            sdetalk.MIEstimators(model_config),
        )

    def dummy_batch(self, frames: int = 8) -> dict:
        c = self.config
        return {
            "context": jnp.zeros((1, frames, c.context_dim)),
            "mel": jnp.zeros((1, frames, c.mel_bins)),
            "subject_onehot": jnp.zeros((1, c.num_subjects)),
            "template": jnp.zeros((1, c.num_vertices * 3)),
            "frame_mask": jnp.ones((1, frames), bool),
        }

    def init_params(self, key) -> dict:
        """Parameters of the three networks from one key (split by purpose)."""
        generator_key, discriminator_key, estimator_key = jax.random.split(key, 3)
        batch = self.dummy_batch()
        noise = jnp.zeros((1, 8, self.config.hidden))
        generator = self.generator.init(generator_key, batch, noise)["params"]
        outputs = self.generator.apply({"params": generator}, batch, noise)
        discriminator = self.discriminator.init(
            discriminator_key,
            outputs["embedding"],
            outputs["posed"],
            batch["template"],
            batch["frame_mask"],
        )["params"]
        from sdetalk_jax.losses import per_frame_factors

        estimators = self.estimators.init(estimator_key, per_frame_factors(outputs))["params"]
        return {"generator": generator, "discriminator": discriminator, "estimators": estimators}


def speaker_mel_baseline(dataset, model_config: sdetalk.SDETalkConfig) -> np.ndarray:
    """Each known speaker's mean scaled log-mel over every frame of its clips in `dataset`
    [subjects, bins]: the starting value of the emotion network's speaker baseline, so that it
    reads deviations from the speaker's own voice from the first step."""
    sums = np.zeros((model_config.num_subjects, model_config.mel_bins), np.float64)
    counts = np.zeros((model_config.num_subjects, 1), np.float64)
    for index, clip in enumerate(dataset.clips):
        subject = dataset.subject_index(clip.subject)
        if subject < 0:
            continue
        mel = np.asarray(sdetalk.scaled_mel(dataset.log_mel(index)), np.float64)
        sums[subject] += mel.sum(0)
        counts[subject] += len(mel)
    return (sums / np.maximum(counts, 1)).astype(np.float32)


def learning_rate(train_config, total_steps: int):
    """The paper's fixed rate ('constant'), or a linear warm-up to it followed by a cosine decay to
    zero at `total_steps` ('warmup_cosine'), for short runs that must end converged."""
    # .get: runs saved before schedules existed have no such field and used the fixed rate.
    kind = train_config.get("lr_schedule", "constant")
    if kind == "constant":
        return train_config.learning_rate
    if kind == "warmup_cosine":
        warmup = min(int(train_config.warmup_steps), max(total_steps - 1, 0))
        return optax.warmup_cosine_decay_schedule(
            0.0, train_config.learning_rate, warmup, max(total_steps, warmup + 1)
        )
    raise ValueError(f"unknown train.lr_schedule '{kind}' (constant, warmup_cosine)")


def optimizer(config, total_steps: int = 1) -> optax.GradientTransformation:
    """Adam (one instance per network); `total_steps` is the length of a decaying schedule. The
    optimiser state's structure does not depend on it, so restoring needs no step count."""
    return optax.adam(learning_rate(config.train, total_steps))


def initial_state(networks: Networks, config, key) -> dict:
    params = jax.jit(networks.init_params)(key)  # one compilation, not one per initialiser op
    tx = optimizer(config)
    return {
        "step": jnp.zeros((), jnp.int32),
        "params": params,
        "opt_state": {name: tx.init(value) for name, value in params.items()},
    }


def checkpoint_manager(
    workdir: str,
    name: str = CHECKPOINTS,
    *,
    keep: int = 3,
    best: bool = False,
    read_only: bool = False,
):
    options = ocp.CheckpointManagerOptions(
        max_to_keep=None if read_only else keep,
        save_interval_steps=0 if read_only else 1,
        create=not read_only,
        read_only=read_only,
        best_fn=(lambda metrics: metrics["val_vertex_error_mm"]) if best else None,
        best_mode="min",
        # Saves are atomic (written under a temporary name, then renamed); left-over temporaries of an
        # interrupted save are removed on start-up and never restored.
        cleanup_tmp_directories=not read_only,
        # Two managers (last N and best) save the same step at the end of an epoch: their
        # cross-process barriers need distinct names.
        multiprocessing_options=ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=name),
    )
    return ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, name)), options=options)


def save_checkpoint(manager, state: dict, position: dict, metrics: dict | None = None) -> None:
    """Saves on every process (orbax writes collectively); the step comes from the state."""
    from sdetalk_jax.parallel import to_host

    step = int(to_host(state["step"]))
    manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), position=ocp.args.JsonSave(position)
        ),
        metrics=metrics,
    )


def restore_checkpoint(manager, abstract_state: dict, step: int | None = None) -> tuple[dict, dict]:
    step = manager.latest_step() if step is None else step
    restored = manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), position=ocp.args.JsonRestore()
        ),
    )
    return restored["state"], restored["position"]


def write_json(path: str, value) -> None:
    from sdetalk_jax.data.writer import write_bytes

    write_bytes(path, (json.dumps(value, indent=2, sort_keys=True, default=str) + "\n").encode())
