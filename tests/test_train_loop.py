"""sdetalk_jax/train.py: the training loop's notes to the user."""

from sdetalk_jax.train import head_pose_note


def test_the_trainer_says_once_when_no_clip_has_head_pose():
    class Clip:
        def __init__(self, pose):
            self.head_pose_path = "pose.npy" if pose else None

    assert head_pose_note([Clip(True), Clip(False)]) is None
    note = head_pose_note([Clip(False), Clip(False)])
    assert "no training clip has head pose" in note and "not learned" in note
