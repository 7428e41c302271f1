"""Times the SDETalk training step on BIWI-shaped data and prints a table.

    python benchmarks/train_step.py [--vertices 23370] [--batch 4] [--clips 48] [--context-dim 768]
                                    [--deterministic-gpu]

BIWI-shaped: 23370 vertices, clip lengths drawn like BIWI's sentences (2.5-6 s at 25 fps), context
features of wav2vec2-base width (768) as the feature cache would supply them. Reports compile time
per bucket, the number of compilations in an epoch (one per bucket), steady-state clips/s and
frames/s, and peak memory (host RSS on CPU; device peak where the backend reports it).
"""

from __future__ import annotations

import argparse
import resource
import time

import jax
import numpy as np

from sdetalk_jax import optim
from sdetalk_jax.config_files import repository_config
from sdetalk_jax.data import batching
from sdetalk_jax.data.pipeline import model_batch
from sdetalk_jax.models import sdetalk
from sdetalk_jax.models.networks import Networks
from sdetalk_jax.parallel import Placement, data_mesh, request_deterministic_gpu_ops
from sdetalk_jax.train import compiled_train_step


def fake_batch(rng, length, lengths, vertices, context_dim, emotions, subjects):
    batch_size = len(lengths)
    mask = np.arange(length)[None] < np.asarray(lengths)[:, None]
    v3 = vertices * 3
    template = rng.normal(size=(batch_size, v3)).astype(np.float32) * 0.05
    batch = {
        "context": rng.normal(size=(batch_size, length, context_dim)).astype(np.float32),
        "mel": rng.normal(size=(batch_size, length, 128)).astype(np.float32) - 4,
        "template": template,
        "vertices": template[:, None]
        + 0.002 * rng.normal(size=(batch_size, length, v3)).astype(np.float32),
        "rotation": np.broadcast_to(np.eye(3, dtype=np.float32), (batch_size, length, 3, 3)).copy(),
        "translation": 0.003 * rng.normal(size=(batch_size, length, 3)).astype(np.float32),
        "emotion": rng.dirichlet(np.ones(emotions), size=batch_size).astype(np.float32),
        "subject": (np.arange(batch_size) % subjects).astype(np.int32),
        "has_head_pose": np.ones(batch_size, bool),
        "has_emotion": np.ones(batch_size, bool),
        "emotional": np.ones(batch_size, bool),
        "has_neutral": np.ones(batch_size, bool),
        "frame_mask": mask,
        "clip_mask": np.ones(batch_size, bool),
    }
    batch["neutral_vertices"] = batch["vertices"]
    return model_batch(batch, batch["subject"], subjects)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vertices", type=int, default=23370)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--clips", type=int, default=48, help="clips in the timed epoch")
    parser.add_argument("--context-dim", type=int, default=768)
    parser.add_argument(
        "--deterministic-gpu", action="store_true", help="XLA's deterministic GPU ops (its cost)"
    )
    args = parser.parse_args()
    if args.deterministic_gpu:
        request_deterministic_gpu_ops()

    rng = np.random.default_rng(0)
    lengths = rng.integers(62, 150, size=args.clips).tolist()  # 2.5-6 s at 25 fps
    buckets = batching.bucket_lengths(max(lengths))
    plans = batching.epoch_plan(lengths, global_batch=args.batch, buckets=buckets, seed=0, epoch=0)
    model_config = sdetalk.SDETalkConfig(
        num_vertices=args.vertices, context_dim=args.context_dim, num_subjects=6, num_emotions=12
    )
    networks = Networks.build(model_config)
    config = repository_config("biwi")  # the paper's loss weights and learning rate
    placement = Placement(data_mesh())
    state = placement.replicate(optim.initial_state(networks, config, jax.random.key(0)))
    step_fn = compiled_train_step(networks, config, placement, jax.random.key(1), len(plans))

    compile_seconds, steady, frames_done, clips_done = [], [], 0, 0
    seen_shapes = set()
    for plan in plans:
        rows = [lengths[r] if r != batching.PAD_ROW else 0 for r in plan.rows]
        batch = fake_batch(rng, plan.length, rows, args.vertices, args.context_dim, 12, 6)
        start = time.perf_counter()
        state, metrics = step_fn(state, placement.shard_batch(batch))
        jax.block_until_ready(metrics)
        elapsed = time.perf_counter() - start
        if plan.length not in seen_shapes:
            seen_shapes.add(plan.length)
            compile_seconds.append(elapsed)
        else:
            steady.append(elapsed)
            frames_done += sum(rows)
            clips_done += sum(r > 0 for r in rows)
    # What jit actually compiled (its cache of executables), not what the buckets predict.
    compilations = step_fn._cache_size() if hasattr(step_fn, "_cache_size") else "n/a"
    peak_rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    device = jax.devices()[0]
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    device_peak = (
        f"{stats['peak_bytes_in_use'] / 2**30:.2f} GiB"
        if stats and "peak_bytes_in_use" in stats
        else "n/a (CPU)"
    )
    total_steady = sum(steady)
    rows = [
        ("device", f"{device.platform} ({device.device_kind}), jax {jax.__version__}"),
        ("XLA deterministic GPU ops", "on" if args.deterministic_gpu else "off"),
        (
            "vertices / context dim / global batch",
            f"{args.vertices} / {args.context_dim} / {args.batch}",
        ),
        ("batches in the epoch / buckets used", f"{len(plans)} / {len(seen_shapes)}"),
        ("compilations in the epoch", f"{compilations} (buckets used: {len(seen_shapes)})"),
        (
            "first step per bucket, incl. compile (s)",
            f"mean {np.mean(compile_seconds):.1f}, total {sum(compile_seconds):.1f}",
        ),
        ("steady-state step (s)", f"{np.mean(steady):.3f}" if steady else "n/a"),
        ("steady-state clips/s", f"{clips_done / total_steady:.2f}" if steady else "n/a"),
        ("steady-state frames/s", f"{frames_done / total_steady:.0f}" if steady else "n/a"),
        ("peak host memory (RSS)", f"{peak_rss_gb:.2f} GiB"),
        ("peak device memory", device_peak),
    ]
    print("| measure | value |")
    print("|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
