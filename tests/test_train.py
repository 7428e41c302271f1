"""End-to-end training on a tiny SynthBIWI corpus: outputs, resume equivalence, NaN stop."""

import json
import os

import jax
import numpy as np
import pytest
from flax import traverse_util

from sdetalk_jax import checkpoint, parallel
from sdetalk_jax.data import synthetic
from sdetalk_jax.data.biwi import DataError
from sdetalk_jax.train import TrainingDiverged, train
from tests.conftest import tiny_training_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def corpus_root(tmp_path_factory):
    root = os.fspath(tmp_path_factory.mktemp("train") / "corpus")
    synthetic.generate_corpus(
        root, subjects=2, sentences=5, vertices=120, workers=2, progress=False
    )
    return root


@pytest.fixture
def config(corpus_root, tmp_path):
    return tiny_training_config(corpus_root, os.fspath(tmp_path / "cache"))


def final_params(workdir):
    manager = checkpoint.checkpoint_manager(workdir)
    step = manager.latest_step()
    restored = manager.restore(step)
    return step, traverse_util.flatten_dict(jax.device_get(restored["state"]["params"]))


def test_train_writes_metrics_config_and_checkpoints(config, tmp_path, monkeypatch):
    workdir = os.fspath(tmp_path / "run")
    released = []
    monkeypatch.setattr(parallel, "release_freed_host_memory", lambda: released.append(1))
    validation = train(config, workdir)
    # The compiler's freed memory is handed back once per bucket, after its first step (the
    # tiny corpus fits one bucket: once in all, not once a step).
    assert len(released) == 1
    assert {
        "vertex_error_mm",
        "template_vertex_error_mm",
        "neutral_vertex_error_mm",
        "emotion_error",
    } <= set(validation)
    # Split by clip kind; the whole split's error is a frame-weighted mean of the two kinds.
    for name in ("vertex_error_mm", "neutral_vertex_error_mm"):
        kinds = [validation[f"{name}/emotional_clips"], validation[f"{name}/neutral_clips"]]
        assert min(kinds) <= validation[name] + 1e-6 and validation[name] <= max(kinds) + 1e-6
        assert min(kinds) > 0
    with open(os.path.join(workdir, "metrics.jsonl")) as handle:
        records = [json.loads(line) for line in handle]
    assert any("train/total" in r for r in records) and any(
        "val/vertex_error_mm" in r for r in records
    )
    assert os.listdir(os.path.join(workdir, "tensorboard"))
    with open(os.path.join(workdir, "config.json")) as handle:
        assert json.load(handle)["train"]["global_batch"] == 4
    with open(os.path.join(workdir, "environment.json")) as handle:
        assert "jax" in json.load(handle)["packages"]
    assert checkpoint.checkpoint_manager(workdir).latest_step() > 0
    assert (
        checkpoint.checkpoint_manager(workdir, checkpoint.BEST, keep=1, best=True).latest_step()
        is not None
    )
    # train.emotion_prototype_steps = -1 (tests/tiny_config.py): none when training ends
    assert not os.path.exists(os.path.join(workdir, "emotion_prototypes"))


def test_the_voice_statistics_are_standardised_by_the_training_clips_and_the_readout_learns(
    config, tmp_path
):
    """`model.emotion_statistics`: a new run starts the readout's centre and scale at the
    training clips' statistics, which training leaves as they are; its kernel learns."""
    from sdetalk_jax.data.corpus import open_corpus
    from sdetalk_jax.data.pipeline import ClipDataset
    from sdetalk_jax.models.networks import statistics_standardisation

    config.model.emotion_statistics = True
    config.loss.lambda_statistics = 0.1
    # The warm-up's first rate is 0: W moves at step 2, so a trained centre would at step 3.
    config.train.max_steps = 3
    workdir = os.fspath(tmp_path / "run")
    train(config, workdir)
    _, params = final_params(workdir)
    train_set = ClipDataset.from_corpus(open_corpus(config), "train", ())
    centre, scale = statistics_standardisation(train_set)
    np.testing.assert_array_equal(params[("generator", "statistics", "centre")], centre)
    np.testing.assert_array_equal(params[("generator", "statistics", "scale")], scale)
    assert np.abs(params[("generator", "statistics", "kernel")]).max() > 0


def test_resume_gives_bitwise_the_same_parameters(config, straight_run, tmp_path):
    interrupted = os.fspath(tmp_path / "interrupted")
    config.train.max_steps = 3  # stops after step 3, before the end of the run
    train(config, interrupted)
    assert checkpoint.checkpoint_manager(interrupted).latest_step() == 3
    config.train.max_steps = 0
    train(config, interrupted)  # the same command again: resumes at step 3
    _assert_same_end(interrupted, straight_run)


def _metrics_without_times(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as handle:
        records = [json.loads(line) for line in handle]
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in records]


def test_same_config_same_seed_gives_bitwise_identical_runs(config, straight_run, tmp_path):
    first, second = straight_run, os.fspath(tmp_path / "second")
    train(config, second)
    step_first, params_first = final_params(first)
    step_second, params_second = final_params(second)
    assert step_first == step_second
    for name, value in params_first.items():
        np.testing.assert_array_equal(params_second[name], value, err_msg="/".join(name))
    assert _metrics_without_times(first) == _metrics_without_times(second)


def test_each_source_of_randomness_has_its_own_seed(config):
    from sdetalk_jax.data import batching
    from sdetalk_jax.train import purpose_keys, purpose_seeds

    def key_data(seeds):
        return {k: jax.random.key_data(v) for k, v in purpose_keys(seeds).items()}

    base = purpose_seeds(config.train)
    assert base == {"data": 0, "init": 0, "noise": 0}
    config.train.noise_seed = 7  # vary the noise only
    varied = purpose_seeds(config.train)
    assert varied == {"data": 0, "init": 0, "noise": 7}
    np.testing.assert_array_equal(key_data(varied)["init"], key_data(base)["init"])
    assert not np.array_equal(key_data(varied)["noise"], key_data(base)["noise"])
    # init and noise keys differ even when their seeds are equal (each folds in its purpose)
    assert not np.array_equal(key_data(base)["init"], key_data(base)["noise"])
    config.train.seed = 3  # the shared seed moves what is not pinned
    assert purpose_seeds(config.train) == {"data": 3, "init": 3, "noise": 7}

    def order(seed):
        plans = batching.epoch_plan(
            list(range(10, 40)), global_batch=4, buckets=(64,), seed=seed, epoch=0
        )
        return [plan.rows for plan in plans]

    assert order(0) == order(0) and order(0) != order(1)


def test_non_finite_loss_stops_with_a_message_and_keeps_the_last_checkpoint(
    config, tmp_path, monkeypatch
):
    import sdetalk_jax.train as train_module

    real_compile = train_module.compiled_train_step

    def failing_at_step_2(*args):
        step_fn = real_compile(*args)

        def wrapped(state, batch):
            step = int(state["step"])
            new_state, metrics = step_fn(state, batch)
            if step == 2:  # as a diverging run would: the loss of step 2 is NaN
                metrics = {**metrics, "expression": float("nan")}
            return new_state, metrics

        return wrapped

    monkeypatch.setattr(train_module, "compiled_train_step", failing_at_step_2)
    workdir = os.fspath(tmp_path / "nan")
    config.train.checkpoint_every_steps = 1
    with pytest.raises(
        TrainingDiverged, match=r"non-finite loss at step 2 .*'expression': nan"
    ) as info:
        train(config, workdir)
    assert "last good checkpoint" in str(info.value)
    manager = checkpoint.checkpoint_manager(workdir)
    assert manager.latest_step() == 2  # saved after steps 1 and 2; nothing after the NaN
    restored = manager.restore(2)  # complete and readable
    assert int(restored["state"]["step"]) == 2


def test_a_step_that_fails_to_build_leaves_no_metrics_file_open(config, tmp_path, monkeypatch):
    """The trainer's parts are built before metrics.jsonl and TensorBoard are opened, so a failure
    there (an XLA error, a config the step cannot compile) leaves no open file behind in a
    process that goes on (a notebook, a sweep)."""
    import sdetalk_jax.train as train_module

    opened = []

    class RecordedWriter(train_module.MetricWriter):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            opened.append(self)

    def failing_compile(*args):
        raise RuntimeError("XLA could not compile the step")

    monkeypatch.setattr(train_module, "MetricWriter", RecordedWriter)
    monkeypatch.setattr(train_module, "compiled_train_step", failing_compile)
    with pytest.raises(RuntimeError, match="could not compile"):
        train(config, os.fspath(tmp_path / "run"))
    assert all(writer.handle is None or writer.handle.closed for writer in opened)


def test_missing_corpus_points_at_the_docs(config, tmp_path):
    config.data.root = os.fspath(tmp_path / "no-such-corpus")
    with pytest.raises(DataError, match="docs/data.md"):
        train(config, os.fspath(tmp_path / "run"))


# Runs that survive misuse and damage.


@pytest.fixture(scope="module")
def straight_run(corpus_root, tmp_path_factory):
    """One uninterrupted run of the tiny config: what every interrupted one must end equal to."""
    base = tmp_path_factory.mktemp("straight")
    config = tiny_training_config(corpus_root, os.fspath(base / "cache"))
    workdir = os.fspath(base / "run")
    train(config, workdir)
    return workdir


def _assert_same_end(workdir, reference):
    step, params = final_params(workdir)
    step_reference, params_reference = final_params(reference)
    assert step == step_reference
    for name, value in params_reference.items():
        np.testing.assert_array_equal(params[name], value, err_msg="/".join(name))
    # One record per step, the same as the uninterrupted run's.
    assert _metrics_without_times(workdir) == _metrics_without_times(reference)


def _snapshot(workdir):
    return {
        name: os.path.getmtime(os.path.join(workdir, name))
        for name in ("config.json", "environment.json", "assets.npz", "metrics.jsonl")
    }


PREVIOUS_RELEASE_RUN = os.path.join(os.path.dirname(__file__), "data", "previous_release_run")


def test_a_run_written_by_the_previous_release_resumes_and_animates(corpus_root, tmp_path):
    """tests/data/previous_release_run: tests/train_driver.py --generate --epochs 2 --max-steps 4
    (under the tests' XLA flags, which the random encoder's fingerprint depends on), trained and
    saved by the release before the models/ re-cut (its config.json still holds the removed
    options at their built values), on SynthBIWI format 3. It resumes to the end of its second
    epoch on a corpus with that release's mesh (today's clips under its templates, triangles and
    regions: the same assets, which resuming requires), and the resumed run animates."""
    import shutil

    from sdetalk_jax.checkpoint import ASSETS, Assets, load_run_config
    from sdetalk_jax.data import writer
    from sdetalk_jax.inference import TrainedModel

    workdir = os.fspath(tmp_path / "run")
    shutil.copytree(PREVIOUS_RELEASE_RUN, workdir)
    old = Assets.load(os.path.join(workdir, ASSETS))
    corpus_root = shutil.copytree(corpus_root, tmp_path / "corpus")
    os.remove(corpus_root / "templates.pkl")
    os.remove(corpus_root / "mesh" / "vertex_colors.npy")
    writer.write_templates(corpus_root, old.templates, as_pickle=False)
    writer.write_npy(os.fspath(corpus_root / "mesh" / "faces.npy"), old.faces)
    writer.write_region(corpus_root, "lve", old.lip_vertices)
    writer.write_region(corpus_root, "fdd", old.upper_face_vertices)
    corpus_root = os.fspath(corpus_root)
    with open(os.path.join(workdir, "config.json")) as handle:
        assert "speaker_baseline" in json.load(handle)["model"]
    config = load_run_config(workdir)
    assert "speaker_baseline" not in config.model
    config.data.root = corpus_root
    config.data.feature_cache = os.fspath(tmp_path / "cache")
    config.train.max_steps = 0  # it stopped at step 4 of its two epochs: the rest now
    step_before, _ = final_params(workdir)
    train(config, workdir)
    step_after, params = final_params(workdir)
    assert step_after > step_before
    assert all(np.all(np.isfinite(value)) for value in params.values())
    model = TrainedModel.load(workdir, checkpoint="latest")
    assert model.step == step_after
    waveform = np.asarray(
        jax.random.normal(jax.random.key(0), (16_000,)) * 0.1 + 0.3 * np.sin(np.arange(16_000) / 9)
    )
    result = model.animate_waveform(waveform, subject="F2", key=jax.random.key(1))
    assert result["vertices"].shape == (25, 120, 3)
    assert np.all(np.isfinite(result["vertices"]))


def test_resuming_with_another_config_is_refused_before_anything_is_written(config, tmp_path):
    from sdetalk_jax.checkpoint import RunError

    workdir = os.fspath(tmp_path / "run")
    config.train.max_steps = 3
    train(config, workdir)
    before = _snapshot(workdir)
    weight = config.loss.lambda_e
    config.loss.lambda_e = weight / 2
    with pytest.raises(RunError, match=rf"loss\.lambda_e: {weight} -> {weight / 2}") as info:
        train(config, workdir)
    assert "Use another --workdir" in str(info.value)
    config.loss.lambda_e = weight
    config.train.epochs = 3  # the warm-up + cosine schedule depends on the run's length
    with pytest.raises(RunError, match=r"train\.epochs: 2 -> 3"):
        train(config, workdir)
    assert _snapshot(workdir) == before
    assert checkpoint.checkpoint_manager(workdir).latest_step() == 3
    config.train.epochs = 2
    config.train.max_steps = 0  # may change: it only says when to stop
    config.train.checkpoint_every_steps = 1
    train(config, workdir)
    assert checkpoint.checkpoint_manager(workdir).latest_step() > 3  # resumed and went on


def test_resuming_on_other_data_is_refused(config, corpus_root, tmp_path):
    import shutil

    from sdetalk_jax.checkpoint import RunError
    from sdetalk_jax.data import safe_pickle, writer

    workdir = os.fspath(tmp_path / "run")
    config.train.max_steps = 2
    train(config, workdir)
    other = os.fspath(tmp_path / "other-corpus")
    shutil.copytree(corpus_root, other)
    templates = safe_pickle.load_templates(os.path.join(other, "templates.pkl"))
    writer.write_templates(other, {k: v + 0.001 for k, v in templates.items()})
    config.data.root = other
    with pytest.raises(RunError, match="trained on other data.*templates"):
        train(config, workdir)


def test_a_damaged_latest_checkpoint_is_set_aside_and_the_previous_restored(
    config, straight_run, tmp_path, capsys
):
    import shutil

    workdir = os.fspath(tmp_path / "run")
    config.train.max_steps = 3
    config.train.checkpoint_every_steps = 1
    train(config, workdir)
    shutil.rmtree(os.path.join(workdir, "checkpoints", "3", "state"))  # a copy cut short
    capsys.readouterr()
    config.train.max_steps = 0
    train(config, workdir)
    out = capsys.readouterr().out
    assert "warning: checkpoint step 3 in" in out and "is damaged" in out
    assert "resuming from step 2" in out
    assert os.path.isdir(os.path.join(workdir, "damaged", "checkpoints-3"))  # kept, not deleted
    _assert_same_end(workdir, straight_run)


def test_setup_computes_the_features_and_lets_go_of_the_context_encoder(config, monkeypatch):
    """Every clip's context features are computed before training, and the encoder is then let
    go (wav2vec2-base's weights are 380 MB that training would otherwise hold): the features are
    those the encoder gives a clip lazily."""
    import gc
    import weakref

    from sdetalk_jax import train as train_module
    from sdetalk_jax.data.pipeline import ClipDataset

    built, from_config = [], train_module.ContextEncoder.from_config

    def remembered(*args, **options):
        encoder = from_config(*args, **options)
        built.append(weakref.ref(encoder))
        return encoder

    monkeypatch.setattr(train_module.ContextEncoder, "from_config", remembered)
    with parallel.StopRequest() as stop:
        run = train_module.setup(train_module.with_loss_scale(config), stop)
    gc.collect()
    assert len(built) == 1 and built[0]() is None  # nothing holds the encoder any more
    lazily = ClipDataset.from_corpus(
        run.corpus, "val", run.assets.subjects, context_encoder=from_config(config)
    )
    for dataset in (run.train_set, run.val_set):
        assert dataset.context_encoder is None
    for index in range(len(lazily.clips)):
        np.testing.assert_array_equal(
            run.val_set.example(index)["context"], lazily.example(index)["context"]
        )


def test_sigterm_during_corpus_scanning_stops_before_anything_is_written(
    config, tmp_path, monkeypatch
):
    import signal

    from sdetalk_jax.data import biwi
    from sdetalk_jax.parallel import Preempted

    real_check = biwi._check_clip

    def check_and_be_preempted(*args):
        os.kill(os.getpid(), signal.SIGTERM)  # arrives while the corpus is read
        return real_check(*args)

    monkeypatch.setattr(biwi, "_check_clip", check_and_be_preempted)
    workdir = tmp_path / "run"
    with pytest.raises(Preempted, match="SIGTERM during corpus scanning"):
        train(config, os.fspath(workdir))
    assert not workdir.exists()


def test_sigterm_during_validation_saves_and_the_resumed_run_matches(
    config, straight_run, tmp_path, monkeypatch
):
    import signal

    from sdetalk_jax import validation
    from sdetalk_jax.parallel import Preempted

    real_evaluate = validation.evaluate_split

    def preempted_evaluation(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # arrives as validation starts
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(validation, "evaluate_split", preempted_evaluation)
    workdir = os.fspath(tmp_path / "run")
    with pytest.raises(Preempted, match="during the validation after step") as info:
        train(config, workdir)
    assert "saved a checkpoint" in str(info.value)
    step = int(str(info.value).split("after step ")[1].split()[0])
    assert checkpoint.checkpoint_manager(workdir).latest_step() == step  # the epoch's last
    monkeypatch.setattr(validation, "evaluate_split", real_evaluate)
    train(config, workdir)
    _assert_same_end(workdir, straight_run)


DONATION_SCRIPT = """
import sys
import jax, jax.numpy as jnp
from sdetalk_jax import checkpoint
from sdetalk_jax.parallel import Placement, data_mesh

def peak_kib():
    with open("/proc/self/status") as status:
        return int(next(line for line in status if line.startswith("VmHWM")).split()[1])

def growth_of_a_donating_step(state):
    jax.block_until_ready(state)  # a restore still filling its arrays is not the step's memory
    step = jax.jit(lambda state: jax.tree.map(lambda x: x + 1, state), donate_argnums=0)
    open("/proc/self/clear_refs", "w").write("5")  # restart the peak count
    before = peak_kib()
    state = jax.block_until_ready(step(state))
    assert float(state["kernel"][0, 0]) == 2.0
    return peak_kib() - before

placement = Placement(data_mesh())
made_by_xla = jax.jit(lambda: {"kernel": jnp.ones((8192, 8192)), "step": jnp.zeros((), jnp.int32)})()
state = placement.replicate(jax.device_get(made_by_xla))  # as train.restore_or_init places it
del made_by_xla
if sys.argv[1] == "restored":  # as a resumed run gets it back
    manager = checkpoint.checkpoint_manager(sys.argv[2])
    checkpoint.save_checkpoint(manager, state, {"epoch": 0, "batch": 0})
    manager.wait_until_finished()
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=placement.replicated), state
    )
    del state
    state, _ = checkpoint.restore_checkpoint(manager, abstract)
print(growth_of_a_donating_step(state))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux's /proc")
def test_the_first_step_updates_the_placed_or_restored_state_in_place(tmp_path):
    """The training state placed from host values (`Placement.replicate`, as `restore_or_init`
    places a new run's) or restored from a checkpoint (a resumed run's) is donated to the first
    step and updated in place. Placed as zero-copy host memory, it was not, and the step
    allocated a second state (256 MiB here) on top of the first; orbax restores into buffers
    of XLA's own."""
    import subprocess
    import sys

    for source in ("placed", "restored"):
        result = subprocess.run(
            [sys.executable, "-c", DONATION_SCRIPT, source, os.fspath(tmp_path / source)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        growth_mib = int(result.stdout.split()[-1]) / 1024
        assert growth_mib < 64, f"{source}: the step's peak grew by {growth_mib:.0f} MiB"
