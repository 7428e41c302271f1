"""`python -m sdetalk_jax.data check --root DIR`: read every clip, print a summary and each problem."""

from __future__ import annotations

import sys

from sdetalk_jax import cli
from sdetalk_jax.data import batching, biwi


def check(root: str, *, global_batch: int = 8, quiet: bool = False) -> int:
    """Prints the summary and every problem; returns the exit status (1 when there are errors)."""
    try:
        corpus = biwi.scan_corpus(root, progress=not quiet)
    except biwi.DataError as err:
        return cli.report(err)
    for line in biwi.summarize(corpus):
        print(line)
    train_lengths = [clip.num_frames for clip in corpus.split("train")]
    if train_lengths:
        buckets = batching.bucket_lengths(max(train_lengths))
        plans = batching.epoch_plan(
            train_lengths, global_batch=global_batch, buckets=buckets, seed=0, epoch=0
        )
        print(
            f"  batching (train, global batch {global_batch}): {len(plans)} batches, "
            f"{batching.count_shapes(plans)} distinct shapes, buckets {list(buckets)}"
        )
    for problem in corpus.problems:
        print(problem, file=sys.stderr if problem.severity == "error" else sys.stdout)
    return 1 if corpus.errors else 0


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser("python -m sdetalk_jax.data", __doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    check_parser = commands.add_parser("check", help="validate a corpus in the BIWI layout")
    check_parser.add_argument("--root", required=True, help="corpus folder (see docs/data.md)")
    check_parser.add_argument("--global-batch", type=int, default=8)
    check_parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.command == "check":
        return check(args.root, global_batch=args.global_batch, quiet=args.quiet)
    return 2


if __name__ == "__main__":
    sys.exit(main())
