"""Steady-state training throughput of the data-parallel step on 1, 2 and 4 devices.

    python benchmarks/scaling.py [--devices 1 2 4] [--vertices 5023] [--batch 8] [--frames 100]

Each device count runs in its own process (XLA fixes the number of emulated CPU devices at start;
on a GPU machine the real devices are used and counts above the available ones are skipped). The
step is the real one (`sdetalk_jax.train_step.compiled_train_step`) on the paper's model sizes, with the
global batch split over the devices. On a 2-core CPU little speed-up is expected: the point is that
every count runs and agrees. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def worker(devices: int, vertices: int, batch: int, frames: int, steps: int) -> dict:
    import jax
    import numpy as np

    from sdetalk_jax import optim
    from sdetalk_jax.config_files import repository_config
    from sdetalk_jax.data.pipeline import model_batch
    from sdetalk_jax.models.config import SDETalkConfig
    from sdetalk_jax.models.networks import Networks
    from sdetalk_jax.parallel import Placement, data_mesh
    from sdetalk_jax.train_step import compiled_train_step

    available = jax.devices()
    if len(available) < devices:
        return {"devices": devices, "skipped": f"only {len(available)} devices"}
    placement = Placement(data_mesh(available[:devices]))
    config = repository_config("biwi")  # the configuration users train
    config.loss.vertex_scale = 1000.0  # its losses in mm of these vertices in metres
    model_config = SDETalkConfig.for_run(
        config, num_vertices=vertices, context_dim=768, num_subjects=6, num_emotions=12
    )
    networks = Networks.build(model_config)
    state = placement.replicate(optim.initial_state(networks, config, jax.random.key(0)))
    step_fn = compiled_train_step(networks, config, placement, jax.random.key(1), steps + 1)
    rng = np.random.default_rng(0)
    v3 = vertices * 3
    template = rng.normal(size=(batch, v3)).astype(np.float32) * 0.05
    vertices_batch = template[:, None] + 0.002 * rng.normal(size=(batch, frames, v3)).astype(
        np.float32
    )
    raw = {
        "context": rng.normal(size=(batch, frames, 768)).astype(np.float32),
        "mel": rng.normal(size=(batch, frames, 128)).astype(np.float32) - 4,
        "template": template,
        "vertices": vertices_batch,
        "neutral_vertices": vertices_batch,
        "rotation": np.broadcast_to(np.eye(3, dtype=np.float32), (batch, frames, 3, 3)).copy(),
        "translation": 0.003 * rng.normal(size=(batch, frames, 3)).astype(np.float32),
        "emotion": rng.dirichlet(np.ones(12), size=batch).astype(np.float32),
        "subject": (np.arange(batch) % 6).astype(np.int32),
        "has_head_pose": np.ones(batch, bool),
        "has_emotion": np.ones(batch, bool),
        "emotional": np.ones(batch, bool),
        "has_neutral": np.ones(batch, bool),
        "frame_mask": np.ones((batch, frames), bool),
        "clip_mask": np.ones(batch, bool),
    }
    sharded = placement.shard_batch(model_batch(raw, raw["subject"], 6))
    start = time.perf_counter()
    state, metrics = step_fn(state, sharded)
    jax.block_until_ready(metrics)
    compile_seconds = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = step_fn(state, sharded)
    jax.block_until_ready(metrics)
    seconds = (time.perf_counter() - start) / steps
    return {
        "devices": devices,
        "platform": available[0].platform,
        "first_step_s": compile_seconds,
        "step_s": seconds,
        "clips_per_s": batch / seconds,
        "frames_per_s": batch * frames / seconds,
        "loss": float(metrics["reconstruction"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--vertices", type=int, default=5023)
    parser.add_argument("--batch", type=int, default=8, help="global batch")
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--steps", type=int, default=5, help="timed steps after the first")
    parser.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        result = worker(args.worker, args.vertices, args.batch, args.frames, args.steps)
        print("RESULT " + json.dumps(result), flush=True)
        return

    rows = []
    for devices in args.devices:
        env = dict(os.environ)
        env["XLA_FLAGS"] = (
            env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={devices}"
        ).strip()
        command = [sys.executable, __file__, "--worker", str(devices)]
        command += ["--vertices", str(args.vertices), "--batch", str(args.batch)]
        command += ["--frames", str(args.frames), "--steps", str(args.steps)]
        output = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
        line = next(line for line in output.splitlines() if line.startswith("RESULT "))
        rows.append(json.loads(line[len("RESULT ") :]))

    print(
        f"global batch {args.batch} clips x {args.frames} frames, {args.vertices} vertices, "
        "paper model sizes\n"
    )
    print(
        "| devices | platform | first step incl. compile (s) | step (s) | clips/s | frames/s | loss |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|")
    for row in rows:
        if "skipped" in row:
            print(f"| {row['devices']} | skipped: {row['skipped']} | | | | | |")
            continue
        print(
            f"| {row['devices']} | {row['platform']} | {row['first_step_s']:.1f} | "
            f"{row['step_s']:.3f} | {row['clips_per_s']:.2f} | {row['frames_per_s']:.0f} | "
            f"{row['loss']:.6g} |"
        )


if __name__ == "__main__":
    main()
