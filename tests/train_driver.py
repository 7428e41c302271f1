"""Runs tests/tiny_config.py training in its own process (as launch/local.py or a cluster would) and
writes the final parameters of this process to WORKDIR/params_<process>.npz, for the scaling and
interruption tests.

    python tests/train_driver.py --root CORPUS --cache CACHE --workdir W [--max-steps N] ...

--kill-during-save-at S: at the checkpoint of step S, start the (asynchronous) save, check that it is
still in progress, and kill this process with SIGKILL, as `kill -9` would in the middle of a save.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from sdetalk_jax import parallel  # noqa: E402

parallel.initialize_distributed()  # from the SDETALK_* environment of launch/local.py

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import traverse_util  # noqa: E402

from sdetalk_jax import checkpoint, optim, train  # noqa: E402
from sdetalk_jax.data.corpus import open_corpus, with_loss_scale  # noqa: E402
from sdetalk_jax.models.config import SDETalkConfig  # noqa: E402
from sdetalk_jax.models.networks import Networks  # noqa: E402
from sdetalk_jax.models.wav2vec2.encoder import ContextEncoder  # noqa: E402
from tests.tiny_config import get_config  # noqa: E402


def dump_params(config, workdir: str) -> None:
    """Restores the latest checkpoint on this process's mesh and writes its parameters."""
    config = with_loss_scale(config)
    corpus = open_corpus(config)
    encoder = ContextEncoder.from_config(config)
    assets = checkpoint.Assets.from_corpus(corpus, config.data.splits.train_subjects)
    networks = Networks.build(
        SDETalkConfig.for_run(config, context_dim=encoder.hidden_size, **assets.dimensions)
    )
    placement = parallel.Placement(parallel.data_mesh())
    state = optim.initial_state(networks, config, jax.random.key(0))
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=placement.replicated), state
    )
    manager = checkpoint.checkpoint_manager(workdir, read_only=True)
    restored, position = checkpoint.restore_checkpoint(manager, abstract)
    flat = traverse_util.flatten_dict(parallel.to_host(restored["params"]), sep="/")
    flat["step"] = parallel.to_host(restored["step"])
    path = os.path.join(workdir, f"params_{jax.process_index()}.npz")
    np.savez(path, **flat)


def kill_during_save(step_to_kill: int) -> None:
    real_save = checkpoint.save_checkpoint

    def save(manager, state, position, metrics=None):
        real_save(manager, state, position, metrics)
        if int(parallel.to_host(state["step"])) == step_to_kill and metrics is None:
            directory = str(manager.directory)
            pending = [name for name in os.listdir(directory) if "tmp" in name]
            with open(os.path.join(directory, "..", "killed_during_save.txt"), "w") as handle:
                handle.write(" ".join(pending) + "\n")
            os.kill(os.getpid(), 9)

    checkpoint.save_checkpoint = save


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True)
    parser.add_argument("--cache", required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--max-steps", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--global-batch", type=int, default=4)
    parser.add_argument("--checkpoint-every", type=int, default=0)
    parser.add_argument("--kill-during-save-at", type=int, default=0)
    parser.add_argument(
        "--generate", action="store_true", help="generate a tiny SynthBIWI at --root if missing"
    )
    args = parser.parse_args()
    config = get_config()
    config.data.root = args.root
    config.data.feature_cache = args.cache
    config.train.max_steps = args.max_steps
    config.train.epochs = args.epochs
    config.train.global_batch = args.global_batch
    config.train.checkpoint_every_steps = args.checkpoint_every
    if args.generate:
        config.data.generate_if_missing = True
        config.data.synthetic = dict(subjects=2, sentences=5, vertices=120, seed=0)
    if args.kill_during_save_at:
        kill_during_save(args.kill_during_save_at)
    try:
        train.train(config, args.workdir)
    except parallel.Preempted as stopped:
        print(stopped, flush=True)
    dump_params(config, args.workdir)
    print(f"devices {jax.device_count()} processes {jax.process_count()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
