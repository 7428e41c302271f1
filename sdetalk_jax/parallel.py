"""Data parallelism: one program for 1 device, N devices and M hosts.

A 1-D mesh over every device of every process, with one axis, `data`. Each global batch is split
along its first axis over the devices (`NamedSharding(mesh, P("data"))`); parameters and optimiser
states are replicated (`P()`); the training step is jitted with these shardings, so XLA inserts the
gradient all-reduce. Each process loads only its own rows of a global batch
(`batching.BatchPlan.process_rows`) and hands them to `shard_batch`, which assembles the global
array without copying other processes' rows.

Several processes (hosts, or several processes on one machine) are joined by
`jax.distributed.initialize`, from the config or the environment (`initialize_distributed`), and
they stop together: a SIGTERM seen by any of them stops all at the same step (`StopRequest`).
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


class ConfigError(ValueError):
    """A parallel setting that cannot work (a batch that does not split, a half-given address)."""


# Environment variables read by `initialize_distributed` (set by launch/local.py and
# launch/slurm.sbatch); SLURM's own variables are detected by JAX itself.
COORDINATOR_ENV = "SDETALK_COORDINATOR"
NUM_PROCESSES_ENV = "SDETALK_NUM_PROCESSES"
PROCESS_ID_ENV = "SDETALK_PROCESS_ID"


DETERMINISTIC_GPU_FLAG = "--xla_gpu_deterministic_ops=true"


def request_deterministic_gpu_ops() -> None:
    """Makes XLA's GPU kernels deterministic (bitwise repeatable runs, at some speed cost).
    XLA reads the flag when the GPU backend starts, so call this before anything touches a device.
    CPU runs are deterministic anyway."""
    flags = os.environ.get("XLA_FLAGS", "")
    if DETERMINISTIC_GPU_FLAG not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {DETERMINISTIC_GPU_FLAG}".strip()


def initialize_distributed(settings=None) -> bool:
    """Joins a multi-process run when one is configured; returns whether it did.

    In order: the config's `distributed.coordinator_address` / `num_processes` / `process_id`, then
    the SDETALK_* environment variables, then a SLURM job with more than one task (JAX reads
    SLURM's variables). A single process does nothing. Must run before anything touches a device.
    """
    settings = dict(settings or {})
    address = settings.get("coordinator_address") or os.environ.get(COORDINATOR_ENV)
    count = settings.get("num_processes") or os.environ.get(NUM_PROCESSES_ENV)
    index = settings.get("process_id")
    if index is None or index < 0:
        index = os.environ.get(PROCESS_ID_ENV)
    if address:
        if count is None or index is None:
            raise ConfigError(
                f"a coordinator address ({address}) needs the number of processes and this "
                f"process's id ({NUM_PROCESSES_ENV}, {PROCESS_ID_ENV} or distributed.*)"
            )
        if int(count) > 1:
            jax.distributed.initialize(address, int(count), int(index))
            return True
        return False
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        jax.distributed.initialize()
        return True
    return False


def data_mesh(devices=None) -> Mesh:
    """A mesh with one `data` axis over all devices of all processes (or the given ones)."""
    devices = list(jax.devices() if devices is None else devices)
    # Auto axes: shardings are given at the jit boundary and XLA propagates them inside (recent
    # JAX makes new meshes Explicit by default, which would type every intermediate's sharding).
    return jax.make_mesh(
        (len(devices),), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,), devices=devices
    )


def check_global_batch(global_batch: int, mesh: Mesh) -> int:
    """The per-device batch; the global batch must split evenly over the devices."""
    devices = mesh.devices.size
    if global_batch % devices:
        raise ConfigError(
            f"train.global_batch={global_batch} does not split over {devices} devices; "
            f"use a multiple of {devices}"
        )
    return global_batch // devices


def release_freed_host_memory() -> None:
    """Hands back to the OS the memory that the C allocator still holds but no longer uses
    (glibc's malloc_trim). Compiling a step frees most of what the compiler allocated, but glibc
    keeps those pages, and they would count on top of every later step's own (docs/training.md,
    "Less memory in the step"). Nothing happens where the C library has no malloc_trim (macOS,
    musl)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return
    trim(0)


@jax.jit
def owned_by_xla(tree):
    """The arrays copied once more, by XLA, into buffers of its own, which a step can donate
    (update in place). On a CPU, an array placed from host memory that is a view of another
    array's buffer (`jax.device_get`'s results, `np.asarray` of a jax array) shares that buffer,
    and XLA cannot update it in place: the first step would allocate a second training state
    (0.94 GiB at BIWI size) on top of its own. (What orbax restores is XLA's own already.)"""
    return jax.tree.map(jnp.copy, tree)


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where arrays live: replicated (parameters, optimiser state, scalars) or split along the
    batch axis (training and evaluation batches)."""

    mesh: Mesh

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, P())

    @property
    def batch(self) -> NamedSharding:
        return NamedSharding(self.mesh, P(DATA_AXIS))

    def replicate(self, tree):
        """Host values (the same on every process) -> replicated global arrays that a step can
        donate (`owned_by_xla`)."""

        def place(value):
            value = np.asarray(value)
            return jax.make_array_from_callback(
                value.shape, self.replicated, lambda index: value[index]
            )

        return owned_by_xla(jax.tree.map(place, tree))

    def shard_batch(self, local_batch: dict) -> dict:
        """This process's rows of a global batch -> global arrays split along the batch axis."""
        return {
            key: jax.make_array_from_process_local_data(self.batch, np.asarray(value))
            for key, value in local_batch.items()
        }


def to_host(tree):
    """Replicated (or fully addressable) global arrays -> numpy, on every process."""

    def fetch(value):
        if isinstance(value, jax.Array) and not value.is_fully_addressable:
            return np.asarray(value.addressable_data(0))
        return np.asarray(value)

    return jax.tree.map(fetch, tree)


# The exit status of a run stopped by SIGTERM or Ctrl-C after saving what it had: "try again"
# (EX_TEMPFAIL of sysexits.h). launch/slurm.sbatch requeues the job on it; launch/local.py treats it
# as a stop, not a failure.
PREEMPTED_EXIT_CODE = 75
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(RuntimeError):
    """Training stopped on SIGTERM or SIGINT, after saving a checkpoint if there was anything to
    save; the command exits with PREEMPTED_EXIT_CODE."""


class StopRequest:
    """SIGTERM (a cluster pre-empting the job) or SIGINT (Ctrl-C) sets a flag; the loops check it
    after every training step, validation batch and clip of a pass over the corpus, and stop
    cleanly. All processes stop at the same step (they agree on the flag)."""

    def __init__(self):
        self.requested = None  # the signal's name once one has arrived
        self._previous = {}

    def _handle(self, signum, frame):
        self.requested = signal.Signals(signum).name

    def __enter__(self):
        for number in STOP_SIGNALS:
            self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc):
        for number, previous in self._previous.items():
            signal.signal(number, previous)

    def local(self) -> bool:
        """Whether this process was asked to stop (for work that is not collective)."""
        return self.requested is not None

    def agreed(self) -> bool:
        """Whether any process was asked to stop; every process must call it at the same point."""
        if jax.process_count() == 1:
            return self.local()
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(np.array(self.local()))
        return bool(np.any(flags))

    @property
    def name(self) -> str:
        return self.requested or "SIGTERM"


def barrier(name: str) -> None:
    """Waits until every process reaches the same named point (nothing to do for one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
