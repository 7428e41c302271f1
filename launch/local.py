"""Start K processes of one training run on this machine, joined by jax.distributed.

    python launch/local.py --processes 2 -- python -m sdetalk_jax.train --config configs/synthetic.py --workdir runs/x

Each process gets SDETALK_COORDINATOR (localhost and a free port), SDETALK_NUM_PROCESSES and
SDETALK_PROCESS_ID, which `sdetalk_jax.parallel.initialize_distributed` reads; on a CPU-only machine
`--devices-per-process N` also gives each process N emulated CPU devices. Output of process i is
prefixed with [i]. SIGTERM / Ctrl-C are passed on to every process (so each saves its checkpoint
and stops, with exit status 75); if one process fails or stops, the others are asked to stop and
killed if they have not after --grace-s seconds. The exit status is the first failure's, else 75
when the run was stopped, else 0.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def process_environment(base: dict, index: int, count: int, address: str, devices: int) -> dict:
    env = dict(base)
    env.update(
        SDETALK_COORDINATOR=address,
        SDETALK_NUM_PROCESSES=str(count),
        SDETALK_PROCESS_ID=str(index),
    )
    if devices > 0:
        flags = env.get("XLA_FLAGS", "")
        env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={devices}".strip()
    return env


def _forward(stream, prefix: str, sink) -> None:
    for line in iter(stream.readline, b""):
        sink.write(f"{prefix} {line.decode(errors='replace')}")
        sink.flush()


# A run stopped by SIGTERM / Ctrl-C after saving exits with this (sdetalk_jax.parallel); it is a
# stop, not a failure.
PREEMPTED_EXIT_CODE = 75


def launch(command: list[str], processes: int, devices_per_process: int = 0, grace_s=60.0) -> int:
    address = f"127.0.0.1:{free_port()}"
    children: list[subprocess.Popen] = []
    threads = []
    received = []

    def pass_on(signum, frame):
        received.append(signum)
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    # Installed before any child starts: a signal that arrives while they start is passed on to
    # each of them, never lost with the launcher.
    previous = {
        number: signal.signal(number, pass_on) for number in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        print(f"[launch] starting {processes} processes at {address}", flush=True)
        for index in range(processes):
            child = subprocess.Popen(
                command,
                env=process_environment(os.environ, index, processes, address, devices_per_process),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            children.append(child)
            if received:
                child.send_signal(received[-1])
            thread = threading.Thread(
                target=_forward, args=(child.stdout, f"[{index}]", sys.stdout), daemon=True
            )
            thread.start()
            threads.append(thread)
        exit_code = supervise(children, grace_s, received)
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    for thread in threads:
        thread.join(timeout=5)
    return exit_code


def supervise(children: list[subprocess.Popen], grace_s: float, received=()) -> int:
    """Waits for every child. When one fails or stops, the others are asked to stop (SIGTERM:
    they save and stop if they can), and those still running `grace_s` later are killed: a
    process blocked in a collective with a partner that is gone never returns by itself.
    Returns the first failure's exit status (128 + N for death by signal N), else
    PREEMPTED_EXIT_CODE if any stopped, else 0. A child ended by a signal the launcher passed on
    (it came before the child could catch it) has stopped, not failed."""
    failure, preempted, deadline = 0, False, None
    asked = set()  # children this launcher told to stop
    remaining = set(range(len(children)))
    while remaining:
        for index in sorted(remaining):
            code = children[index].poll()
            if code is None:
                continue
            remaining.discard(index)
            if code < 0 and (-code in received or index in asked):
                code = PREEMPTED_EXIT_CODE
            elif code < 0:
                code = 128 - code
            if code == PREEMPTED_EXIT_CODE:
                preempted = True
            elif code != 0 and failure == 0:
                failure = code
                print(
                    f"[launch] process {index} exited with {code}; stopping the others", flush=True
                )
            if code != 0 and deadline is None:
                deadline = time.monotonic() + grace_s
                for other_index, other in enumerate(children):
                    if other.poll() is None:
                        other.terminate()
                        asked.add(other_index)
        if deadline is not None and time.monotonic() > deadline:
            for index in sorted(remaining):
                if children[index].poll() is None:
                    print(
                        f"[launch] process {index} did not stop within {grace_s:g} s; killing it",
                        flush=True,
                    )
                    children[index].kill()
            deadline = float("inf")  # killed: wait for them to be reaped
        time.sleep(0.1)
    return failure or (PREEMPTED_EXIT_CODE if preempted else 0)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().split("\n")[0])
    parser.add_argument("--processes", type=int, required=True, help="number of processes K")
    parser.add_argument(
        "--devices-per-process", type=int, default=0,
        help="emulated CPU devices per process (XLA_FLAGS); 0 leaves the devices alone",
    )  # fmt: skip
    parser.add_argument(
        "--grace-s", type=float, default=60.0,
        help="after one process fails or stops, seconds the others get before they are killed",
    )  # fmt: skip
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command to run")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to run after --")
    if args.processes < 1:
        parser.error("--processes must be at least 1")
    return launch(command, args.processes, args.devices_per_process, args.grace_s)


if __name__ == "__main__":
    sys.exit(main())
