"""SDETalk over several seeds: every metric of the evaluation, mean and spread, beside references.

    python -m studies.seeds --seeds 0 1 2 [--config configs/synthetic.py] [--workdir runs/seeds]
        [--splits test-a test-b] [--reference docs/seeds-reference.json] [--record FILE]
        [-- --config.loss.lambda_r=1 ...]

For each seed it trains `--config` with `--config.train.seed=SEED` (and the overrides after `--`)
into WORKDIR/seedSEED (a finished run is reused: training resumes, nothing to do), evaluates every
split there (`python -m sdetalk_jax.evaluate`, noise seed 0, 4 samples), and prints one table per
split: each metric of SDETalk, the neutral generator alone and the template alone as mean +- standard
deviation over the seeds. Beside them, on the same clips:

* `recorded`: the means of an earlier run of this script (`--reference`, written by `--record`),
  for example the code before a change;
* `SynthBIWI oracle`: the corpus generator's own head motion, re-drawn with each clip's true speech
  envelope and emotion style but other random draws: the best any model can do for head motion on
  SynthBIWI, where the direction of each movement is random per clip (only on a SynthBIWI corpus).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ORACLE = "SynthBIWI oracle"
ORACLE_DRAWS = 4


def run(command: list[str]) -> None:
    print("$", " ".join(command), flush=True)
    subprocess.run(command, cwd=REPO, check=True)


def train_and_evaluate(args, seed: int) -> dict[str, dict]:
    workdir = os.path.join(args.workdir, f"seed{seed}")
    python = [sys.executable, "-m"]
    run(
        [*python, "sdetalk_jax.train", "--config", args.config, "--workdir", workdir,
         f"--config.train.seed={seed}", "--config.train.progress=False", *args.overrides]
    )  # fmt: skip
    reports = {}
    for split in args.splits:
        out = os.path.join(workdir, "eval")
        run([*python, "sdetalk_jax.evaluate", "--workdir", workdir, "--split", split, "--force",
             "--out", out])  # fmt: skip
        with open(os.path.join(out, f"{split}.json")) as handle:
            reports[split] = json.load(handle)
    return reports


def oracle_row(workdir: str, split: str) -> dict[str, float]:
    """The generator's head motion, re-drawn, measured as evaluate measures a model's."""
    import soundfile

    from sdetalk_jax import checkpoint, metrics
    from sdetalk_jax.data import synthetic
    from sdetalk_jax.data.corpus import open_corpus
    from sdetalk_jax.data.face_model import rotation_matrices
    from sdetalk_jax.data.pipeline import ClipDataset

    config = checkpoint.load_run_config(workdir)
    corpus = open_corpus(config)
    dataset = ClipDataset.from_corpus(corpus, split, tuple(config.data.splits.train_subjects))
    rows, shares = [], []
    for index, clip in enumerate(dataset.clips):
        example = dataset.example(index)
        waveform, rate = soundfile.read(clip.audio_path, dtype="float64")
        n = clip.num_frames
        envelope = synthetic.speech_envelope(waveform, rate, n, corpus.fps)
        mixture = clip.emotion / clip.emotion.sum() if clip.emotional else None
        amplitude, nod = synthetic.head_style(mixture)
        draws = []
        for draw in range(ORACLE_DRAWS):
            rng = np.random.default_rng([10_000 + draw, index])
            pitch, yaw, roll, _ = synthetic.head_motion(
                envelope, corpus.fps, amplitude=amplitude, nod=nod, rng=rng
            )
            draws.append(rotation_matrices(pitch, yaw, roll).astype(np.float64))
        truth = example["rotation"]
        true_speed = metrics.mean_head_speed_deg(truth, corpus.fps)
        rows.append(
            {
                "head_rotation_error": metrics.head_rotation_error_deg(draws[0], truth),
                "head_speed_ratio": metrics.mean_head_speed_deg(draws[0], corpus.fps) / true_speed,
                "head_angle_ratio": metrics.rms_head_angle_deg(draws[0])
                / metrics.rms_head_angle_deg(truth),
                "speech_head_consistency": metrics.speech_head_consistency(
                    example["audio"], 16_000, draws[0], corpus.fps
                ),
                "head_diversity": metrics.head_motion_diversity_deg(draws),
            }
        )
        shares.append((metrics.nod_share(draws[0]), metrics.nod_share(truth)))
    row = {name: float(np.mean([r[name] for r in rows])) for name in rows[0]}
    mine, truth = np.array(shares).T
    row["nod_share_correlation"] = metrics.lagged_correlation(mine, truth, 0)
    # Every oracle draw is a sample: its "sampled" figures are its figures.
    for name in ("head_rotation_error", "head_speed_ratio", "head_angle_ratio",
                 "speech_head_consistency", "nod_share_correlation"):  # fmt: skip
        row[f"{name}_sampled"] = row[name]
    return row


def summarise(per_seed: list[dict], split: str) -> dict[str, dict[str, tuple[float, float]]]:
    """{method: {metric: (mean, std over seeds)}}."""
    methods = per_seed[0][split]["methods"]
    return {
        method: {
            name: (
                float(np.mean([r[split]["methods"][method][name] for r in per_seed])),
                float(np.std([r[split]["methods"][method][name] for r in per_seed])),
            )
            for name in methods[method]
        }
        for method in methods
    }


def print_table(split: str, summary: dict, recorded: dict | None, oracle: dict | None, seeds):
    methods = list(summary)
    header = ["metric", *[f"{m} ({len(seeds)} seeds)" for m in methods]]
    if recorded:
        header.append("SDETalk, recorded")
    if oracle:
        header.append(ORACLE)
    print(f"\n### {split}\n")
    print("| " + " | ".join(header) + " |")
    print("|---|" + "---:|" * (len(header) - 1))
    for name in summary[methods[0]]:
        cells = []
        for method in methods:
            mean, spread = summary[method][name]
            cells.append("n/a" if not np.isfinite(mean) else f"{mean:.4g} +- {spread:.2g}")
        if recorded:
            value = recorded.get("SDETalk", {}).get(name)
            cells.append("n/a" if value is None or not np.isfinite(value) else f"{value:.4g}")
        if oracle:
            value = oracle.get(name)
            cells.append("" if value is None else f"{value:.4g}")
        print(f"| {name} | " + " | ".join(cells) + " |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--config", default="configs/synthetic.py")
    parser.add_argument("--workdir", default="runs/seeds")
    parser.add_argument("--splits", nargs="+", default=["test-a", "test-b"])
    parser.add_argument("--reference", help="JSON of an earlier run's means (--record)")
    parser.add_argument("--record", help="write this run's means here")
    parser.add_argument("--no-oracle", action="store_true", help="skip the generator's reference")
    parser.add_argument("overrides", nargs=argparse.REMAINDER, help="-- then --config.x=y ...")
    args = parser.parse_args()
    args.overrides = [o for o in args.overrides if o != "--"]
    per_seed = [train_and_evaluate(args, seed) for seed in args.seeds]
    reference = {}
    if args.reference:
        with open(args.reference) as handle:
            reference = json.load(handle)
    record = {"seeds": args.seeds, "config": args.config, "overrides": args.overrides}
    for split in args.splits:
        summary = summarise(per_seed, split)
        oracle = None
        if not args.no_oracle:
            oracle = oracle_row(os.path.join(args.workdir, f"seed{args.seeds[0]}"), split)
        print_table(split, summary, reference.get(split), oracle, args.seeds)
        record[split] = {m: {k: v[0] for k, v in row.items()} for m, row in summary.items()}
        record[split]["spread"] = {k: v[1] for k, v in summary["SDETalk"].items()}
        if oracle:
            record[split][ORACLE] = oracle
    if args.record:
        with open(args.record, "w") as handle:
            json.dump(record, handle, indent=1, sort_keys=True)
            handle.write("\n")
        print(f"\nwrote {args.record}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
