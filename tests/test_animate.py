"""evaluate and animate end to end on a tiny trained run: tables, pictures, npz + mp4 with audio,
seeds, long audio in windows, and every bad input named in the error."""

import json
import os

import jax
import numpy as np
import pytest
import soundfile

from sdetalk_jax import animate, evaluate, render
from sdetalk_jax.checkpoint import RunError
from sdetalk_jax.data import synthetic
from sdetalk_jax.inference import TrainedModel
from sdetalk_jax.train import train
from tests.conftest import tiny_training_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    base = tmp_path_factory.mktemp("animate")
    root = os.fspath(base / "corpus")
    synthetic.generate_corpus(
        root, subjects=3, sentences=5, vertices=120, workers=2, progress=False
    )
    config = tiny_training_config(root, os.fspath(base / "cache"))
    config.train.epochs = 1
    config.train.emotion_prototype_steps = 3  # fitted when training ends (emotion control)
    config.data.splits.unseen_subjects = ("F4",)  # test-b: a speaker the model has not heard
    run = os.fspath(base / "run")
    train(config, run)
    return run


@pytest.fixture(scope="module")
def model(workdir):
    return TrainedModel.load(workdir)


@pytest.fixture(scope="module")
def speech(workdir, tmp_path_factory):
    """A test-set clip of the corpus, resampled to 22.05 kHz stereo: any wav must work."""
    import librosa

    source = os.path.join(os.path.dirname(workdir), "corpus", "wav", "F2_e05.wav")
    waveform, rate = soundfile.read(source, dtype="float32")
    resampled = librosa.resample(waveform, orig_sr=rate, target_sr=22050)
    path = os.fspath(tmp_path_factory.mktemp("speech") / "hello.wav")
    soundfile.write(path, np.stack([resampled, 0.5 * resampled], axis=1), 22050)
    return path, len(resampled) / 22050


def test_evaluate_writes_tables_for_the_model_and_both_baselines(workdir, tmp_path):
    out = os.fspath(tmp_path / "eval")
    report = evaluate.evaluate(
        workdir, "test-b", samples=2, plots=True, progress=False, out_dir=out
    )
    assert set(report["methods"]) == set(evaluate.METHODS)
    assert report["encoder_precision"] == "float32"
    for row in report["methods"].values():
        assert set(row) == {name for name, _, _ in evaluate.METRICS + evaluate.SPLIT_METRICS}
        assert row["mean_vertex_error"] > 0
    # Baselines keep the head still: no diversity; the model's noise moves it.
    assert report["methods"]["template alone"]["head_diversity"] == 0.0
    assert report["methods"]["SDETalk"]["head_diversity"] > 0.0
    assert "each training subject in turn" in open(os.path.join(out, "test-b.md")).read()
    with open(os.path.join(out, "test-b.json")) as handle:
        assert json.load(handle)["clips"] == report["clips"] > 0
    for name in ("test-b_expression.png", "test-b_head_motion.png"):
        assert os.path.getsize(os.path.join(out, name)) > 10_000

    # Run again: the outputs are kept unless --force.
    before = {name: os.path.getmtime(os.path.join(out, name)) for name in os.listdir(out)}
    with pytest.raises(RunError, match="test-b.json already exists"):
        evaluate.evaluate(workdir, "test-b", samples=2, progress=False, out_dir=out)
    assert {name: os.path.getmtime(os.path.join(out, name)) for name in os.listdir(out)} == before
    evaluate.evaluate(workdir, "test-b", samples=2, progress=False, out_dir=out, force=True)


def test_evaluate_cli_rejects_an_unknown_style_subject(workdir, capsys):
    assert evaluate.main(["--workdir", workdir, "--split", "val", "--style", "Z9"]) == 1
    assert "unknown subject 'Z9'" in capsys.readouterr().err


def test_animate_writes_npz_and_video_with_audio(workdir, model, speech, tmp_path):
    path, seconds = speech
    out = os.fspath(tmp_path / "out")
    written = animate.animate(
        workdir, path, subject="F2", out_dir=out, samples=2, seed=0, size=128, model=model,
        progress=False,
    )  # fmt: skip
    assert sorted(os.path.basename(p) for p in written) == [
        "hello_s0.mp4", "hello_s0.npz", "hello_s1.mp4", "hello_s1.npz",
    ]  # fmt: skip
    frames = int(seconds * 16000) // 640
    with np.load(os.path.join(out, "hello_s0.npz")) as result:
        assert result["vertices"].shape == (frames, 120, 3)
        assert result["rotation"].shape == (frames, 3, 3)
        assert result["translation"].shape == (frames, 3)
        assert result["emotion"].shape == (frames, 12)
        np.testing.assert_allclose(result["emotion"].sum(-1), 1.0, atol=1e-5)
    video = render.probe_video(os.path.join(out, "hello_s0.mp4"))
    assert video["frames"] == frames
    assert video["size"] == (128, 128)
    assert video["has_audio"]
    # the whole wav is in it (AAC may add a few ms of padding), though the frames end before it
    assert seconds - 0.002 <= video["audio_seconds"] <= seconds + 0.03
    assert not [f for f in os.listdir(out) if f.startswith(".partial")]


def test_a_bfloat16_encoder_is_recorded_and_moves_the_face_little(workdir, model, speech, tmp_path):
    path, _ = speech
    outputs = {}
    for precision in ("float32", "bfloat16"):
        out = os.fspath(tmp_path / precision)
        if precision == "float32":  # the loaded model's own; options, a keyword replacing one
            options = animate.AnimationOptions(subject="F2", out_dir=out, video=False)
            animate.animate(workdir, path, options, model=model, progress=False)
        else:  # the command line, which loads the run with it
            code = animate.main([
                "--workdir", workdir, "--audio", path, "--subject", "F2", "--out", out,
                "--no-video", "--encoder-precision", precision,
            ])  # fmt: skip
            assert code == 0
        with np.load(os.path.join(out, "hello_s0.npz")) as result:
            assert str(result["encoder_precision"]) == precision
            outputs[precision] = result["expression"]
    exact, fast = outputs["float32"], outputs["bfloat16"]
    motion = np.abs(exact - exact.mean(0)).mean()
    # the same face, to a fraction of its motion
    assert 0 < np.abs(fast - exact).mean() < 0.1 * motion
    with pytest.raises(RunError, match="unknown encoder precision 'int8'"):
        TrainedModel.load(workdir, encoder_precision="int8")
    with pytest.raises(RunError, match="'bfloat16' asked of a model loaded with 'float32'"):
        animate.animate(workdir, path, subject="F2", out_dir=os.fspath(tmp_path / "x"),
                        model=model, encoder_precision="bfloat16")  # fmt: skip


def test_same_seed_same_output_other_seed_other_motion(model, speech):
    import sdetalk_jax.audio as audio_module

    waveform = audio_module.load_audio(speech[0])
    first = model.animate_waveform(waveform, subject="F2", key=jax.random.key(0))
    again = model.animate_waveform(waveform, subject="F2", key=jax.random.key(0))
    other = model.animate_waveform(waveform, subject="F2", key=jax.random.key(1))
    for name in first:
        np.testing.assert_array_equal(first[name], again[name])
    assert np.abs(first["rotation"] - other["rotation"]).max() > 1e-5
    assert np.abs(first["expression"] - other["expression"]).max() > 1e-7


def test_long_audio_goes_through_overlapping_windows_without_seams(model, speech):
    import sdetalk_jax.audio as audio_module

    waveform = np.tile(audio_module.load_audio(speech[0]), 4)
    frames = len(waveform) // 640
    result = model.animate_waveform(
        waveform, subject="F3", key=jax.random.key(0), window_s=3.0, overlap_s=0.6
    )
    assert result["vertices"].shape[0] == frames
    assert all(np.all(np.isfinite(v)) for v in result.values())
    rotation = result["rotation"]
    np.testing.assert_allclose(np.linalg.det(rotation), 1.0, atol=1e-4)
    # Crossfading leaves no jump at the window seams bigger than the motion inside a window.
    steps = np.linalg.norm(np.diff(result["vertices"].reshape(frames, -1), axis=0), axis=1)
    assert steps.max() < 5 * np.percentile(steps, 99) + 1e-9


def test_the_last_window_hears_a_whole_window_and_is_blended_in_over_the_overlap(model, speech):
    """The last window ends with the clip, so it hears a whole window of audio, however little is
    left; its first frames, which its predecessor gives, weigh nothing. The clip's last frames
    are then exactly what the generator makes of that window, and every window but the first
    starts to count only where its predecessor ramps down."""
    import sdetalk_jax.audio as audio_module
    from sdetalk_jax.inference import window_leads, window_starts

    waveform = np.tile(audio_module.load_audio(speech[0]), 4)
    frames, window, overlap, key = len(waveform) // 640, 75, 15, jax.random.key(5)
    starts = window_starts(frames, window, overlap)
    last, previous = starts[-1], starts[-2]
    lead = window_leads(starts, window, overlap)[-1]
    assert lead > 10  # the last window starts well before its predecessor's ramp
    result = model.animate_waveform(
        waveform, subject="F3", key=key, window_s=window / 25, overlap_s=overlap / 25
    )
    subjects, template = np.array([model.subject_index("F3")]), model.template_for("F3")
    piece = waveform[last * 640 : frames * 640]
    hidden = model.networks.config.hidden
    noise = jax.random.normal(jax.random.fold_in(key, len(starts) - 1), (1, window, hidden))
    outputs = model.generate_fn()(
        model.params, model.window_batch(piece, window, subjects, template), noise
    )
    alone = previous + window - last  # the last window's own frames, after the ramp
    for name, ours in (("vertices", "posed"), ("expression", "expression"), ("neutral", "neutral")):
        np.testing.assert_allclose(
            result[name][last + alone :].reshape(window - alone, -1),
            np.asarray(getattr(outputs, ours)[0, alone:]),
            atol=1e-6,
            err_msg=name,
        )
    # Where the last window only listens (its lead), the frames are its predecessor's own.
    piece = waveform[previous * 640 : (previous + window) * 640]
    noise = jax.random.normal(jax.random.fold_in(key, len(starts) - 2), (1, window, hidden))
    before = model.generate_fn()(
        model.params, model.window_batch(piece, window, subjects, template), noise
    )
    listened = slice(last - previous, last - previous + lead)
    np.testing.assert_allclose(
        result["vertices"][last : last + lead].reshape(lead, -1),
        np.asarray(before.posed[0, listened]),
        atol=1e-6,
    )


def test_animate_streams_long_audio_to_disk_as_the_in_memory_animation(
    workdir, model, speech, tmp_path
):
    """The command hands the frames to disk a window at a time (memory does not grow with the
    audio: benchmarks/animate_speed.py measures it) and writes what animate_waveform returns."""
    import sdetalk_jax.audio as audio_module

    waveform = np.tile(audio_module.load_audio(speech[0]), 4)
    path = os.fspath(tmp_path / "long.wav")
    soundfile.write(path, waveform, 16000, subtype="FLOAT")
    options = {"subject": "F3", "window_s": 3.0, "overlap_s": 0.6}
    out = os.fspath(tmp_path / "out")
    animate.animate(
        workdir, path, out_dir=out, seed=3, video=False, model=model, progress=False, **options
    )
    key = jax.random.fold_in(jax.random.key(3), 0)
    chunks = list(model.animation_chunks(waveform, key=key, **options))
    assert len(chunks) > 3 and max(len(chunk["vertices"]) for chunk in chunks) <= 3.0 * 25
    expected = model.animate_waveform(waveform, key=key, **options)
    with np.load(os.path.join(out, "long_s0.npz")) as written:
        for name, value in expected.items():
            np.testing.assert_array_equal(written[name], value, err_msg=name)
    assert os.listdir(out) == ["long_s0.npz"]  # no temporary frames left behind


@pytest.mark.parametrize(
    "case, message",
    [
        ("empty", "audio is empty"),
        ("corrupt", "unreadable audio"),
        ("silent", "audio is silent"),
        ("missing", "audio file not found"),
    ],
)
def test_bad_audio_is_named_and_nothing_is_written(workdir, tmp_path, capsys, case, message):
    path = os.fspath(tmp_path / f"{case}.wav")
    if case == "empty":
        soundfile.write(path, np.zeros(0, np.float32), 16000)
    elif case == "corrupt":
        with open(path, "wb") as handle:
            handle.write(b"RIFF\x00\x00not really a wav file")
    elif case == "silent":
        soundfile.write(path, np.zeros(16000, np.float32), 16000)
    out = os.fspath(tmp_path / "out")
    code = animate.main(["--workdir", workdir, "--audio", path, "--subject", "F2", "--out", out])
    error = capsys.readouterr().err
    assert code == 1
    assert path in error and message in error
    assert not os.path.exists(out)


def test_unknown_subject_and_missing_checkpoint_are_named(workdir, speech, tmp_path, capsys):
    out = os.fspath(tmp_path / "out")
    assert (
        animate.main(["--workdir", workdir, "--audio", speech[0], "--subject", "Q7", "--out", out])
        == 1
    )
    assert "unknown subject 'Q7'" in capsys.readouterr().err
    empty = tmp_path / "not-a-run"
    empty.mkdir()
    assert (
        animate.main(
            ["--workdir", os.fspath(empty), "--audio", speech[0], "--subject", "F2", "--out", out]
        )
        == 1
    )
    assert "no config.json" in capsys.readouterr().err
    with open(os.path.join(workdir, "config.json")) as handle:
        (empty / "config.json").write_text(handle.read())
    with pytest.raises(RunError, match="no checkpoint found"):
        TrainedModel.load(os.fspath(empty))


def test_existing_outputs_are_not_replaced_without_force(workdir, model, speech, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "hello_s0.npz").write_bytes(b"the user's own file")
    with pytest.raises(RunError, match="already exists"):
        animate.animate(
            workdir, speech[0], subject="F2", out_dir=os.fspath(out), model=model, progress=False
        )
    assert (out / "hello_s0.npz").read_bytes() == b"the user's own file"


def _copy_run_with_config(workdir, tmp_path, **model_fields):
    """A copy of the trained run whose config.json names another context encoder."""
    import shutil

    copy = os.fspath(tmp_path / "run")
    shutil.copytree(workdir, copy)
    path = os.path.join(copy, "config.json")
    with open(path) as handle:
        config = json.load(handle)
    config["model"].update(model_fields)
    with open(path, "w") as handle:
        json.dump(config, handle)
    return copy


def test_inference_refuses_another_context_encoder(workdir, tmp_path, capsys):
    """The encoder's fingerprint is part of the run."""
    with open(os.path.join(workdir, "config.json")) as handle:
        random_settings = json.load(handle)["model"]["wav2vec2_random"]
    other = _copy_run_with_config(workdir, tmp_path, wav2vec2_random={**random_settings, "seed": 1})
    with pytest.raises(RunError, match="was trained with context encoder"):
        TrainedModel.load(other)
    assert evaluate.main(["--workdir", other, "--split", "val"]) == 1
    assert "was trained with context encoder" in capsys.readouterr().err


def test_a_missing_encoder_folder_is_one_line_in_evaluate_and_animate(
    workdir, speech, tmp_path, capsys
):
    """A missing encoder folder: one line of error, no traceback, nothing written."""
    missing = os.fspath(tmp_path / "no-such-encoder")
    broken = _copy_run_with_config(workdir, tmp_path, wav2vec2_checkpoint=missing)
    out = os.fspath(tmp_path / "out")
    assert evaluate.main(["--workdir", broken, "--split", "val", "--out", out]) == 1
    assert (
        capsys.readouterr().err
        == f"error: {missing}: not a checkpoint folder (needs config.json and weights)\n"
    )
    code = animate.main(
        ["--workdir", broken, "--audio", speech[0], "--subject", "F2", "--out", out]
    )
    assert code == 1 and capsys.readouterr().err.startswith(f"error: {missing}: not a checkpoint")
    assert not os.path.exists(out)


def test_a_damaged_checkpoint_is_named_in_one_line(workdir, tmp_path, capsys):
    import shutil

    copy = os.fspath(tmp_path / "run")
    shutil.copytree(workdir, copy)
    for folder in ("best", "checkpoints"):
        for step in os.listdir(os.path.join(copy, folder)):
            state = os.path.join(copy, folder, step, "state")
            if os.path.isdir(state):
                shutil.rmtree(state)
    assert evaluate.main(["--workdir", copy, "--split", "val", "--out", copy + "/e"]) == 1
    error = capsys.readouterr().err
    assert error.startswith(f"error: {copy}/best/") and "cannot be restored" in error
    assert error.count("\n") == 1


def test_inference_reads_only_the_generator_and_gets_the_checkpoint_bitwise(workdir, model):
    """`TrainedModel.load` restores the step and G's parameters alone (not D's, the estimators'
    or Adam's moments): the same numbers as the whole training state restored as training does."""
    from sdetalk_jax import checkpoint, optim

    abstract = jax.eval_shape(
        lambda key: optim.initial_state(model.networks, model.config, key), jax.random.key(0)
    )
    manager = checkpoint.checkpoint_manager(workdir, checkpoint.BEST, read_only=True)
    whole, _ = checkpoint.restore_checkpoint(manager, abstract)
    assert model.step == int(whole["step"]) > 0
    saved, loaded = jax.tree.leaves(whole["params"]["generator"]), jax.tree.leaves(model.params)
    assert len(saved) == len(loaded)
    for expected, value in zip(saved, loaded, strict=True):
        np.testing.assert_array_equal(np.asarray(value), np.asarray(expected))
    wanted = {"step": abstract["step"], "params": {"generator": abstract["params"]["generator"]}}
    part = checkpoint.restore_run_state(workdir, wanted)
    assert set(part) == {"step", "params"} and set(part["params"]) == {"generator"}


def test_loaded_parameters_are_on_the_device_once(model):
    """G's parameters are put on the device when loaded: kept as numpy (as the checkpoint is
    read), every window would copy them there again (on a GPU about 300 MB a window at BIWI size;
    the encoder's: tests/test_wav2vec2.py)."""
    leaves = jax.tree.leaves(model.params)
    assert leaves
    for leaf in leaves:
        assert isinstance(leaf, jax.Array), type(leaf)


def test_head_scale_moves_the_head_that_far_from_rest():
    from scipy.spatial.transform import Rotation

    from sdetalk_jax.inference import scale_head_motion

    vectors = np.radians([[3.0, -2.0, 1.0], [0.0, 5.0, 0.0], [-4.0, 1.0, 2.0]])
    rotation = Rotation.from_rotvec(vectors).as_matrix()
    translation = np.array([[1.0, 2.0, 3.0], [0.0, -1.0, 0.5], [2.0, 0.0, -1.0]]) * 1e-3
    still, zero = scale_head_motion(rotation, translation, 0.0)
    np.testing.assert_allclose(still, np.broadcast_to(np.eye(3), still.shape), atol=1e-7)
    np.testing.assert_allclose(zero, 0.0)
    same, same_t = scale_head_motion(rotation, translation, 1.0)
    np.testing.assert_allclose(same, rotation, atol=1e-6)
    np.testing.assert_allclose(same_t, translation, rtol=1e-6)
    half, half_t = scale_head_motion(rotation, translation, 0.5)
    # half the angle about the same axis: applied twice it is the whole rotation
    np.testing.assert_allclose(half @ half, rotation, atol=1e-6)
    np.testing.assert_allclose(Rotation.from_matrix(half).as_rotvec(), 0.5 * vectors, atol=1e-6)
    np.testing.assert_allclose(half_t, 0.5 * translation, rtol=1e-6)
    for bad in (-0.5, float("nan"), 10.0):
        with pytest.raises(ValueError, match="head scale"):
            scale_head_motion(rotation, translation, bad)


def test_head_scale_zero_is_a_still_head_and_one_is_as_generated(model, speech):
    import sdetalk_jax.audio as audio_module

    waveform = audio_module.load_audio(speech[0])
    key = jax.random.key(2)
    moving = model.animate_waveform(waveform, subject="F2", key=key)
    assert np.abs(moving["rotation"] - np.eye(3)).max() > 1e-5
    still = model.animate_waveform(waveform, subject="F2", key=key, head_scale=0.0)
    np.testing.assert_allclose(
        still["rotation"], np.broadcast_to(np.eye(3), still["rotation"].shape), atol=1e-6
    )
    np.testing.assert_allclose(still["translation"], 0.0)
    # the face is the same face, unposed: only the head has stopped
    np.testing.assert_allclose(still["vertices"], still["expression"], atol=1e-7)
    np.testing.assert_array_equal(still["expression"], moving["expression"])
    np.testing.assert_array_equal(
        model.animate_waveform(waveform, subject="F2", key=key, head_scale=1.0)["vertices"],
        moving["vertices"],
    )
    double = model.animate_waveform(waveform, subject="F2", key=key, head_scale=2.0)
    from scipy.spatial.transform import Rotation

    def angles(rotation):  # from the rotation vector: precise at small angles, unlike arccos
        return np.linalg.norm(
            Rotation.from_matrix(rotation.astype(np.float64)).as_rotvec(), axis=-1
        )

    np.testing.assert_allclose(
        angles(double["rotation"]), 2 * angles(moving["rotation"]), atol=1e-5
    )
    np.testing.assert_allclose(
        double["translation"], 2 * moving["translation"], rtol=1e-5, atol=1e-9
    )


def test_animate_refuses_a_bad_head_scale_before_any_work(workdir, model, speech, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["--workdir", workdir, "--audio", speech[0], "--subject", "F2", "--out", os.fspath(out)]
    with pytest.raises(SystemExit) as exit_info:
        animate.main([*args, "--head-scale", "-1"])
    assert exit_info.value.code == 2
    assert "--head-scale must be between 0 and 3" in capsys.readouterr().err
    with pytest.raises(RunError, match="--head-scale: head scale must be between 0 and 3, not 5"):
        animate.animate(
            workdir, speech[0], subject="F2", out_dir=os.fspath(out), head_scale=5.0, model=model
        )
    assert not out.exists()


def test_training_saves_emotion_prototypes_for_the_checkpoint_animate_uses(workdir, model):
    from sdetalk_jax.emotion_control import EmotionPrototypes

    path = EmotionPrototypes.path(workdir, model.step)
    assert os.path.exists(path)
    prototypes = EmotionPrototypes.load(path)
    assert prototypes.categories == tuple(model.assets.emotion_categories)
    assert prototypes.prototypes.shape == (len(synthetic.EMOTIONS), model.networks.config.hidden)
    assert np.isfinite(prototypes.neutral).all()  # the corpus has neutral takes


def test_a_requested_emotion_is_what_the_classifier_reads_and_changes_the_face(model, speech):
    import sdetalk_jax.audio as audio_module
    from sdetalk_jax.emotion_control import parse_emotion

    categories = model.assets.emotion_categories
    waveform = audio_module.load_audio(speech[0])
    key = jax.random.key(4)
    inferred = model.animate_waveform(waveform, subject="F2", key=key)
    prototypes = model.emotion_prototypes()
    generator = model.networks.generator
    readings = {}
    for name in ("anger", "happiness"):
        asked = model.animate_waveform(
            waveform, subject="F2", key=key, emotion=parse_emotion(name, categories)
        )
        row = prototypes.prototypes[categories.index(name)]
        # the animation's emotion is the run's classifier applied to the requested embedding
        expected, _ = generator.apply(
            {"params": model.params}, row[None, None], np.ones((1, 1), bool),
            method=lambda module, e, m: module.classifier(e, m),
        )  # fmt: skip
        np.testing.assert_allclose(
            asked["emotion"], np.broadcast_to(expected, asked["emotion"].shape), atol=1e-5
        )
        assert np.abs(asked["expression"] - inferred["expression"]).max() > 1e-6
        np.testing.assert_array_equal(asked["neutral"], inferred["neutral"])  # same lips
        readings[name] = asked["expression"]
    assert np.abs(readings["anger"] - readings["happiness"]).max() > 1e-6
    twice = model.animate_waveform(
        waveform, subject="F2", key=key, emotion=parse_emotion("happiness", categories, 2.0)
    )
    np.testing.assert_allclose(
        twice["expression"] - twice["neutral"],
        2 * (readings["happiness"] - inferred["neutral"]), rtol=1e-4, atol=1e-7,
    )  # fmt: skip
    none = model.animate_waveform(
        waveform, subject="F2", key=key, emotion=parse_emotion("none", categories)
    )
    np.testing.assert_allclose(none["expression"], none["neutral"], atol=1e-7)
    assert np.abs(none["rotation"] - np.eye(3)).max() > 1e-5  # the head still moves


def test_animate_emotion_options_end_to_end(workdir, model, speech, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["--workdir", workdir, "--audio", speech[0], "--subject", "F2", "--out", os.fspath(out)]
    usable = model.emotion_prototypes().available()  # the tiny corpus's labels carry a few
    spec = f"{usable[0]}=0.7,{usable[1]}=0.3"
    assert animate.main([*args, "--no-video", "--emotion", spec, "--emotion-intensity", "1.5"]) == 0
    with np.load(out / "hello_s0.npz") as result:
        assert str(result["emotion_request"]) == spec
        assert float(result["emotion_intensity"]) == 1.5
    bad = tmp_path / "bad"
    bad_args = [
        "--workdir",
        workdir,
        "--audio",
        speech[0],
        "--subject",
        "F2",
        "--out",
        os.fspath(bad),
    ]
    assert animate.main([*bad_args, "--emotion", "joy=1"]) == 1
    err = capsys.readouterr().err
    assert "--emotion: unknown emotion 'joy': this run's categories are anger, sadness" in err
    assert not bad.exists()  # refused before any work
    missing = next(name for name in model.assets.emotion_categories if name not in usable)
    assert animate.main([*bad_args, "--emotion", missing]) == 1
    assert f"--emotion: emotion '{missing}' has no prototype" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        animate.main([*bad_args, "--emotion-intensity", "-1"])
    assert exit_info.value.code == 2
    assert not bad.exists()


def test_an_older_run_fits_its_prototypes_from_its_corpus_or_says_why_not(
    workdir, speech, tmp_path
):
    import shutil

    from sdetalk_jax.emotion_control import PROTOTYPES_DIR, EmotionPrototypes

    copy = os.fspath(tmp_path / "run")
    shutil.copytree(workdir, copy, ignore=shutil.ignore_patterns(PROTOTYPES_DIR))
    model = TrainedModel.load(copy)
    fitted = model.emotion_prototypes()
    assert os.path.exists(EmotionPrototypes.path(copy, model.step))
    # the same fit as training's, from the same corpus, steps and checkpoint
    saved = EmotionPrototypes.load(EmotionPrototypes.path(workdir, model.step))
    assert fitted.step == saved.step == model.step
    np.testing.assert_allclose(fitted.prototypes, saved.prototypes, rtol=1e-5, atol=1e-6)
    shutil.rmtree(os.path.join(copy, PROTOTYPES_DIR))
    config_path = os.path.join(copy, "config.json")
    with open(config_path) as handle:
        config = json.load(handle)
    config["data"]["root"] = os.fspath(tmp_path / "gone")
    with open(config_path, "w") as handle:
        json.dump(config, handle)
    with pytest.raises(
        RunError, match=r"emotion_prototypes/\d+\.npz is missing .*/gone is not here"
    ):
        TrainedModel.load(copy).emotion_prototypes()
    # the speech's own emotion at another intensity needs no prototype
    import sdetalk_jax.audio as audio_module
    from sdetalk_jax.emotion_control import parse_emotion

    older = TrainedModel.load(copy)
    waveform = audio_module.load_audio(speech[0])
    key = jax.random.key(5)
    plain = older.animate_waveform(waveform, subject="F2", key=key)
    half = older.animate_waveform(
        waveform, subject="F2", key=key,
        emotion=parse_emotion("inferred", older.assets.emotion_categories, 0.5),
    )  # fmt: skip
    np.testing.assert_allclose(
        half["expression"] - half["neutral"], 0.5 * (plain["expression"] - plain["neutral"]),
        rtol=1e-4, atol=1e-7,
    )  # fmt: skip


def test_animate_writes_a_glb_with_its_audio_that_the_validator_accepts(
    workdir, model, speech, tmp_path, capsys
):
    import pygltflib

    from tests.test_export_gltf import node_tools_missing, validate

    out = tmp_path / "out"
    usable = model.emotion_prototypes().available()
    args = ["--workdir", workdir, "--audio", speech[0], "--subject", "F2", "--out", os.fspath(out)]
    assert (
        animate.main(
            [*args, "--format", "glb", "--emotion", usable[0], "--morph-tolerance-mm", "0.02"]
        )
        == 0
    )
    assert sorted(os.listdir(out)) == ["hello_s0.glb", "hello_s0.npz", "hello_s0.wav"]
    printed = capsys.readouterr().out
    assert "morph targets, largest vertex error" in printed and "(tolerance 0.02 mm)" in printed
    gltf = pygltflib.GLTF2().load(os.fspath(out / "hello_s0.glb"))
    extras = gltf.asset.extras
    assert extras["audio"] == "hello_s0.wav" and extras["emotion"] == f"{usable[0]}=1"
    assert extras["morph_max_error_mm"] <= 0.02 and extras["fps"] == model.assets.fps
    waveform, rate = soundfile.read(os.fspath(out / "hello_s0.wav"))
    assert rate == 16000 and abs(len(waveform) / rate - speech[1]) < 0.01
    if node_tools_missing() is None:
        assert validate(os.fspath(out / "hello_s0.glb"))["issues"]["numErrors"] == 0
    # an existing export is not replaced without --force; a bad format is a usage error
    assert animate.main([*args, "--format", "glb"]) == 1
    assert "hello_s0.npz already exists (3 outputs would be replaced)" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        animate.main([*args, "--format", "fbx"])
    assert exit_info.value.code == 2
    assert "--format: unknown format 'fbx': choose from npz, mp4, glb" in capsys.readouterr().err


def test_loading_a_run_logs_no_read_only_warning(workdir, caplog):
    """Orbax's "Given directory is read only" for the managers that restore is not shown: nothing
    is wrong with the folder."""
    import logging

    caplog.set_level(logging.WARNING)
    TrainedModel.load(workdir)
    assert not [r for r in caplog.records if "read only" in r.getMessage()]
