"""run_config.upgrade_run_config: a saved config brought to today's fields, or refused by name.
A run folder written by the previous release is resumed and animated in tests/test_train.py."""

import json

import pytest

from sdetalk_jax.checkpoint import config_differences
from sdetalk_jax.config_files import repository_config
from sdetalk_jax.models.config import SDETalkConfig
from sdetalk_jax.run_config import ADDED, REMOVED, IncompatibleRun, upgrade_run_config

SIZES = dict(num_vertices=10, context_dim=4, num_subjects=2, num_emotions=3)


def todays_config() -> dict:
    """configs/synthetic.py as a run saves it: the loss scale resolved from the corpus's units."""
    config = json.loads(repository_config("synthetic").to_json_best_effort())
    config["loss"]["vertex_scale"] = 1000.0
    return config


def test_a_run_saved_before_a_field_existed_resumes_when_it_has_the_old_meaning():
    """A saved config without a field added since compares equal to one with the field at the
    value that means what the run did, and only to that."""
    wanted = todays_config()
    saved = json.loads(json.dumps(wanted))
    for dotted, value in ADDED.items():
        section, name = dotted.split(".")
        wanted[section][name] = value
        saved[section].pop(name)
    assert config_differences(upgrade_run_config(saved), wanted) == []
    wanted["model"]["emotion_statistics"] = True
    wanted["train"]["matmul_precision"] = "float32"
    assert config_differences(upgrade_run_config(saved), wanted) == [
        "model.emotion_statistics",
        "train.matmul_precision",
    ]


def test_a_run_saved_with_one_expression_weight_in_diversity_keeps_it_for_every_clip():
    saved = todays_config()
    saved["loss"]["lambda_f"] = 0.3
    saved["loss"].pop("lambda_f_without_head_pose")
    assert upgrade_run_config(saved)["loss"]["lambda_f_without_head_pose"] == 0.3


def test_removed_options_are_dropped_at_their_built_value_and_refused_otherwise():
    saved = todays_config()
    for dotted, value in REMOVED.items():
        section, name = dotted.split(".")
        saved[section][name] = value
    upgraded = upgrade_run_config(saved)
    assert config_differences(upgraded, todays_config()) == []
    assert "speaker_baseline" not in upgraded["model"] and "speaker_baseline" in saved["model"]
    for dotted, other in (
        ("model.speaker_baseline", True),
        ("model.head_mean_smoothing_frames", 3.0),
        ("loss.rotation_units", "matrix"),
        ("model.head_noise", "direction"),
        ("model.head_gain_emotion", "mixture"),
    ):
        section, name = dotted.split(".")
        refused = json.loads(json.dumps(saved))
        refused[section][name] = other
        with pytest.raises(IncompatibleRun, match=f"runs/x/config.json: {dotted}"):
            upgrade_run_config(refused, "runs/x/config.json")


def test_a_run_saved_before_the_options_is_rebuilt_as_trained_or_refused():
    """The emotion network of a run saved before its order was an option is rebuilt in the
    parallel order it was trained with; a head noise path with the old softplus gain, which the
    log-gain would clip to nothing, is refused with a reason instead of animating a still head."""
    saved = todays_config()
    for name in ("emotion_attention", "head_gain_log_scale"):
        saved["model"].pop(name)
    saved["model"].update(head_noise_path=False, head_mean_pose="learned")
    upgraded = upgrade_run_config(saved)
    import ml_collections

    rebuilt = SDETalkConfig.for_run(ml_collections.ConfigDict(upgraded), **SIZES)
    assert rebuilt.emotion_attention == "parallel"
    assert SDETalkConfig(**SIZES).emotion_attention == "sequential"  # the paper's, for new code
    saved["model"].update(head_noise_path=True, head_mean_pose="rest")
    with pytest.raises(IncompatibleRun, match="predates the log-scaled gain"):
        upgrade_run_config(saved)
    saved["model"]["head_gain_log_scale"] = 10.0
    assert upgrade_run_config(saved)["model"]["head_noise_path"]


def test_a_training_config_goes_through_the_same_upgrade_as_a_saved_one():
    """A config file that still sets a removed option resumes its own run when it sets the value
    today's code builds (the field is dropped on both sides), and is refused when it asks for
    another one, rather than training without it."""
    from sdetalk_jax.checkpoint import RunError, training_config_json

    config = repository_config("synthetic")
    config.loss.vertex_scale = 1000.0  # as training resolves it (data.corpus.with_loss_scale)
    config.model.speaker_baseline = False
    config.loss.rotation_units = "template_mm"
    upgraded = training_config_json(config)
    assert "speaker_baseline" not in upgraded["model"]
    assert config_differences(upgrade_run_config(todays_config()), upgraded) == []
    config.model.speaker_baseline = True
    with pytest.raises(RunError, match="the training config: model.speaker_baseline"):
        training_config_json(config)
    # a kind of the head noise path's noise builds nothing without the path
    paper = repository_config("biwi_paper")
    paper.model.head_noise = "direction"
    training_config_json(paper)
