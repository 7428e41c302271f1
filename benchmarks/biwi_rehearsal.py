"""A dress rehearsal of the real BIWI job on this machine, and a table of what it costs.

    python benchmarks/biwi_rehearsal.py [--workdir /tmp/biwi-rehearsal] [--sentences 6]
                                        [--epochs 4] [--prototype-steps 30] [--vertices 23370] [--keep]
    python benchmarks/biwi_rehearsal.py --workdir W --prototypes-only   # after a --keep run in W

Fake batches (benchmarks/train_step.py) leave out what the real job also does: reading the corpus,
running the frozen encoder over every clip and caching its features, validating, saving
checkpoints. This script runs the real job: `python -m sdetalk_jax.train --config
configs/biwi.py`, unchanged but for

* its data root: a SynthBIWI generated at BIWI's 23370 vertices, BIWI's six training speakers
  and `--sentences` sentences each (emotional and neutral takes), the splits shrunk to fit
  (the last two sentences for validation and test);
* its encoder: a randomly initialised wav2vec2-base (transformers' default config: 12 layers,
  768 wide), saved as a local Hugging Face folder (config.json, model.safetensors), read the
  way pretrained weights are;
* the number of epochs (`--epochs`) and the feature cache's folder.

Each phase runs in a process of its own, so that its peak memory (RSS) is its own: extracting
and caching the features, training (with validation and checkpoints at every epoch), saving the
trained state once more, timed alone, and fitting the emotion prototypes that training fits when
it ends (`train.emotion_prototype_steps`: a first fit of one step, then fits of 1 and of 1 +
`--prototype-steps` refinement steps, the difference projected to the config's 600). The table projects the full BIWI job from the measured
time per training frame: 384 training clips of 4.25 s on average (about 41k frames an epoch) and
500 epochs, the paper's. `--prototypes-only` times only the prototypes' fit, on the run that an
earlier `--keep` left in `--workdir`.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import queue
import resource
import shutil
import subprocess
import sys
import time

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BIWI_VERTICES = 23370
BIWI_TRAIN_FRAMES = 384 * 4.25 * 25  # 384 training clips, 4.25 s on average, 25 fps
PAPER_EPOCHS = 500


def overrides(workdir: str, sentences: int, epochs: int) -> dict:
    """What this rehearsal changes in configs/biwi.py."""
    return {
        "data.root": os.path.join(workdir, "corpus"),
        "data.generate_if_missing": False,
        "data.feature_cache": os.path.join(workdir, "feature-cache"),
        "data.splits.train_sentences": (1, sentences - 2),
        "data.splits.val_sentences": (sentences - 1, sentences - 1),
        "data.splits.test_sentences": (sentences, sentences),
        "model.wav2vec2_checkpoint": os.path.join(workdir, "wav2vec2-base-random"),
        "train.epochs": epochs,
        "train.progress": False,
        # Timed in a phase of its own (below): 600 steps at this size would dwarf the rest.
        "train.emotion_prototype_steps": -1,
    }


def rehearsal_config(settings: dict):
    from sdetalk_jax.config_files import repository_config

    config = repository_config("biwi")
    for dotted, value in settings.items():
        *parents, name = dotted.split(".")
        node = config
        for parent in parents:
            node = node[parent]
        node[name] = value
    return config


def command_line(settings: dict) -> list[str]:
    return [f"--config.{k}={v}".replace(" ", "") for k, v in settings.items()]


def save_random_encoder(folder: str) -> float:
    """A random wav2vec2-base as a Hugging Face folder; its size in MB."""
    import torch
    import transformers

    if not os.path.exists(os.path.join(folder, "model.safetensors")):
        torch.manual_seed(0)
        model = transformers.Wav2Vec2Model(transformers.Wav2Vec2Config())
        model.save_pretrained(folder, safe_serialization=True)
    return folder_megabytes(folder)


def folder_megabytes(folder: str) -> float:
    total = 0
    for parent, _, files in os.walk(folder):
        total += sum(os.path.getsize(os.path.join(parent, name)) for name in files)
    return total / 1e6


def status_gib(field: str) -> float | None:
    """A memory field of /proc/self/status ("VmHWM", "VmRSS") in GiB; None where there is none."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) / 2**20  # kB
    except OSError:
        pass
    return None


def peak_rss_gib() -> float:
    """This process's peak RSS since it started. Not getrusage's ru_maxrss, which on Linux keeps
    the parent's peak in a child it spawns: VmHWM of /proc/self/status, where there is one."""
    peak = status_gib("VmHWM")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20 if peak is None else peak


def extract_features(settings: dict, results) -> None:
    """Phase 1 (own process): every clip of the run's splits through the encoder into the cache."""
    from sdetalk_jax.data.corpus import open_corpus
    from sdetalk_jax.data.pipeline import ClipDataset
    from sdetalk_jax.models.wav2vec2.encoder import ContextEncoder

    config = rehearsal_config(settings)
    start = time.perf_counter()
    encoder = ContextEncoder.from_config(config, allow_download=False)
    loaded = time.perf_counter() - start
    corpus = open_corpus(config)
    clips, audio_seconds = 0, 0.0
    start = time.perf_counter()
    for split in ("train", "val"):
        dataset = ClipDataset.from_corpus(corpus, split, (), context_encoder=encoder)
        for index, clip in enumerate(dataset.clips):
            dataset.log_mel(index)  # the clip's audio features, the encoder's included
            clips += 1
            audio_seconds += clip.num_frames / corpus.fps
    results.put(
        {
            "encoder_load_s": loaded,
            "features_s": time.perf_counter() - start,
            "clips": clips,
            "audio_s": audio_seconds,
            "rss_gib": peak_rss_gib(),
        }
    )


def resave_checkpoint(workdir: str, results) -> None:
    """Phase 3 (own process): the last checkpoint restored, then saved again, timed alone."""
    from sdetalk_jax import checkpoint

    manager = checkpoint.checkpoint_manager(workdir, read_only=True)
    state, position = checkpoint.restore_checkpoint(manager, None)  # as saved, on the host
    target = os.path.join(workdir, "resave")
    shutil.rmtree(target, ignore_errors=True)
    copy = checkpoint.checkpoint_manager(workdir, "resave", keep=1)
    start = time.perf_counter()
    checkpoint.save_checkpoint(copy, state, position)
    copy.wait_until_finished()
    results.put(
        {
            "save_s": time.perf_counter() - start,
            "checkpoint_mb": folder_megabytes(target),
            "rss_gib": peak_rss_gib(),
        }
    )


def fit_prototypes(workdir: str, steps: int, results) -> None:
    """Phase 4 (own process): the emotion prototypes that training fits when it ends
    (`train.emotion_prototype_steps`): once with 1 refinement step, whose time (reading the
    training clips, compiling) is reported as the first fit's, then with 1 and with 1 + `steps`
    steps: the cost per step from the difference, the rest of a fit fixed."""
    from sdetalk_jax.data.corpus import open_corpus
    from sdetalk_jax.data.pipeline import ClipDataset
    from sdetalk_jax.emotion_control import gather_prototypes
    from sdetalk_jax.inference import TrainedModel

    model = TrainedModel.load(workdir)
    dataset = ClipDataset.from_corpus(
        open_corpus(model.config), "train", model.assets.subjects, model.encoder
    )
    seconds = []
    for refine_steps in (1, 1, 1 + steps):
        start = time.perf_counter()
        gather_prototypes(
            model.networks.generator, model.params, dataset, model.assets.emotion_categories,
            model.step, refine_steps=refine_steps,
        )  # fmt: skip
        seconds.append(time.perf_counter() - start)
    per_step = (seconds[2] - seconds[1]) / steps
    results.put(
        {
            "first_s": seconds[0],
            "fixed_s": seconds[1] - per_step,
            "per_step_s": per_step,
            "rss_gib": peak_rss_gib(),
        }
    )


def in_own_process(function, *args) -> dict:
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    process = context.Process(target=function, args=(*args, results))
    process.start()
    while True:
        try:
            outcome = results.get(timeout=5)
            break
        except queue.Empty:
            if not process.is_alive():  # it failed before reporting (its traceback is above)
                message = f"{function.__name__} failed (exit code {process.exitcode})"
                raise SystemExit(message) from None
    process.join()
    return outcome


def train_in_own_process(settings: dict, workdir: str) -> tuple[float, float]:
    """Phase 2: the training command itself; (wall seconds, peak RSS GiB)."""
    command = [sys.executable, "-m", "sdetalk_jax.train", "--config", "configs/biwi.py",
               "--workdir", workdir, *command_line(settings)]  # fmt: skip
    print("$ " + " ".join(command), flush=True)
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPOSITORY)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"training failed (exit status {os.waitstatus_to_exitcode(status)})")
    return seconds, usage.ru_maxrss / 2**20


def epoch_seconds(workdir: str) -> list[float]:
    with open(os.path.join(workdir, "metrics.jsonl")) as handle:
        records = [json.loads(line) for line in handle]
    return [r["time/epoch_seconds"] for r in records if "time/epoch_seconds" in r]


def prototype_rows(prototypes: dict, clips: int) -> list[tuple[str, str]]:
    steps = rehearsal_config({}).train.emotion_prototype_steps
    return [
        ("emotion prototypes at the end, first fit of 1 step (reads the clips, compiles) (s)",
         f"{prototypes['first_s']:.1f}"),
        (f"emotion prototypes: then fixed / per step / {steps} steps (s)",
         f"{prototypes['fixed_s']:.1f} / {prototypes['per_step_s']:.2f} / "
         f"{prototypes['fixed_s'] + steps * prototypes['per_step_s']:.0f} "
         f"(on {clips} clips; peak RSS {prototypes['rss_gib']:.2f} GiB)"),
    ]  # fmt: skip


def time_prototypes_only(run: str, args) -> int:
    if not os.path.exists(os.path.join(run, "config.json")):
        raise SystemExit(f"{run}: no run here; run this benchmark with --keep first")
    prototypes = in_own_process(fit_prototypes, run, args.prototype_steps)
    with open(os.path.join(run, "config.json")) as handle:
        first, last = json.load(handle)["data"]["splits"]["train_sentences"]
    clips = 6 * (last - first + 1) * 2  # six speakers, emotional and neutral takes
    print("| measure | value |")
    print("|---|---|")
    for name, value in prototype_rows(prototypes, clips):
        print(f"| {name} | {value} |")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/biwi-rehearsal")
    parser.add_argument("--sentences", type=int, default=6, help="per speaker (at least 3)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument(
        "--prototype-steps", type=int, default=30, help="refinement steps timed (projected to 600)"
    )
    parser.add_argument("--vertices", type=int, default=BIWI_VERTICES, help="less: a smoke test")
    parser.add_argument("--keep", action="store_true", help="keep the corpus and run folders")
    parser.add_argument(
        "--prototypes-only", action="store_true",
        help="time only the emotion prototypes' fit, on the run a --keep run left in --workdir",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.prototypes_only:
        return time_prototypes_only(os.path.join(os.path.abspath(args.workdir), "run"), args)
    if args.sentences < 3:
        parser.error("--sentences must be at least 3 (training, validation, test)")
    from sdetalk_jax.data import synthetic
    from sdetalk_jax.data.corpus import open_corpus

    workdir = os.path.abspath(args.workdir)
    settings = overrides(workdir, args.sentences, args.epochs)
    start = time.perf_counter()
    synthetic.generate_corpus(
        settings["data.root"], subjects=6, sentences=args.sentences, vertices=args.vertices,
        seed=0, workers=os.cpu_count(),
    )  # fmt: skip
    generate_s = time.perf_counter() - start
    encoder_mb = save_random_encoder(settings["model.wav2vec2_checkpoint"])
    corpus = open_corpus(rehearsal_config(settings))
    train_clips = corpus.split("train")
    train_frames = sum(clip.num_frames for clip in train_clips)

    shutil.rmtree(settings["data.feature_cache"], ignore_errors=True)
    features = in_own_process(extract_features, settings)
    cache_mb = folder_megabytes(settings["data.feature_cache"])
    run = os.path.join(workdir, "run")
    shutil.rmtree(run, ignore_errors=True)
    train_s, train_rss = train_in_own_process(settings, run)
    epochs = epoch_seconds(run)
    saved = in_own_process(resave_checkpoint, run)
    prototypes = in_own_process(fit_prototypes, run, args.prototype_steps)

    steady = sum(epochs[1:]) / max(len(epochs) - 1, 1)  # the first epoch compiles
    frames_per_s = train_frames / steady
    cache_per_audio_s = cache_mb / features["audio_s"]
    biwi_epoch_s = BIWI_TRAIN_FRAMES / frames_per_s
    rows = [
        ("corpus (generated here, not part of the job)",
         f"6 speakers x {args.sentences} sentences x 2 takes, {args.vertices} vertices, "
         f"{generate_s:.0f} s to generate"),
        ("training clips / frames per epoch (batch 1, configs/biwi.py)",
         f"{len(train_clips)} / {train_frames}"),
        ("encoder folder (random wav2vec2-base, safetensors)", f"{encoder_mb:.0f} MB"),
        ("encoder load (s)", f"{features['encoder_load_s']:.1f}"),
        ("feature extraction: clips, audio (s), time (s)",
         f"{features['clips']}, {features['audio_s']:.0f}, {features['features_s']:.1f} "
         f"({features['audio_s'] / features['features_s']:.1f}x real time)"),
        ("feature cache on disk", f"{cache_mb:.1f} MB ({cache_per_audio_s:.3f} MB per s of audio)"),
        ("peak RSS, feature extraction (GiB)", f"{features['rss_gib']:.2f}"),
        ("epoch time, first (compiles) / mean of the others (s)",
         f"{epochs[0]:.1f} / {steady:.1f}" if epochs else "none"),
        ("training frames/s, steady epochs (validation and checkpoint included)",
         f"{frames_per_s:.1f}"),
        ("whole training command (s)", f"{train_s:.1f}"),
        ("peak RSS, training (GiB)", f"{train_rss:.2f}"),
        ("checkpoint size (MB) / save time alone (s)",
         f"{saved['checkpoint_mb']:.0f} / {saved['save_s']:.2f}"),
        *prototype_rows(prototypes, len(train_clips)),
        ("projected BIWI epoch (41k frames) (s)", f"{biwi_epoch_s:.0f}"),
        (f"projected {PAPER_EPOCHS} BIWI epochs (h)", f"{PAPER_EPOCHS * biwi_epoch_s / 3600:.1f}"),
        ("projected BIWI feature cache (27 min of training audio)",
         f"{cache_per_audio_s * BIWI_TRAIN_FRAMES / 25:.0f} MB"),
    ]  # fmt: skip
    print(f"\nBIWI rehearsal: configs/biwi.py, {args.epochs} epochs\n")
    print("| measure | value |")
    print("|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
