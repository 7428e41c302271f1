"""configs/biwi.py and configs/biwi_paper.py measured on a BIWI proxy, over several seeds.

    python -m studies.biwi_proxy [--workdir runs/biwi-proxy] [--seeds 0 1 2] [--vertices 1000]
        [--epochs 12] [--configs biwi biwi_paper] [--poses with without] [--record FILE]
    python -m studies.biwi_proxy --show docs/biwi-proxy.json

The proxy is SynthBIWI shaped like BIWI where the loss balance depends on it: BIWI's 14 speakers
and 40 sentences, the splits of configs/biwi.py, vertices in metres (import_biwi's default), head
pose present (`WORKDIR/corpus`) and, as a second case, absent (`WORKDIR/corpus-no-pose`, the same
corpus without head_pose/, as import_biwi writes BIWI); its context encoder is a randomly
initialised wav2vec2-base (12 layers, 768 wide), frozen and saved as a local Hugging Face folder.
Only the vertex count is smaller than BIWI's, so that the runs fit on a CPU.

Each config is trained unchanged but for its data root, its encoder folder, the feature cache, the
number of epochs (`--epochs`; the schedule is the config's, over those epochs) and
`train.emotion_prototype_steps=-1` (the emotion control's prototypes, which no figure here reads,
are left to the first `animate --emotion`). Each run is evaluated on test-a and test-b (noise seed
0, 4 samples) and the tables give, per split and case, each figure of SDETalk under each config
beside the same runs' neutral generator alone (G_n, Eq. 2) and the template alone, as mean +- standard
deviation over the seeds. A finished run or evaluation is reused. With `--record`, the columns
of the configs and cases studied replace theirs in an existing record and the others are kept.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys

import numpy as np

from benchmarks.biwi_rehearsal import save_random_encoder
from sdetalk_jax.data.corpus import SYNTHETIC_FORMAT_VERSION
from sdetalk_jax.fileio import write_json

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPLITS = ("test-a", "test-b")
POSES = {"with": "corpus", "without": "corpus-no-pose"}
BASELINES = ("neutral generator alone", "template alone")
# (metric of evaluate's report, row label): the figures the proxy is judged on.
ROWS = (
    ("mean_vertex_error", "mean vertex error (mm)"),
    ("lve_squared", "LVE (mm^2)"),
    ("fdd", "FDD (mm)"),
    ("emotion_error", "emotion error (baselines: mean mixture)"),
    ("head_speed_ratio_sampled", "head speed ratio, a sample"),
    ("head_angle_ratio_sampled", "RMS head angle ratio, a sample"),
    ("speech_head_consistency_sampled", "speech/head r, a sample"),
    ("head_diversity", "samples apart, head (deg)"),
    ("expression_diversity", "samples apart, expression (mm)"),
)


def run(command: list[str]) -> None:
    print("$", " ".join(command), flush=True)
    subprocess.run(command, cwd=REPO, check=True)


def build_proxy(workdir: str, vertices: int) -> None:
    """The two corpora and the encoder folder (each only when missing)."""
    with_pose = os.path.join(workdir, POSES["with"])
    if not os.path.exists(os.path.join(with_pose, "corpus.json")):
        run([sys.executable, "-m", "sdetalk_jax.data.synthetic", "--out", with_pose,
             "--subjects", "14", "--sentences", "40", "--vertices", str(vertices), "--seed", "0",
             "--quiet"])  # fmt: skip
    without_pose = os.path.join(workdir, POSES["without"])
    if not os.path.exists(without_pose):
        staging = f"{without_pose}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        # hard links: the same files, without head_pose/
        shutil.copytree(
            with_pose, staging, copy_function=os.link, ignore=shutil.ignore_patterns("head_pose")
        )
        os.rename(staging, without_pose)
    save_random_encoder(os.path.join(workdir, "wav2vec2-base-random"))


def train_and_evaluate(workdir: str, config: str, pose: str, seed: int, epochs: int) -> dict:
    """{split: evaluate's report} of one run, trained and evaluated unless already done."""
    run_dir = os.path.join(workdir, "runs", f"{config}-{pose}-pose", f"seed{seed}")
    out = os.path.join(run_dir, "eval")
    paths = {split: os.path.join(out, f"{split}.json") for split in SPLITS}
    if not all(os.path.exists(path) for path in paths.values()):
        overrides = {
            "data.root": os.path.join(workdir, POSES[pose]),
            "data.feature_cache": os.path.join(workdir, "features"),
            "model.wav2vec2_checkpoint": os.path.join(workdir, "wav2vec2-base-random"),
            "train.epochs": epochs,
            "train.seed": seed,
            "train.progress": False,
            "train.emotion_prototype_steps": -1,
        }
        run([sys.executable, "-m", "sdetalk_jax.train", "--config", f"configs/{config}.py",
             "--workdir", run_dir, *(f"--config.{k}={v}" for k, v in overrides.items())])  # fmt: skip
        for split in SPLITS:
            run([sys.executable, "-m", "sdetalk_jax.evaluate", "--workdir", run_dir,
                 "--split", split, "--force", "--out", out])  # fmt: skip
    reports = {}
    for split, path in paths.items():
        with open(path) as handle:
            reports[split] = json.load(handle)
    return reports


def column(reports: list[dict], split: str, method: str) -> dict[str, tuple[float, float]]:
    """{metric: (mean, std over seeds)} of one method."""
    values = {name: [r[split]["methods"][method][name] for r in reports] for name, _ in ROWS}
    return {name: (float(np.mean(v)), float(np.std(v))) for name, v in values.items()}


def print_table(split: str, pose: str, columns: dict[str, dict], seeds) -> None:
    print(f"\n### {split}, head pose {pose} ({len(seeds)} seeds: {seeds})\n")
    print("| figure | " + " | ".join(columns) + " |")
    print("|---|" + "---:|" * len(columns))
    for name, label in ROWS:
        cells = []
        for figures in columns.values():
            mean, spread = figures[name]
            cells.append("n/a" if not np.isfinite(mean) else f"{mean:.4g} +- {spread:.2g}")
        print(f"| {label} | " + " | ".join(cells) + " |")


def gains(columns: dict[str, dict], config: str) -> dict[str, float]:
    """How far below its baseline SDETalk's mean is, in % of the baseline: the face against the
    same runs' G_n, the emotion against the mean mixture (G_n's column reports it)."""
    mine = columns[f"SDETalk, {config}"]
    neutral = columns[f"G_n, {config}"]
    return {
        name: 100.0 * (1.0 - mine[name][0] / neutral[name][0])
        for name in ("mean_vertex_error", "emotion_error")
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="runs/biwi-proxy")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--vertices", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--configs", nargs="+", default=["biwi", "biwi_paper"])
    parser.add_argument("--poses", nargs="+", choices=sorted(POSES), default=["with", "without"])
    parser.add_argument("--record", help="write the tables' means and spreads here (JSON)")
    parser.add_argument("--show", metavar="RECORD", help="print the tables of a record, no runs")
    args = parser.parse_args()
    if args.show:
        with open(args.show) as handle:
            print_record(json.load(handle))
        return 0
    workdir = os.path.abspath(args.workdir)
    build_proxy(workdir, args.vertices)
    reports = {}
    for seed in args.seeds:  # every case of one seed first: a cut-short study is still a table
        for pose in args.poses:
            for config in args.configs:
                reports.setdefault((config, pose), []).append(
                    train_and_evaluate(workdir, config, pose, seed, args.epochs)
                )
    record = {
        "seeds": args.seeds,
        "vertices": args.vertices,
        "epochs": args.epochs,
        "format_version": SYNTHETIC_FORMAT_VERSION,
    }
    for pose in args.poses:
        for split in SPLITS:
            first = reports[(args.configs[0], pose)]
            columns = {"template": column(first, split, "template alone")}
            for config in args.configs:
                runs = reports[(config, pose)]
                columns[f"G_n, {config}"] = column(runs, split, "neutral generator alone")
                columns[f"SDETalk, {config}"] = column(runs, split, "SDETalk")
            record[f"{split}, head pose {pose}"] = columns
    if args.record:
        record = merged_record(args.record, record)
        write_json(args.record, record)
    print_record(record)
    if args.record:
        print(f"\nwrote {args.record}")
    return 0


def print_record(record: dict) -> None:
    """The tables of a record, head pose present first, and each config's gains."""
    for pose in POSES:
        for split in SPLITS:
            columns = record.get(f"{split}, head pose {pose}")
            if columns is None:
                continue
            configs = [name.split(", ", 1)[1] for name in columns if name.startswith("SDETalk, ")]
            configs.sort(key=lambda name: (name != "biwi", name))
            ordered = {"template": columns["template"]}
            for config in configs:
                ordered[f"G_n, {config}"] = columns[f"G_n, {config}"]
                ordered[f"SDETalk, {config}"] = columns[f"SDETalk, {config}"]
            print_table(split, pose, ordered, record["seeds"])
            for config in configs:
                below = gains(ordered, config)
                print(
                    f"{config}: mean vertex error {below['mean_vertex_error']:.1f} % below G_n, "
                    f"emotion error {below['emotion_error']:.1f} % below the mean mixture"
                )


def merged_record(path: str, record: dict) -> dict:
    """`record` over the one already at `path` (if any): a study of some configs or cases
    replaces their columns and keeps the others', at the same seeds, vertices and epochs, on a
    corpus of the same SynthBIWI format."""
    if not os.path.exists(path):
        return record
    with open(path) as handle:
        earlier = json.load(handle)
    for key in ("seeds", "vertices", "epochs", "format_version"):
        if earlier.get(key) != record[key]:
            raise SystemExit(
                f"{path} holds a study at {key} = {earlier.get(key)}, this one is at "
                f"{record[key]}: write it to another --record"
            )
    for case, columns in record.items():
        if isinstance(columns, dict):
            earlier.setdefault(case, {}).update(columns)
    return earlier


if __name__ == "__main__":
    sys.exit(main())
