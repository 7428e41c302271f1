"""Data parallelism and interruption, each training run in its own process (device counts are
fixed when JAX starts): 4 emulated devices against 1, two processes joined by launch/local.py,
SIGTERM, and kill -9 in the middle of a checkpoint save."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from sdetalk_jax.data import synthetic
from tests.conftest import TEST_XLA_FLAG

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DRIVER = os.path.join(REPO, "tests", "train_driver.py")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    base = tmp_path_factory.mktemp("scaling")
    root = os.fspath(base / "corpus")
    synthetic.generate_corpus(
        root, subjects=2, sentences=5, vertices=120, workers=2, progress=False
    )
    return root, os.fspath(base / "cache")


@pytest.fixture(scope="module")
def straight(corpus, tmp_path_factory):
    """The reference: one process, one device, two epochs, uninterrupted."""
    workdir = os.fspath(tmp_path_factory.mktemp("straight") / "run")
    run_driver(corpus, workdir)
    params = load_params(workdir)
    params["workdir"] = workdir
    return params


def reference_params(straight):
    return {name: value for name, value in straight.items() if name != "workdir"}


def environment(devices: int = 1) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SDETALK_")}
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices} {TEST_XLA_FLAG}"
    env["JAX_PLATFORMS"] = "cpu"
    return env


def driver_command(corpus, workdir, *extra):
    root, cache = corpus
    return [sys.executable, DRIVER, "--root", root, "--cache", cache, "--workdir", workdir, *extra]


def run_driver(corpus, workdir, *extra, devices=1, check=True):
    result = subprocess.run(
        driver_command(corpus, workdir, *extra),
        env=environment(devices),
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def load_params(workdir, process=0):
    with np.load(os.path.join(workdir, f"params_{process}.npz")) as archive:
        return {name: archive[name] for name in archive.files}


def learning_rates(steps: int) -> list[float]:
    """The rate of each step of the driver's uninterrupted run (tests/tiny_config.py keeps
    configs/synthetic.py's schedule: warm-up, then cosine decay over the run's length)."""
    from sdetalk_jax.optim import learning_rate
    from tests.tiny_config import get_config

    schedule = learning_rate(get_config().train, steps)
    return [float(schedule(t)) if callable(schedule) else float(schedule) for t in range(steps)]


def assert_params_close(first, second):
    """Equal up to summation order. Adam divides each gradient by its running magnitude, so where
    a gradient is near zero, rounding differences become steps of up to the learning rate: a few
    elements may drift by up to a step per step (so never by more than the sum of the steps'
    rates), but almost all agree to 1 % of the largest step. (A real difference, such as a gradient
    averaged over one device's rows only, moves most elements.) Attention key biases are left out:
    softmax ignores them, their exact gradient is zero, and what Adam makes of the rounding noise
    is all they learn (docs/scaling.md)."""
    assert first.keys() == second.keys()
    rates = learning_rates(int(first["step"]))
    differing = total = 0
    for name in first:
        if name == "step" or name.endswith("key/bias"):
            continue
        difference = np.abs(first[name] - second[name])
        assert difference.max() <= sum(rates), name
        differing += int(np.sum(difference > 0.01 * max(rates)))
        total += difference.size
    assert differing / total < 0.005, f"{differing} of {total} parameters differ"


def assert_metrics_close(workdir, reference_workdir):
    """The same losses and validation figures step by step (wall-clock times aside)."""

    def records(folder):
        with open(os.path.join(folder, "metrics.jsonl")) as handle:
            return [json.loads(line) for line in handle]

    first, second = records(workdir), records(reference_workdir)
    assert len(first) == len(second)
    for a, b in zip(first, second, strict=True):
        assert a.keys() == b.keys()
        for name in a:
            if not name.startswith("time/"):
                assert a[name] == pytest.approx(b[name], rel=1e-2, abs=1e-5), name


def test_four_emulated_devices_match_one_device(corpus, straight, tmp_path):
    four = os.fspath(tmp_path / "four")
    result = run_driver(corpus, four, devices=4)
    assert "devices 4 processes 1" in result.stdout
    params = load_params(four)
    assert int(params["step"]) == int(straight["step"]) > 0
    # The same global batch of 4 clips, one per device: only the summation order differs.
    assert_params_close(params, reference_params(straight))
    assert_metrics_close(four, straight["workdir"])


def test_two_processes_from_the_local_launcher_agree(straight, tmp_path):
    """Two processes joined by launch/local.py, on a corpus that is not there yet: only process 0
    generates it (the other waits instead of writing into the same folder), and the pair trains
    to the single-process run's parameters."""
    pair = os.fspath(tmp_path / "pair")
    launcher = [sys.executable, os.path.join(REPO, "launch", "local.py"), "--processes", "2", "--"]
    generated = (os.fspath(tmp_path / "generated"), os.fspath(tmp_path / "cache"))
    result = subprocess.run(
        launcher + driver_command(generated, pair, "--generate"),
        env=environment(1),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[0] devices 2 processes 2" in result.stdout
    assert "[1] devices 2 processes 2" in result.stdout
    generating = [line for line in result.stdout.splitlines() if "generating the synthetic" in line]
    assert len(generating) == 1 and generating[0].startswith("[0] "), result.stdout
    assert not [name for name in os.listdir(tmp_path) if ".partial-" in name]
    process_0, process_1 = load_params(pair, 0), load_params(pair, 1)
    for name in process_0:  # both processes hold bitwise the same replicated parameters
        np.testing.assert_array_equal(process_0[name], process_1[name], err_msg=name)
    # Equal to the single-process run with the same global batch, up to summation order.
    assert int(process_0["step"]) == int(straight["step"])
    assert_params_close(process_0, reference_params(straight))
    assert_metrics_close(pair, straight["workdir"])


def _wait_for_steps(workdir, count, process, timeout=300):
    path = os.path.join(workdir, "metrics.jsonl")
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"training ended early: {process.communicate()}")
        if os.path.exists(path):
            with open(path) as handle:
                if sum('"train/total"' in line for line in handle) >= count:
                    return
        time.sleep(0.2)
    raise AssertionError("training did not reach the step in time")


def test_sigterm_saves_a_checkpoint_and_the_resumed_run_matches(corpus, straight, tmp_path):
    stopped = os.fspath(tmp_path / "stopped")
    process = subprocess.Popen(
        driver_command(corpus, stopped),
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for_steps(stopped, 2, process)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, out + err
    # The signal may land between steps or during the epoch's validation; both save and stop.
    assert re.search(r"SIGTERM: stopped (during the validation )?after step \d+", out), out
    step = int(load_params(stopped)["step"])
    assert 2 <= step < int(straight["step"])  # stopped early, with a checkpoint of that step
    run_driver(corpus, stopped)  # the same command again resumes
    resumed = load_params(stopped)
    for name, value in reference_params(straight).items():
        np.testing.assert_array_equal(resumed[name], value, err_msg=name)


def test_kill_9_during_a_save_resumes_from_the_last_complete_checkpoint(corpus, straight, tmp_path):
    workdir = os.fspath(tmp_path / "killed")
    result = run_driver(
        corpus, workdir, "--checkpoint-every", "1", "--kill-during-save-at", "3", check=False
    )
    assert result.returncode == -signal.SIGKILL
    with open(os.path.join(workdir, "killed_during_save.txt")) as handle:
        assert handle.read().strip(), "the save of step 3 had already finished when killed"
    resumed = run_driver(corpus, workdir, "--checkpoint-every", "1")
    assert "resuming from step 2" in resumed.stdout
    params = load_params(workdir)
    for name, value in reference_params(straight).items():
        np.testing.assert_array_equal(params[name], value, err_msg=name)
    # Step 3's records, written before the kill, are not repeated: one record per step.
    assert_metrics_close(workdir, straight["workdir"])


def test_ctrl_c_on_the_command_saves_and_exits_75(corpus, tmp_path):
    """A stop is not a success (exit 0 would end a SLURM job as completed)."""
    root, cache = corpus
    workdir = os.fspath(tmp_path / "run")
    process = subprocess.Popen(
        [
            sys.executable, "-m", "sdetalk_jax.train", "--config", "tests/tiny_config.py",
            "--workdir", workdir, f"--config.data.root={root}", f"--config.data.feature_cache={cache}",
            "--config.train.epochs=50",
        ],
        cwd=REPO, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    _wait_for_steps(workdir, 2, process)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 75, out + err
    assert re.search(r"SIGINT: stopped (during the validation )?after step \d+", out), out
    with open(os.path.join(workdir, "metrics.jsonl")) as handle:
        steps = [json.loads(line)["step"] for line in handle if '"train/total"' in line]
    from sdetalk_jax import checkpoint

    assert checkpoint.checkpoint_manager(workdir).latest_step() == steps[-1]
