"""Where a compiled training step's host memory sits, and what hands it back. Prints a table.

    python benchmarks/compiled_step_memory.py [--vertices 2000] [--lengths 72 104 144]

For each bucket length in turn (global batch 4, fake BIWI-shaped batches as in
benchmarks/train_step.py): the resident memory (VmRSS, freed memory handed back first) that
lowering, compiling, dropping the lowering and the first two steps add. Then what dropping every
compiled step frees, and what `jax.clear_caches()` frees after that. The memory does not grow with
`--vertices` (the faces' size): it is the compiled program and jax's records of it, not data.
With JAX_COMPILATION_CACHE_DIR set (and JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0), a second
run loads the steps from that cache instead of compiling them.
"""

from __future__ import annotations

import argparse
import itertools

import jax
import numpy as np
from train_step import fake_batch, settled_resident_gib

from sdetalk_jax import optim
from sdetalk_jax.config_files import repository_config
from sdetalk_jax.models.config import SDETalkConfig
from sdetalk_jax.models.networks import Networks
from sdetalk_jax.parallel import Placement, data_mesh
from sdetalk_jax.train_step import compiled_train_step


def settled_mib() -> float:
    return 1024 * settled_resident_gib()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vertices", type=int, default=2000)
    parser.add_argument("--lengths", type=int, nargs="+", default=[72, 104, 144])
    args = parser.parse_args()

    config = repository_config("biwi")  # the configuration users train
    config.loss.vertex_scale = 1000.0  # its losses in mm of these vertices in metres
    networks = Networks.build(
        SDETalkConfig.for_run(
            config, num_vertices=args.vertices, context_dim=768, num_subjects=6, num_emotions=12
        )
    )
    placement = Placement(data_mesh())
    state = placement.replicate(optim.initial_state(networks, config, jax.random.key(0)))
    step_fn = compiled_train_step(networks, config, placement, jax.random.key(1), 10)
    rng = np.random.default_rng(0)
    jax.clear_caches()  # the initialisation's compilations: not counted at the end

    rows, compiled_steps = [], []
    for length in args.lengths:
        batch = placement.shard_batch(
            fake_batch(rng, length, [length] * 4, args.vertices, 768, 12, 6)
        )
        marks = [settled_mib()]
        lowered = step_fn.lower(state, batch)
        marks.append(settled_mib())
        compiled = lowered.compile()
        marks.append(settled_mib())
        del lowered
        marks.append(settled_mib())
        for _ in range(2):
            state, metrics = compiled(state, batch)
            jax.block_until_ready(metrics)
            del metrics
            marks.append(settled_mib())
        compiled_steps.append(compiled)
        del batch, compiled
        rows.append([f"{length} frames", *(f"{b - a:+.0f}" for a, b in itertools.pairwise(marks))])

    before = settled_mib()
    compiled_steps.clear()
    dropped = settled_mib()
    jax.clear_caches()
    cleared = settled_mib()

    print(f"vertices {args.vertices}, global batch 4, jax {jax.__version__}\n")
    print("| bucket | lower (MiB) | compile | drop the lowering | first step | second step |")
    print("|---|---:|---:|---:|---:|---:|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"\ndropping the {len(args.lengths)} compiled steps: {dropped - before:+.0f} MiB")
    print(f"then jax.clear_caches(): {cleared - dropped:+.0f} MiB")


if __name__ == "__main__":
    main()
