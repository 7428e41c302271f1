"""A saved run's config (WORKDIR/config.json) brought to today's fields, in one place.

`upgrade_run_config` is applied wherever a run is loaded (resuming, evaluating, animating), so that
every other module reads fields plainly. A field added since a run was saved gets the value that
means what that run did; a removed option must have the value today's code implements, or the run
cannot be rebuilt and says so.
"""

from __future__ import annotations

import copy

# field: the value that means what a run saved without the field did
ADDED = {
    "model.emotion_attention": "parallel",
    "model.emotion_statistics": False,
    "loss.lambda_statistics": 0.0,
    "loss.head_reconstruction": "sample",
    "loss.rotation_distance_vertices": 0,
    "train.matmul_precision": "default",
    "train.lr_schedule": "constant",
    "train.warmup_steps": 0,
    "train.data_seed": -1,
    "train.init_seed": -1,
    "train.noise_seed": -1,
    "train.emotion_prototype_steps": -1,
}

# field: the one value of a removed option that today's networks and losses implement (docs/
# training.md keeps the figures of the others)
REMOVED = {
    "model.speaker_baseline": False,
    "model.head_mean_detached": False,
    "model.head_mean_smoothing_frames": 0.0,
    "loss.rotation_units": "template_mm",
}

# values of a kept option of the head noise path that were removed
REMOVED_CHOICES = {
    "model.head_noise": ("direction", "balanced"),
    "model.head_gain_emotion": ("mixture",),
}


class IncompatibleRun(ValueError):
    """A saved config that this version cannot rebuild; the message names the field."""


def _section(config: dict, dotted: str) -> tuple[dict | None, str]:
    section, name = dotted.split(".")
    return config.get(section), name


def upgrade_run_config(saved: dict, source: str = "config.json") -> dict:
    """A copy of a saved run config (as JSON) with today's fields: added ones filled in, removed
    ones dropped. Raises IncompatibleRun, naming `source` and the field, for a run that used a
    removed option or predates the head noise path's log-scaled gain."""
    config = copy.deepcopy(saved)
    for dotted, value in REMOVED.items():
        section, name = _section(config, dotted)
        if section is not None and name in section:
            if section.pop(name) != value:
                raise IncompatibleRun(
                    f"{source}: {dotted} is no longer an option (only {value!r} is built); this "
                    "run cannot be rebuilt by this version"
                )
    head_path = config.get("model", {}).get("head_noise_path", False)
    for dotted, choices in REMOVED_CHOICES.items():
        section, name = _section(config, dotted)
        # without the head noise path its kinds build nothing
        if head_path and section is not None and section.get(name) in choices:
            raise IncompatibleRun(
                f"{source}: {dotted} = {section[name]!r} is no longer an option; this run cannot "
                "be rebuilt by this version"
            )
    model = config.get("model", {})
    if model.get("head_noise_path") and "head_gain_log_scale" not in model:
        # Such a run's gain layer is softplus(Dense) with a bias near -5.8, which the log-gain
        # reading would clip to nothing: the head would silently stop turning.
        raise IncompatibleRun(
            f"{source}: this run's head noise path predates the log-scaled gain "
            "(model.head_gain_log_scale) and cannot be rebuilt by this version; train it again"
        )
    for dotted, value in ADDED.items():
        section, name = _section(config, dotted)
        if section is not None:
            section.setdefault(name, value)
    loss = config.get("loss")
    if loss is not None and "lambda_f" in loss:
        # one weight of the expression in L_d for every clip
        loss.setdefault("lambda_f_without_head_pose", loss["lambda_f"])
    return config
