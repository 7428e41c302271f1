"""The figures of a `make demo` run, exactly: record them, or compare them with a record.

    python -m studies.demo_figures --run runs/synthetic --record docs/demo-figures.json
    python -m studies.demo_figures --run runs/synthetic --compare docs/demo-figures.json

What it reads of the run: every validation record of metrics.jsonl (all epochs, every value), a
digest of every training record (all steps, every loss), the test-a evaluation (the table of every
method and a digest of every per-clip value) and a digest of every array of the animations. Floats
are kept as their exact repr, so "equal" means bitwise equal. `--compare` prints a table of the
validation and test-a figures side by side and exits with 1 when anything differs: the check that a
change which should change no number (a refactor) changes none. Wall-clock times (`time/*`) and
file timestamps are left out; they differ between identical runs.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import sys

import numpy as np


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def _records(run: str) -> tuple[dict, list]:
    validation, training = {}, []
    with open(os.path.join(run, "metrics.jsonl")) as handle:
        for line in handle:
            record = json.loads(line)
            step = record.pop("step")
            val = {k: v for k, v in record.items() if k.startswith("val/")}
            if val:
                validation[f"step {step}"] = {k: repr(v) for k, v in sorted(val.items())}
            train = {k: repr(v) for k, v in sorted(record.items()) if k.startswith("train/")}
            if train:
                training.append([step, train])
    return validation, training


def _animations(run: str) -> dict:
    digests = {}
    for path in sorted(glob.glob(os.path.join(run, "animations", "*.npz"))):
        with np.load(path, allow_pickle=False) as archive:
            for key in sorted(archive.files):
                array = np.ascontiguousarray(archive[key])
                name = f"{os.path.basename(path)}:{key}"
                digests[name] = hashlib.sha256(array.tobytes()).hexdigest()
    return digests


def figures(run: str, split: str = "test-a") -> dict:
    validation, training = _records(run)
    with open(os.path.join(run, "eval", f"{split}.json")) as handle:
        evaluation = json.load(handle)
    table = {
        f"{split}/{method}/{name}": repr(value)
        for method, row in evaluation["methods"].items()
        for name, value in row.items()
    }
    table[f"{split}/ground truth/speech_head_consistency"] = repr(
        evaluation["ground_truth_speech_head_consistency"]
    )
    return {
        "validation": validation,
        "final_train_record": training[-1] if training else None,
        "train_records_sha256": _digest(training),
        "train_records": len(training),
        "evaluation": table,
        # One digest per method and metric over every clip: a metric added later is new, not a
        # difference.
        "evaluation_per_clip_sha256": {
            f"{method}/{name}": _digest(
                [clip["values"][method][name] for clip in evaluation["per_clip"]]
            )
            for method in evaluation["per_clip"][0]["values"]
            for name in evaluation["per_clip"][0]["values"][method]
        },
        "evaluation_checkpoint_step": evaluation["checkpoint_step"],
        "animations_sha256": _animations(run),
    }


def _flatten(value, prefix=""):
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _flatten(item, f"{prefix}{key} | " if prefix or key else "")
    else:
        yield prefix.rstrip(" |"), value


def compare(before: dict, after: dict) -> int:
    """Prints the validation and evaluation figures side by side; 0 when all are equal."""
    left, right = dict(_flatten(before)), dict(_flatten(after))
    # Figures the record does not have (a metric added since) are new, not different.
    added = sorted(set(right) - set(left))
    names = sorted(set(left))
    differing = [n for n in names if left.get(n) != right.get(n)]
    shown = [n for n in names if n.startswith(("validation | step", "evaluation"))]
    last_val = [n for n in shown if n.startswith("validation")]
    last_step = max((n.split(" | ")[1] for n in last_val), key=lambda s: int(s.split()[1]))
    print("| figure | before | after | bitwise equal |")
    print("|---|---:|---:|:---:|")
    for name in shown:
        if name.startswith("validation") and f"| {last_step} |" not in name:
            continue  # every epoch is compared; the table shows the last one
        equal = "yes" if left.get(name) == right.get(name) else "**no**"
        print(f"| {name} | {left.get(name)} | {right.get(name)} | {equal} |")
    print()
    if added:
        print(
            f"{len(added)} figures are new since the record (not compared): {', '.join(added[:6])} ..."
        )
    print(f"{len(names)} figures and digests compared (every epoch's validation, every training")
    print("step's losses, every test-a clip, every animation array): ", end="")
    if differing:
        print(f"{len(differing)} differ:")
        for name in differing:
            print(f"  {name}: {left.get(name)} -> {right.get(name)}")
        return 1
    print("all bitwise equal.")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default="runs/synthetic", help="the demo's run folder")
    parser.add_argument("--split", default="test-a")
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--record", metavar="JSON", help="write the run's figures here")
    action.add_argument("--compare", metavar="JSON", help="compare the run with this record")
    args = parser.parse_args(argv)
    current = figures(args.run, args.split)
    if args.record:
        with open(args.record, "w") as handle:
            json.dump(current, handle, indent=1, sort_keys=True)
            handle.write("\n")
        print(f"{args.record}: {len(dict(_flatten(current)))} figures and digests of {args.run}")
        return 0
    with open(args.compare) as handle:
        return compare(json.load(handle), current)


if __name__ == "__main__":
    sys.exit(main())
