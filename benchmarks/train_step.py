"""Times the SDETalk training step on BIWI-shaped data and prints a table.

    python benchmarks/train_step.py [--vertices 23370] [--batch 4] [--clips 384] [--steps 2]
                                    [--context-dim 768] [--deterministic-gpu]
                                    [--matmul-precision default|float32|tensorfloat32|bfloat16]
                                    [--compile-threads 1]

BIWI-shaped: 23370 vertices, context features of wav2vec2-base width (768) as the feature cache
would supply them, and an epoch of `--clips` clips (384: BIWI's training set, 6 subjects x 32
sentences, each emotional and neutral) with lengths drawn like BIWI's sentences (2.5-6 s at 25 fps), bucketed as
configs/biwi.py buckets them. Each bucket is compiled once (timed apart) and stepped `--steps`
times; the epoch's time is each bucket's steady step time times its number of batches.

Prints, besides clips/s and frames/s of real (unpadded) frames: the step's FLOPs from XLA's own
cost analysis, the GFLOP/s achieved, the same run's reference (one [B*N, Dc] x [Dc, V*3] float32
matmul, the shape of G_n's layer), the padding waste of the epoch, and peak memory (host RSS on
CPU; device peak where the backend reports it): the whole run's, the largest bucket's steps'
(VmHWM restarted before them), and what the compiled steps hold while they are cached (the
resident memory that dropping them at the end frees, `jax.clear_caches`; measuring each bucket's
growth instead counted the allocator's free lists, which the next bucket reuses).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import shutil
import time

import jax
import jax.numpy as jnp
import numpy as np
from biwi_rehearsal import peak_rss_gib, status_gib  # VmHWM: restarted per bucket below

from sdetalk_jax import optim
from sdetalk_jax.config_files import repository_config
from sdetalk_jax.data import batching
from sdetalk_jax.data.pipeline import model_batch
from sdetalk_jax.models.config import SDETalkConfig
from sdetalk_jax.models.networks import Networks
from sdetalk_jax.parallel import (
    Placement,
    data_mesh,
    release_freed_host_memory,
    request_deterministic_gpu_ops,
)
from sdetalk_jax.train_step import compiled_train_step


def fake_batch(rng, length, lengths, vertices, context_dim, emotions, subjects):
    batch_size = len(lengths)
    mask = np.arange(length)[None] < np.asarray(lengths)[:, None]
    v3 = vertices * 3
    template = rng.standard_normal((batch_size, v3), dtype=np.float32) * 0.05
    batch = {
        "context": rng.standard_normal((batch_size, length, context_dim), dtype=np.float32),
        "mel": rng.standard_normal((batch_size, length, 128), dtype=np.float32) - 4,
        "template": template,
        "vertices": template[:, None]
        + 0.002 * rng.standard_normal((batch_size, length, v3), dtype=np.float32),
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


def padding_waste(plans, lengths) -> float:
    """The share of an epoch's padded frames that are padding (padding rows included)."""
    padded = sum(plan.length * len(plan.rows) for plan in plans)
    real = sum(lengths[row] for plan in plans for row in plan.rows if row != batching.PAD_ROW)
    return 1.0 - real / padded


def compiled_flops(compiled) -> float:
    analysis = compiled.cost_analysis()
    if isinstance(analysis, list):  # older jax: one dict per computation
        analysis = analysis[0]
    return float(analysis.get("flops", float("nan")))


def matmul_gflops(a, b, product=jnp.matmul, repeats: int = 5) -> float:
    """GFLOP/s of `product` (jitted) on a [rows, inner] and an [inner, outer] operand, best of
    `repeats` after one warm-up call."""
    compiled = jax.jit(product)
    jax.block_until_ready(compiled(a, b))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(a, b))
        best = min(best, time.perf_counter() - start)
    (rows, inner), outer = a.shape, b.shape[1]
    return 2.0 * rows * inner * outer / best / 1e9


def matmul_reference(rows: int, inner: int, outer: int, repeats: int = 5) -> float:
    """GFLOP/s of one float32 [rows, inner] x [inner, outer] matmul, best of `repeats`."""
    keys = jax.random.split(jax.random.key(0))
    a = jax.random.normal(keys[0], (rows, inner))
    b = jax.random.normal(keys[1], (inner, outer))
    return matmul_gflops(a, b, repeats=repeats)


@dataclasses.dataclass
class RunNotes:
    """What `time_buckets` finds besides each bucket's figures."""

    peak_rss_gib: float = 0.0  # the process's, kept across the per-bucket restarts of VmHWM
    compile_wall_seconds: float = float("nan")  # all buckets compiled side by side
    compiled_steps_gib: float = float("nan")  # resident memory freed by dropping them
    top_ops: list = dataclasses.field(default_factory=list)  # --profile's rows


def time_buckets(step_fn, state, placement, plans, lengths, args, notes: RunNotes):
    """Per bucket length: (compile seconds, steady seconds per step, FLOPs per step, XLA's memory
    analysis, peak RSS during its steps); `notes` is filled in on the way. jax's caches are emptied before the first bucket and again at the end
    (`jax.clear_caches`, with the compiled steps dropped): the resident memory the second frees is
    what the buckets' compiled steps and jax's records of them held."""
    per_bucket = {}
    first_plans = {}
    for plan in plans:
        first_plans.setdefault(plan.length, plan)

    def bucket_batch(length):  # its own seed: the same batch whether compiled ahead or not
        plan = first_plans[length]
        rows = [lengths[r] if r != batching.PAD_ROW else 0 for r in plan.rows]
        rng = np.random.default_rng([0, length])
        return placement.shard_batch(
            fake_batch(rng, length, rows, args.vertices, args.context_dim, 12, 6)
        )

    jax.clear_caches()  # what the buckets hold is measured against this (end of the function)
    precompiled = {}
    if args.compile_threads > 1:
        precompiled, notes.compile_wall_seconds = compile_in_threads(
            step_fn, state, list(first_plans), bucket_batch, args.compile_threads
        )
    for length in first_plans:
        batch = bucket_batch(length)  # one bucket's batch at a time, either way
        release_freed_host_memory()
        if precompiled:
            compiled, compile_seconds = precompiled[length]
        else:
            start = time.perf_counter()
            compiled = step_fn.lower(state, batch).compile()
            compile_seconds = time.perf_counter() - start
        release_freed_host_memory()  # as train.Trainer does after a bucket's first step
        state, metrics = compiled(state, batch)  # the first run of an executable warms it up
        jax.block_until_ready(metrics)
        del metrics
        release_freed_host_memory()
        notes.peak_rss_gib = max(notes.peak_rss_gib, peak_rss_gib())  # restarted below
        peak_restarted = restart_peak_rss()
        timings = []
        for _ in range(args.steps):
            start = time.perf_counter()
            state, metrics = compiled(state, batch)
            jax.block_until_ready(metrics)
            timings.append(time.perf_counter() - start)
        if args.profile and not per_bucket:
            state, slowest = profile_top_ops(compiled, state, batch, args.profile)
            notes.top_ops.extend(slowest)
        per_bucket[length] = (
            compile_seconds,
            float(np.median(timings)),
            compiled_flops(compiled),
            compiled.memory_analysis(),
            peak_rss_gib() if peak_restarted else float("nan"),
        )
        notes.peak_rss_gib = max(notes.peak_rss_gib, peak_rss_gib())
    del compiled, precompiled, batch
    holding = settled_resident_gib()
    jax.clear_caches()
    notes.compiled_steps_gib = holding - settled_resident_gib()
    return per_bucket


def compile_in_threads(step_fn, state, lengths, make_batch, threads: int) -> tuple[dict, float]:
    """({length: (compiled step, its compile seconds)} for every bucket length, wall seconds of it
    all): lowered one by one here, each from its batch `make_batch(length)` (dropped once lowered:
    only its shapes are kept), and compiled `threads` side by side (XLA's compilation leaves
    Python alone; a GPU's compile of this step is 15-66 s a bucket, most of a short benchmark).
    Each bucket's seconds then overlap the others', hence the wall time of all."""
    from concurrent.futures import ThreadPoolExecutor

    def timed_compile(lowered):
        start = time.perf_counter()
        compiled = lowered.compile()
        return compiled, time.perf_counter() - start

    start = time.perf_counter()
    lowered = {length: step_fn.lower(state, make_batch(length)) for length in lengths}
    with ThreadPoolExecutor(threads) as pool:
        futures = {length: pool.submit(timed_compile, low) for length, low in lowered.items()}
        compiled = {length: future.result() for length, future in futures.items()}
    return compiled, time.perf_counter() - start


def resident_gib() -> float:
    """This process's resident memory now (VmRSS; NaN where /proc is not there)."""
    resident = status_gib("VmRSS")
    return float("nan") if resident is None else resident


def settled_resident_gib() -> float:
    """Resident memory once garbage is collected and freed memory handed back to the system."""
    gc.collect()
    release_freed_host_memory()
    return resident_gib()


def restart_peak_rss() -> bool:
    """Restarts VmHWM at the current RSS (Linux's /proc/self/clear_refs), so that peak_rss_gib
    reads the peak from here on; False where that cannot be done."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def profile_top_ops(compiled, state, batch, count: int):
    """(state after one more step, the `count` XLA operations that took longest in it): each
    with what in the model it computes (its op_name) and its share of the step
    (jax.profiler trace)."""
    import glob
    import gzip
    import json
    import re
    import tempfile

    folder = tempfile.mkdtemp(prefix="train-step-trace-")
    with jax.profiler.trace(folder):
        state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
    trace_path = sorted(glob.glob(os.path.join(folder, "**", "*.trace.json.gz"), recursive=True))
    with gzip.open(trace_path[-1]) as handle:
        events = [e for e in json.load(handle)["traceEvents"] if e.get("ph") == "X"]
    shutil.rmtree(folder)
    step = max(e["dur"] for e in events if e["name"].startswith("ThunkExecutor::Execute"))
    what = {}
    for line in compiled.as_text().splitlines():
        found = re.match(r"\s*(?:ROOT )?%([\w.-]+) = .*op_name=\"([^\"]*)\"", line)
        if found:
            what[found.group(1)] = found.group(2).replace("jit(step_fn)/", "")
    durations: dict[str, float] = {}
    for event in events:
        if event["name"] in what:  # XLA's operations, not the runtime's own events
            durations[event["name"]] = durations.get(event["name"], 0.0) + event["dur"]
    ranked = sorted(durations.items(), key=lambda item: -item[1])[:count]
    return state, [
        (name, what.get(name, "?")[:90], f"{100 * seconds / step:.1f} %")
        for name, seconds in ranked
    ]


def summary_rows(args, plans, lengths, per_bucket, notes: RunNotes) -> list[tuple[str, str]]:
    """The table's rows: the epoch's time from each bucket's step, FLOPs, the same-run matmul
    reference, padding and memory."""
    epoch_seconds = sum(per_bucket[plan.length][1] for plan in plans)
    epoch_flops = sum(per_bucket[plan.length][2] for plan in plans)
    real_frames = sum(lengths)
    reference = matmul_reference(args.batch * 120, args.context_dim, args.vertices * 3)
    achieved = epoch_flops / epoch_seconds / 1e9
    compile_seconds = [entry[0] for entry in per_bucket.values()]
    peak_rss_gb = max(notes.peak_rss_gib, peak_rss_gib())
    largest = max(per_bucket)
    device = jax.devices()[0]
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    device_peak = (
        f"{stats['peak_bytes_in_use'] / 2**30:.2f} GiB"
        if stats and "peak_bytes_in_use" in stats
        else "n/a (CPU)"
    )
    rows = [
        ("device", f"{device.platform} ({device.device_kind}), jax {jax.__version__}"),
        ("XLA deterministic GPU ops", "on" if args.deterministic_gpu else "off"),
        ("matmul precision (train.matmul_precision)", args.matmul_precision),
        (
            "vertices / context dim / global batch",
            f"{args.vertices} / {args.context_dim} / {args.batch}",
        ),
        (
            "clips / batches / buckets in the epoch",
            f"{args.clips} / {len(plans)} / {len(per_bucket)} ({sorted(per_bucket)})",
        ),
        ("padding waste of the epoch", f"{100 * padding_waste(plans, lengths):.1f} %"),
        (
            "compile per bucket (s)",
            f"mean {np.mean(compile_seconds):.1f}, total {sum(compile_seconds):.1f}"
            + (
                f" ({args.compile_threads} side by side: {notes.compile_wall_seconds:.1f} wall)"
                if args.compile_threads > 1
                else ""
            ),
        ),
        ("steady-state step (s), mean over the epoch", f"{epoch_seconds / len(plans):.3f}"),
        ("steady-state clips/s", f"{args.clips / epoch_seconds:.2f}"),
        ("steady-state frames/s (real frames)", f"{real_frames / epoch_seconds:.0f}"),
        ("XLA cost analysis: GFLOP per real frame", f"{epoch_flops / real_frames / 1e9:.3f}"),
        ("achieved GFLOP/s", f"{achieved:.0f}"),
        (
            f"reference: [{args.batch * 120}, {args.context_dim}] x "
            f"[{args.context_dim}, {args.vertices * 3}] matmul, GFLOP/s",
            f"{reference:.0f} (the step reaches {100 * achieved / reference:.0f} %)",
        ),
        (
            "projected 500 epochs (steady-state steps)",
            f"{500 * epoch_seconds / 3600:.2f} h ({500 * epoch_seconds / 60:.0f} min)",
        ),
        ("peak host memory (RSS)", f"{peak_rss_gb:.2f} GiB"),
        (
            f"peak RSS during the steps of the largest bucket ({largest} frames)",
            f"{per_bucket[largest][4]:.2f} GiB",
        ),
        (
            "resident memory the compiled steps held (freed by dropping them at the end)",
            f"{1024 * notes.compiled_steps_gib:.0f} MiB for {len(per_bucket)} buckets",
        ),
        ("peak device memory", device_peak),
        *memory_rows(per_bucket),
    ]
    return rows


def memory_rows(per_bucket) -> list[tuple[str, str]]:
    """XLA's own account of the largest bucket's step: its inputs (parameters and optimiser
    state, donated and updated in place, and the batch) and the temporaries it allocates."""
    length = max(per_bucket)
    analysis = per_bucket[length][3]
    if analysis is None:
        return []
    state = analysis.alias_size_in_bytes  # the donated training state, written in place
    return [
        (
            f"XLA memory analysis, bucket of {length} frames: training state / batch / temporaries",
            f"{state / 2**30:.2f} / {(analysis.argument_size_in_bytes - state) / 2**30:.2f} / "
            f"{analysis.temp_size_in_bytes / 2**30:.2f} GiB",
        )
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vertices", type=int, default=23370)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--clips", type=int, default=384, help="clips in the epoch")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per bucket")
    parser.add_argument("--context-dim", type=int, default=768)
    parser.add_argument(
        "--deterministic-gpu", action="store_true", help="XLA's deterministic GPU ops (its cost)"
    )
    parser.add_argument(
        "--profile", type=int, default=0, help="also list the N slowest XLA ops of one step"
    )
    parser.add_argument(
        "--matmul-precision", default="default", help="train.matmul_precision (configs/biwi.py)"
    )
    parser.add_argument(
        "--compile-threads",
        type=int,
        default=1,
        help="compile all buckets first, this many side by side (a GPU's compilation is slow)",
    )
    args = parser.parse_args()
    if args.deterministic_gpu:
        request_deterministic_gpu_ops()

    config = repository_config("biwi")  # the configuration users train
    config.loss.vertex_scale = 1000.0  # its losses in mm of these vertices in metres
    config.train.matmul_precision = args.matmul_precision
    rng = np.random.default_rng(0)
    lengths = rng.integers(62, 150, size=args.clips).tolist()  # 2.5-6 s at 25 fps
    buckets = batching.bucket_lengths(
        max(lengths), min_length=config.data.bucket_min, growth=config.data.bucket_growth
    )
    plans = batching.epoch_plan(lengths, global_batch=args.batch, buckets=buckets, seed=0, epoch=0)
    model_config = SDETalkConfig.for_run(
        config,
        num_vertices=args.vertices,
        context_dim=args.context_dim,
        num_subjects=6,
        num_emotions=12,
    )
    networks = Networks.build(model_config)
    placement = Placement(data_mesh())
    state = placement.replicate(optim.initial_state(networks, config, jax.random.key(0)))
    step_fn = compiled_train_step(networks, config, placement, jax.random.key(1), len(plans))
    notes = RunNotes()
    per_bucket = time_buckets(step_fn, state, placement, plans, lengths, args, notes)

    rows = summary_rows(args, plans, lengths, per_bucket, notes)
    print("| measure | value |")
    print("|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    if notes.top_ops:
        first = next(iter(per_bucket))
        print(f"\nslowest XLA operations of one step (batch of {first} frames):\n")
        print("| operation | computes | share of the step |")
        print("|---|---|---:|")
        for row in notes.top_ops:
            print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
