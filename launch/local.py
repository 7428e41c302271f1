"""Start K processes of one training run on this machine, joined by jax.distributed.

    python launch/local.py --processes 2 -- python -m sdetalk_jax.train --config configs/synthetic.py --workdir runs/x

Each process gets SDETALK_COORDINATOR (localhost and a free port), SDETALK_NUM_PROCESSES and
SDETALK_PROCESS_ID, which `sdetalk_jax.parallel.initialize_distributed` reads; on a CPU-only machine
`--devices-per-process N` also gives each process N emulated CPU devices. Output of process i is
prefixed with [i]. SIGTERM / Ctrl-C are passed on to every process (so each saves its checkpoint
and stops); if one process fails, the others are stopped. The exit code is the first non-zero one.
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


def launch(command: list[str], processes: int, devices_per_process: int = 0) -> int:
    address = f"127.0.0.1:{free_port()}"
    children = []
    threads = []
    for index in range(processes):
        child = subprocess.Popen(
            command,
            env=process_environment(os.environ, index, processes, address, devices_per_process),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        children.append(child)
        thread = threading.Thread(
            target=_forward, args=(child.stdout, f"[{index}]", sys.stdout), daemon=True
        )
        thread.start()
        threads.append(thread)

    def pass_on(signum, frame):
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, pass_on)
    signal.signal(signal.SIGINT, pass_on)

    exit_code = 0
    remaining = set(range(processes))
    while remaining:
        for index in sorted(remaining):
            code = children[index].poll()
            if code is None:
                continue
            remaining.discard(index)
            if code != 0 and exit_code == 0:
                exit_code = code
                print(
                    f"[launch] process {index} exited with {code}; stopping the others", flush=True
                )
                for other in children:
                    if other.poll() is None:
                        other.terminate()
        time.sleep(0.1)
    for thread in threads:
        thread.join(timeout=5)
    return exit_code


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().split("\n")[0])
    parser.add_argument("--processes", type=int, required=True, help="number of processes K")
    parser.add_argument(
        "--devices-per-process", type=int, default=0,
        help="emulated CPU devices per process (XLA_FLAGS); 0 leaves the devices alone",
    )  # fmt: skip
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command to run")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to run after --")
    if args.processes < 1:
        parser.error("--processes must be at least 1")
    return launch(command, args.processes, args.devices_per_process)


if __name__ == "__main__":
    sys.exit(main())
