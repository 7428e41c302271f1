"""sdetalk_jax/train.py: what the training loop tells the user about its data."""

from sdetalk_jax.train import emotion_labels_note, head_pose_note, supervision_notes


def test_the_trainer_says_once_when_no_clip_has_head_pose():
    class Clip:
        def __init__(self, pose):
            self.head_pose_path = "pose.npy" if pose else None

    assert head_pose_note([Clip(True), Clip(False)]) is None
    note = head_pose_note([Clip(False), Clip(False)])
    assert "no training clip has head pose" in note and "not learned" in note


def test_the_trainer_says_when_no_clip_has_an_emotion_label():
    class Clip:
        def __init__(self, labelled, pose=True):
            self.emotion = [1.0] if labelled else None
            self.head_pose_path = "pose.npy" if pose else None

    assert emotion_labels_note([Clip(True), Clip(False)]) is None
    note = emotion_labels_note([Clip(False), Clip(False)])
    assert "emotion_labels.csv" in note and "L_cls" in note and "emotion head" in note
    assert supervision_notes([Clip(True)]) == []
    both = supervision_notes([Clip(False, pose=False)])
    assert len(both) == 2 and "head pose" in both[0] and "emotion label" in both[1]


def test_a_run_without_head_pose_or_labels_says_so_at_start_in_its_folder_and_in_evaluate(
    tmp_path, capsys
):
    """Training on a corpus with neither head_pose/ nor emotion_labels.csv prints both notes,
    saves them with the run, and evaluate's report and table repeat them."""
    import os
    import shutil

    from sdetalk_jax.checkpoint import load_run_notes
    from sdetalk_jax.data import synthetic
    from sdetalk_jax.evaluate import markdown_table
    from sdetalk_jax.train import train
    from tests.conftest import tiny_training_config

    root = os.fspath(tmp_path / "corpus")
    synthetic.generate_corpus(
        root, subjects=2, sentences=5, vertices=120, workers=2, progress=False
    )
    shutil.rmtree(os.path.join(root, "head_pose"))
    os.remove(os.path.join(root, "emotion_labels.csv"))
    config = tiny_training_config(root, os.fspath(tmp_path / "cache"))
    config.train.max_steps = 1
    workdir = os.fspath(tmp_path / "run")
    train(config, workdir)
    printed = capsys.readouterr().out
    notes = load_run_notes(workdir)
    assert len(notes) == 2 and all(note in printed for note in notes)
    table = markdown_table({}, "test-a", 0, "", 0.5, notes=notes)
    assert all(note in table for note in notes)
    assert load_run_notes(os.fspath(tmp_path)) == []  # a run saved before notes were written

    # The head was never taught to move: every sample holds it at the rest pose, though the
    # head noise path's gain is where it started.
    import jax
    import numpy as np

    from sdetalk_jax.inference import TrainedModel

    model = TrainedModel.load(workdir)
    assert model.networks.config.head_noise_path and not model.networks.config.head_motion
    waveform = np.sin(np.linspace(0, 400, 16000)).astype(np.float32) * 0.3
    frames = model.animate_waveform(
        waveform, subject=model.assets.subjects[0], key=jax.random.key(3)
    )
    np.testing.assert_allclose(
        frames["rotation"], np.broadcast_to(np.eye(3), frames["rotation"].shape)
    )
    np.testing.assert_array_equal(frames["translation"], 0.0)
