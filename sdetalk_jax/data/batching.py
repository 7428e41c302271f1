"""Bucketed, padded, deterministic batching of variable-length clips.

Three promises the training loop relies on:
  * every clip length is rounded up to one of a few bucket lengths, so a jitted step sees a handful of
    shapes per run (`count_shapes`), not one per clip;
  * the order of an epoch is a pure function of (seed, epoch): resuming at epoch e replays it exactly;
  * every process of a multi-host run computes the same global plan and takes its own disjoint rows.
A global batch always has `global_batch` rows; rows past the end of a bucket are padding rows with
`clip_mask = False`, so the last batch of a bucket has the same shape as the others.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

PAD_ROW = -1


def bucket_lengths(
    max_length: int, *, min_length: int = 32, growth: float = 1.25, multiple: int = 8
) -> tuple[int, ...]:
    """Geometric bucket lengths from `min_length` up to one that holds `max_length`.

    A growth of 1.25 wastes at most 20% of a padded batch and gives about 10 shapes for 1-30 s clips.
    """
    if max_length <= 0 or min_length <= 0 or growth <= 1 or multiple <= 0:
        raise ValueError("bucket_lengths needs positive lengths, growth > 1 and multiple > 0")

    def round_up(n: float) -> int:
        return int(math.ceil(n / multiple) * multiple)

    sizes = [round_up(min_length)]
    while sizes[-1] < max_length:
        sizes.append(max(round_up(sizes[-1] * growth), sizes[-1] + multiple))
    return tuple(sizes)


def bucket_for(length: int, buckets: Sequence[int]) -> int:
    """The smallest bucket length that holds `length` frames."""
    for size in buckets:
        if length <= size:
            return size
    raise ValueError(f"a clip of {length} frames is longer than the largest bucket ({buckets[-1]})")


@dataclasses.dataclass(frozen=True)
class BatchPlan:
    """One global batch: its padded length and the clip index of each row (PAD_ROW for padding)."""

    length: int
    rows: tuple[int, ...]

    def process_rows(self, process_index: int, process_count: int) -> tuple[int, ...]:
        """This process's contiguous, disjoint share of the global rows."""
        if len(self.rows) % process_count:
            raise ValueError(
                f"global batch of {len(self.rows)} rows does not divide over {process_count} processes"
            )
        share = len(self.rows) // process_count
        return self.rows[process_index * share : (process_index + 1) * share]


def epoch_plan(
    lengths: Sequence[int],
    *,
    global_batch: int,
    buckets: Sequence[int],
    seed: int,
    epoch: int,
    shuffle: bool = True,
) -> list[BatchPlan]:
    """The batches of one epoch, a pure function of (lengths, global_batch, buckets, seed, epoch).

    Clips are grouped by bucket, shuffled within it, cut into batches of `global_batch` rows (the
    last padded with PAD_ROW), and the batches of all buckets shuffled together.
    """
    if global_batch <= 0:
        raise ValueError(f"global_batch must be positive, got {global_batch}")
    rng = np.random.default_rng([seed, epoch])
    by_bucket: dict[int, list[int]] = {}
    for index, length in enumerate(lengths):
        by_bucket.setdefault(bucket_for(int(length), buckets), []).append(index)
    plans = []
    for size in sorted(by_bucket):
        members = np.asarray(by_bucket[size])
        if shuffle:
            members = rng.permutation(members)
        for start in range(0, len(members), global_batch):
            rows = members[start : start + global_batch].tolist()
            rows += [PAD_ROW] * (global_batch - len(rows))
            plans.append(BatchPlan(size, tuple(rows)))
    if shuffle:
        plans = [plans[i] for i in rng.permutation(len(plans))]
    return plans


def count_shapes(plans: Sequence[BatchPlan]) -> int:
    """How many distinct batch shapes (hence jit compilations of a step) an epoch produces."""
    return len({(plan.length, len(plan.rows)) for plan in plans})


def pad_along_time(array: np.ndarray, length: int) -> np.ndarray:
    """Zero-pads (or crops) axis 0 to `length`."""
    if array.shape[0] >= length:
        return array[:length]
    padding = [(0, length - array.shape[0])] + [(0, 0)] * (array.ndim - 1)
    return np.pad(array, padding)


def collate(
    examples: Sequence[Mapping[str, np.ndarray] | None],
    length: int,
    *,
    time_scale: Mapping[str, int],
    template: Mapping[str, np.ndarray],
) -> dict[str, np.ndarray]:
    """Stacks examples into one padded batch with `frame_mask [B, length]` and `clip_mask [B]`.

    Every example has an int `num_frames`. A key in `time_scale` has a time axis of
    `num_frames * scale` samples and is padded to `length * scale`; other keys are stacked as they
    are. A None example is a padding row, filled with zeros shaped like `template[key]`.
    """
    batch: dict[str, list[np.ndarray]] = {key: [] for key in template}
    frame_mask = np.zeros((len(examples), length), dtype=bool)
    clip_mask = np.zeros((len(examples),), dtype=bool)
    for row, example in enumerate(examples):
        for key, like in template.items():
            scale = time_scale.get(key)
            if example is None:
                value = np.zeros_like(like)
            else:
                value = np.asarray(example[key])
            if scale is not None:
                value = pad_along_time(value, length * scale)
            batch[key].append(value)
        if example is not None:
            frame_mask[row, : min(int(example["num_frames"]), length)] = True
            clip_mask[row] = True
    stacked = {key: np.stack(values) for key, values in batch.items()}
    stacked["frame_mask"] = frame_mask
    stacked["clip_mask"] = clip_mask
    return stacked


def iterate_batches(
    plans: Sequence[BatchPlan],
    load_example: Callable[[int], Mapping[str, np.ndarray]],
    *,
    time_scale: Mapping[str, int],
    process_index: int = 0,
    process_count: int = 1,
    start_batch: int = 0,
):
    """Yields (batch_index, this process's padded batch) from `start_batch` on (for resuming)."""
    template = None
    for batch_index in range(start_batch, len(plans)):
        plan = plans[batch_index]
        rows = plan.process_rows(process_index, process_count)
        examples = [None if row == PAD_ROW else load_example(row) for row in rows]
        if template is None or any(e is None for e in examples):
            real = next((e for e in examples if e is not None), None)
            if real is None:
                # A process whose share is all padding still needs shapes: borrow any clip's.
                real = load_example(next(r for r in plan.rows if r != PAD_ROW))
            template = {k: v for k, v in real.items() if k != "num_frames"}
        yield batch_index, collate(examples, plan.length, time_scale=time_scale, template=template)
