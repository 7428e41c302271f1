"""The launchers: launch/local.py passes signals on, escalates to kill after a grace period and
tells a stop from a failure; launch/slurm.sbatch requeues a stopped job (SLURM's commands stubbed)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCHER = os.path.join(REPO, "launch", "local.py")
PREEMPTED = 75


def child_script(tmp_path, body: str) -> list[str]:
    """A stand-in for a training process: `body` runs with `index` (its process id) and `marks`
    (a folder for files that show what it did)."""
    path = tmp_path / "child.py"
    path.write_text(
        "import os, signal, sys, time\n"
        "index = int(os.environ['SDETALK_PROCESS_ID'])\n"
        f"marks = {str(tmp_path)!r}\n"
        "open(os.path.join(marks, f'pid{index}'), 'w').write(str(os.getpid()))\n"
        + textwrap.dedent(body)
    )
    return [sys.executable, os.fspath(path)]


def launch(command, *extra, **kwargs):
    return subprocess.Popen(
        [sys.executable, LAUNCHER, "--processes", "2", *extra, "--", *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kwargs,
    )


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_failure_stops_the_others_and_kills_one_that_does_not_stop(tmp_path):
    command = child_script(
        tmp_path,
        """
        if index == 0:
            time.sleep(0.5)
            sys.exit(3)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # blocked, as in a collective
        time.sleep(600)
        """,
    )
    start = time.monotonic()
    process = launch(command, "--grace-s", "2")
    out, _ = process.communicate(timeout=60)
    assert process.returncode == 3, out
    assert time.monotonic() - start < 30
    assert "process 0 exited with 3" in out and "process 1 did not stop within 2 s" in out
    assert not alive(int((tmp_path / "pid1").read_text()))


def test_a_signal_while_the_processes_start_reaches_every_one(tmp_path):
    command = child_script(
        tmp_path,
        """
        def stop(signum, frame):
            open(os.path.join(marks, f'stopped{index}'), 'w').write(signal.Signals(signum).name)
            sys.exit(75)
        signal.signal(signal.SIGTERM, stop)
        time.sleep(60)
        sys.exit(1)
        """,
    )
    process = launch(command)
    # The launcher says it starts the processes once its handlers are in place; SIGTERM at once.
    assert process.stdout.readline().startswith("[launch] starting 2 processes")
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=60)
    assert process.returncode == PREEMPTED, out
    for index in (0, 1):
        # Each child got the signal: in its handler, or (still starting) ended by it.
        marker = tmp_path / f"stopped{index}"
        assert not marker.exists() or marker.read_text() == "SIGTERM"
        pid = tmp_path / f"pid{index}"
        assert not pid.exists() or not alive(int(pid.read_text()))
    assert "exited with" not in out  # a stop is not reported as a failure


def test_every_process_stopping_is_a_stop(tmp_path):
    command = child_script(tmp_path, "time.sleep(0.2 * index)\nsys.exit(75)\n")
    process = launch(command)
    out, _ = process.communicate(timeout=60)
    assert process.returncode == PREEMPTED and "exited with" not in out, out


@pytest.mark.parametrize(
    ("srun_status", "requeued", "status"), [(75, True, 0), (1, False, 1), (0, False, 0)]
)
def test_slurm_script_requeues_a_stopped_job(tmp_path, srun_status, requeued, status):
    stubs = tmp_path / "bin"
    stubs.mkdir()
    (stubs / "srun").write_text(
        f'#!/bin/sh\necho "srun $*" >> {tmp_path}/calls\nexit {srun_status}\n'
    )
    (stubs / "scontrol").write_text(f'#!/bin/sh\necho "scontrol $*" >> {tmp_path}/calls\n')
    for stub in stubs.iterdir():
        stub.chmod(0o755)
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "activate").write_text("")
    result = subprocess.run(
        ["bash", os.path.join(REPO, "launch", "slurm.sbatch"), "configs/biwi.py", "runs/x",
         "--config.train.epochs=3"],
        cwd=tmp_path, capture_output=True, text=True, check=False,
        env={**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}", "SLURM_JOB_ID": "4242"},
    )  # fmt: skip
    assert result.returncode == status, result.stdout + result.stderr
    calls = (tmp_path / "calls").read_text()
    assert "--config 'configs/biwi.py' --workdir 'runs/x' --config.train.epochs=3" in calls
    assert ("scontrol requeue 4242" in calls) == requeued
