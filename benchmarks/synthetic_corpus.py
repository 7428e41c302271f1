"""Times SynthBIWI generation and prints a table.

    python benchmarks/synthetic_corpus.py            # default CPU corpus + a BIWI-sized sample
    python benchmarks/synthetic_corpus.py --quick    # small sizes only

Each row generates a fresh corpus in a temporary folder (deleted afterwards).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

from sdetalk_jax.data import synthetic


def folder_megabytes(root: str) -> float:
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(root) for f in files)
    return total / 2**20


def run(subjects: int, sentences: int, vertices: int, workers: int | None) -> dict:
    scratch = tempfile.mkdtemp(prefix="synthbiwi-bench-")
    try:
        root = os.path.join(scratch, "corpus")
        start = time.perf_counter()
        synthetic.generate_corpus(
            root,
            subjects=subjects,
            sentences=sentences,
            vertices=vertices,
            workers=workers,
            progress=False,
        )
        seconds = time.perf_counter() - start
        clips = 2 * subjects * sentences
        return dict(
            subjects=subjects,
            sentences=sentences,
            vertices=vertices,
            clips=clips,
            seconds=seconds,
            clips_per_s=clips / seconds,
            megabytes=folder_megabytes(root),
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()
    sizes = [(14, 4, 4000), (2, 4, 23370)] if args.quick else [(14, 40, 4000), (14, 4, 23370)]
    rows = [run(*size, args.workers) for size in sizes]
    print(f"cores: {os.cpu_count()}, workers: {args.workers or 'all cores'}")
    print("| subjects | sentences | vertices | clips | seconds | clips/s | size (MB) |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['subjects']} | {r['sentences']} | {r['vertices']} | {r['clips']} | "
            f"{r['seconds']:.1f} | {r['clips_per_s']:.1f} | {r['megabytes']:.0f} |"
        )


if __name__ == "__main__":
    main()
