import numpy as np
import pytest

from sdetalk_jax.data import batching, biwi
from sdetalk_jax.data.pipeline import ClipDataset


def random_lengths(count=300, seed=0):
    # BIWI-like: 1.5 to 8 s at 25 fps.
    return np.random.default_rng(seed).integers(38, 200, size=count).tolist()


def test_buckets_cover_every_length_with_few_shapes():
    lengths = random_lengths()
    buckets = batching.bucket_lengths(max(lengths))
    assert buckets[-1] >= max(lengths)
    assert all(b % 8 == 0 for b in buckets)
    for length in lengths:
        bucket = batching.bucket_for(length, buckets)
        assert length <= bucket
        # Geometric growth bounds the padding.
        assert bucket <= max(32, 1.25 * length + 8)
    plans = batching.epoch_plan(lengths, global_batch=8, buckets=buckets, seed=0, epoch=0)
    assert batching.count_shapes(plans) <= len(buckets) <= 10
    with pytest.raises(ValueError, match="longer than the largest bucket"):
        batching.bucket_for(buckets[-1] + 1, buckets)


def test_epoch_covers_each_clip_once_and_is_a_pure_function_of_seed_and_epoch():
    lengths = random_lengths(101)
    buckets = batching.bucket_lengths(max(lengths))

    def plan(seed, epoch):
        return batching.epoch_plan(lengths, global_batch=8, buckets=buckets, seed=seed, epoch=epoch)

    first = plan(3, 5)
    rows = [r for p in first for r in p.rows if r != batching.PAD_ROW]
    assert sorted(rows) == list(range(101))
    for p in first:
        real = [r for r in p.rows if r != batching.PAD_ROW]
        assert all(lengths[r] <= p.length for r in real)
        assert len(p.rows) == 8
    assert plan(3, 5) == first
    assert plan(3, 6) != first
    assert plan(4, 5) != first


def test_processes_take_disjoint_shares_of_each_global_batch():
    lengths = random_lengths(50)
    buckets = batching.bucket_lengths(max(lengths))
    plans = batching.epoch_plan(lengths, global_batch=8, buckets=buckets, seed=0, epoch=0)
    for p in plans:
        shares = [p.process_rows(i, 4) for i in range(4)]
        assert all(len(s) == 2 for s in shares)
        assert sum(shares, ()) == p.rows
    with pytest.raises(ValueError, match="does not divide"):
        plans[0].process_rows(0, 3)


def test_collate_pads_and_masks():
    examples = [
        {"x": np.ones((3, 2)), "audio": np.ones(6), "id": np.int32(7), "num_frames": 3},
        None,
        {"x": 2 * np.ones((5, 2)), "audio": np.ones(10), "id": np.int32(9), "num_frames": 5},
    ]
    template = {k: v for k, v in examples[0].items() if k != "num_frames"}
    batch = batching.collate(examples, 8, time_scale={"x": 1, "audio": 2}, template=template)
    assert batch["x"].shape == (3, 8, 2)
    assert batch["audio"].shape == (3, 16)
    np.testing.assert_array_equal(batch["frame_mask"].sum(1), [3, 0, 5])
    np.testing.assert_array_equal(batch["clip_mask"], [True, False, True])
    np.testing.assert_array_equal(batch["id"], [7, 0, 9])
    assert batch["x"][0, 3:].sum() == 0 and batch["x"][1].sum() == 0
    assert batch["x"][2, :5].min() == 2


def test_dataset_batches_keep_clip_content_and_resume(small_corpus):
    corpus = biwi.scan_corpus(small_corpus)
    dataset = ClipDataset.from_corpus(corpus, "train", ("F2", "M3"))
    buckets = batching.bucket_lengths(max(dataset.lengths), min_length=16)
    kwargs = dict(global_batch=4, buckets=buckets, seed=1, epoch=0)
    batches = list(dataset.batches(**kwargs))
    assert len(batches) >= 2
    plans = batching.epoch_plan(dataset.lengths, **kwargs)
    for (_index, batch), plan in zip(batches, plans, strict=True):
        assert batch["vertices"].shape[:2] == (4, plan.length)
        for row, clip_index in enumerate(plan.rows):
            if clip_index == batching.PAD_ROW:
                assert not batch["clip_mask"][row]
                continue
            example = dataset.example(clip_index)
            n = int(example["num_frames"])
            np.testing.assert_array_equal(batch["vertices"][row, :n], example["vertices"])
            assert batch["frame_mask"][row].sum() == n
            assert not batch["vertices"][row, n:].any()
    # Resuming from batch 1 gives the same remaining batches.
    resumed = list(dataset.batches(**kwargs, start_batch=1))
    assert [i for i, _ in resumed] == [i for i, _ in batches[1:]]
    for (_, a), (_, b) in zip(resumed, batches[1:], strict=True):
        np.testing.assert_array_equal(a["vertices"], b["vertices"])
    # Two processes split each global batch.
    halves = [list(dataset.batches(**kwargs, process_index=i, process_count=2)) for i in range(2)]
    for (_, whole), (_, first), (_, second) in zip(batches, *halves, strict=True):
        np.testing.assert_array_equal(
            np.concatenate([first["vertices"], second["vertices"]]), whole["vertices"]
        )
