"""A run folder: its checkpoints, its saved config and the assets that inference needs.

What training writes and inference reads, so that neither imports the other:

    WORKDIR/config.json      the run's config (`load_run_config`)
    WORKDIR/assets.npz       templates, mesh, regions, subject order, emotion names (`Assets`)
    WORKDIR/checkpoints/     the last few training states, data position included (orbax)
    WORKDIR/best/            the state with the lowest validation vertex error
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp

from sdetalk_jax import parallel
from sdetalk_jax.data import biwi
from sdetalk_jax.fileio import write_json, write_npz
from sdetalk_jax.run_config import IncompatibleRun, upgrade_run_config

CHECKPOINTS = "checkpoints"
BEST = "best"
ASSETS = "assets.npz"


class RunError(ValueError):
    """A workdir that cannot be used: no config, no checkpoint, unknown subject, ..."""


@dataclasses.dataclass(frozen=True)
class Assets:
    """What inference needs from the corpus, kept with the run so that animating needs no data."""

    subjects: tuple[str, ...]  # training subjects, in identity (one-hot) order
    templates: dict[str, np.ndarray]  # subject -> [V, 3] (all corpus subjects)
    faces: np.ndarray  # [F, 3] triangles
    lip_vertices: np.ndarray
    upper_face_vertices: np.ndarray
    fps: float
    emotion_categories: tuple[str, ...]
    # SHA-256 of the frozen context encoder (config, normalisation, every weight): inference
    # refuses another encoder, whose features would silently change the animation. Empty for runs
    # saved before it was recorded.
    encoder_fingerprint: str = ""
    # Whether the training clips had head pose (`SDETalkConfig.head_motion`); None for runs saved
    # before it was recorded, whose head moves as it was trained.
    head_pose: bool | None = None
    # [V, 3] RGB the corpus paints its mesh with (mesh/vertex_colors.npy); [0, 3] when it has none
    vertex_colors: np.ndarray = dataclasses.field(
        default_factory=lambda: np.zeros((0, 3), np.float32)
    )

    @classmethod
    def from_corpus(
        cls, corpus: biwi.Corpus, subjects, encoder_fingerprint: str = "", head_pose=None
    ) -> Assets:
        faces_path = os.path.join(corpus.root, "mesh", "faces.npy")
        faces = (
            np.load(faces_path, allow_pickle=False)
            if os.path.exists(faces_path)
            else np.zeros((0, 3), np.int32)
        )
        empty = np.zeros((0,), np.int64)
        return cls(
            subjects=tuple(subjects),
            templates={k: np.asarray(v, np.float32) for k, v in corpus.templates.items()},
            faces=faces.astype(np.int32),
            lip_vertices=empty if corpus.lip_vertices is None else corpus.lip_vertices,
            upper_face_vertices=(
                empty if corpus.upper_face_vertices is None else corpus.upper_face_vertices
            ),
            fps=float(corpus.fps),
            emotion_categories=tuple(corpus.emotion_categories),
            encoder_fingerprint=encoder_fingerprint,
            head_pose=head_pose,
            vertex_colors=corpus_vertex_colors(corpus),
        )

    @property
    def dimensions(self) -> dict[str, int | bool]:
        """What the networks take from the data (`SDETalkConfig.for_run`): sizes, and whether
        the head was taught to move."""
        return {
            "num_vertices": next(iter(self.templates.values())).shape[0],
            "num_subjects": len(self.subjects),
            "num_emotions": len(self.emotion_categories),
            "head_motion": self.head_pose is not False,
        }

    def differences(self, other: Assets) -> list[str]:
        """The fields in which two runs' assets differ (empty when they are the same)."""
        differing = []
        for field in dataclasses.fields(self):
            mine, theirs = getattr(self, field.name), getattr(other, field.name)
            if field.name == "encoder_fingerprint" and not (mine and theirs):
                continue  # a run saved before fingerprints were recorded: unknown, not different
            if field.name == "head_pose" and None in (mine, theirs):
                continue  # the same for a run saved before head pose was recorded
            if field.name == "vertex_colors":
                continue  # display only: repainting the mesh changes nothing a run learnt
            if isinstance(mine, dict):
                same = mine.keys() == theirs.keys() and all(
                    np.array_equal(mine[k], theirs[k]) for k in mine
                )
            elif isinstance(mine, np.ndarray):
                same = np.array_equal(mine, theirs)
            else:
                same = mine == theirs
            if not same:
                differing.append(field.name)
        return differing

    def save(self, path: str) -> None:
        arrays = {f"template/{k}": v for k, v in self.templates.items()}
        arrays.update(
            faces=self.faces,
            vertex_colors=self.vertex_colors,
            lip_vertices=self.lip_vertices,
            upper_face_vertices=self.upper_face_vertices,
            fps=np.float64(self.fps),
            subjects=np.array(self.subjects, dtype=np.str_),
            emotion_categories=np.array(self.emotion_categories, dtype=np.str_),
            encoder_fingerprint=np.array(self.encoder_fingerprint, dtype=np.str_),
        )
        if self.head_pose is not None:
            arrays["head_pose"] = np.bool_(self.head_pose)
        write_npz(path, **arrays)

    @classmethod
    def load(cls, path: str) -> Assets:
        with np.load(path, allow_pickle=False) as archive:
            templates = {
                key.split("/", 1)[1]: archive[key]
                for key in archive.files
                if key.startswith("template/")
            }
            return cls(
                subjects=tuple(str(s) for s in archive["subjects"]),
                templates=templates,
                faces=archive["faces"],
                lip_vertices=archive["lip_vertices"],
                upper_face_vertices=archive["upper_face_vertices"],
                fps=float(archive["fps"]),
                emotion_categories=tuple(str(s) for s in archive["emotion_categories"]),
                encoder_fingerprint=(
                    str(archive["encoder_fingerprint"])
                    if "encoder_fingerprint" in archive.files
                    else ""
                ),
                head_pose=bool(archive["head_pose"]) if "head_pose" in archive.files else None,
                vertex_colors=(
                    archive["vertex_colors"]
                    if "vertex_colors" in archive.files
                    else np.zeros((0, 3), np.float32)
                ),
            )


def corpus_vertex_colors(corpus: biwi.Corpus) -> np.ndarray:
    """The corpus's mesh/vertex_colors.npy [V, 3] in [0, 1] (SynthBIWI paints lips, eyes, teeth
    and the inside of the mouth), or [0, 3] when it has none (BIWI)."""
    path = os.path.join(corpus.root, "mesh", "vertex_colors.npy")
    if not os.path.exists(path):
        return np.zeros((0, 3), np.float32)
    colors = np.load(path, allow_pickle=False)
    num_vertices = next(iter(corpus.templates.values())).shape[0]
    if colors.shape != (num_vertices, 3) or not np.all(np.isfinite(colors)):
        raise biwi.DataError(
            f"{path}: expected finite RGB colours of shape ({num_vertices}, 3), one a vertex of "
            f"the templates, not {colors.shape}"
        )
    return np.clip(colors, 0, 1).astype(np.float32)


def load_run_config(workdir: str):
    import ml_collections

    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise RunError(
            f"{workdir}: no config.json; is this a training workdir? "
            "(python -m sdetalk_jax.train --config ... --workdir DIR writes one)"
        )
    return ml_collections.ConfigDict(read_run_config(path))


def read_run_config(path: str) -> dict:
    """A run's saved config.json brought to today's fields (`run_config.upgrade_run_config`)."""
    with open(path) as handle:
        return _upgraded(json.load(handle), path)


def training_config_json(config) -> dict:
    """The config a run trains with, as JSON, through the same upgrade as a saved one: what is
    compared with a saved run's and written to config.json. A config file that still sets a
    removed option is refused unless it sets the value today's code builds."""
    return _upgraded(json.loads(config.to_json_best_effort()), "the training config")


def _upgraded(config_json: dict, source: str) -> dict:
    try:
        return upgrade_run_config(config_json, source)
    except IncompatibleRun as error:
        raise RunError(str(error)) from None


NOTES = "notes.json"


def save_run_notes(workdir: str, notes) -> None:
    """What the training data left out (`train.supervision_notes`), for evaluate to repeat."""
    write_json(os.path.join(workdir, NOTES), {"notes": list(notes)})


def load_run_notes(workdir: str) -> list[str]:
    """The run's notes; none for a run saved before they were written."""
    path = os.path.join(workdir, NOTES)
    if not os.path.exists(path):
        return []
    with open(path) as handle:
        return list(json.load(handle)["notes"])


def checkpoint_manager(
    workdir: str,
    name: str = CHECKPOINTS,
    *,
    keep: int = 3,
    best: bool = False,
    read_only: bool = False,
):
    options = ocp.CheckpointManagerOptions(
        max_to_keep=None if read_only else keep,
        save_interval_steps=0 if read_only else 1,
        create=not read_only,
        read_only=read_only,
        best_fn=(lambda metrics: metrics["val_vertex_error_mm"]) if best else None,
        best_mode="min",
        # Saves are atomic (written under a temporary name, then renamed); left-over temporaries of an
        # interrupted save are removed on start-up and never restored.
        cleanup_tmp_directories=not read_only,
        # Two managers (last N and best) save the same step at the end of an epoch: their
        # cross-process barriers need distinct names.
        multiprocessing_options=ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=name),
    )
    directory = os.path.abspath(os.path.join(workdir, name))
    if not read_only:
        return ocp.CheckpointManager(directory, options=options)
    # Orbax warns "Given directory is read only" for every manager opened to restore, though
    # nothing is wrong with the folder; inference opens one at every call.
    with _without_absl_warning("Given directory is read only"):
        return ocp.CheckpointManager(directory, options=options)


@contextlib.contextmanager
def _without_absl_warning(prefix: str):
    """Drops absl's log records that start with `prefix` while inside (others pass)."""
    import logging

    def keep(record) -> bool:
        return not str(record.msg).startswith(prefix)

    absl_logger = logging.getLogger("absl")
    absl_logger.addFilter(keep)
    try:
        yield
    finally:
        absl_logger.removeFilter(keep)


def save_checkpoint(manager, state: dict, position: dict, metrics: dict | None = None) -> None:
    """Saves on every process (orbax writes collectively); the step comes from the state."""
    step = int(parallel.to_host(state["step"]))
    manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), position=ocp.args.JsonSave(position)
        ),
        metrics=metrics,
    )


def restore_checkpoint(manager, abstract_state: dict, step: int | None = None) -> tuple[dict, dict]:
    step = manager.latest_step() if step is None else step
    restored = manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), position=ocp.args.JsonRestore()
        ),
    )
    return restored["state"], restored["position"]


def has_checkpoint(workdir: str) -> bool:
    """Whether `workdir` holds a training checkpoint to resume from: a committed step folder
    (orbax writes each under a temporary name first). Read from the folder, not through an orbax
    manager, whose creation is a collective step in a run of several processes."""
    folder = os.path.join(workdir, CHECKPOINTS)
    return os.path.isdir(folder) and any(name.isdigit() for name in os.listdir(folder))


def set_aside(workdir: str, step: int) -> str:
    """Moves a damaged checkpoint out of the manager's sight, into WORKDIR/damaged/ (never
    deleted: it is the user's). Returns where it went."""
    source = os.path.join(workdir, CHECKPOINTS, str(step))
    target = os.path.join(workdir, "damaged", f"{CHECKPOINTS}-{step}")
    suffix = 0
    while os.path.exists(target + (f"-{suffix}" if suffix else "")):
        suffix += 1
    target += f"-{suffix}" if suffix else ""
    os.makedirs(os.path.dirname(target), exist_ok=True)
    shutil.move(source, target)
    return target


# Fields that may change when a run resumes, because they change only what is still to come:
# when and how much to log and save, where the corpus and cached features live (the corpus's
# content is checked through the run's assets), how processes meet.
MAY_CHANGE_ON_RESUME = (
    "data.root",
    "train.max_steps",
    "train.progress",
    "train.checkpoint_every_steps",
    "train.keep_checkpoints",
    "train.deterministic_gpu",
    "data.feature_cache",
    "distributed",
)


def _flatten(tree, prefix: str = "") -> dict:
    if isinstance(tree, dict):
        flat = {}
        for key, value in tree.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat if flat or not prefix else {prefix[:-1]: {}}
    return {prefix[:-1]: tree}


def config_differences(saved: dict, wanted: dict) -> list[str]:
    """Fields (dotted) whose values differ between two configs as JSON, that may not change in a
    run that resumes. train.epochs may, unless the learning-rate schedule depends on the run's
    length (warmup_cosine), which would change the past's schedule. `saved` as
    `upgrade_run_config` leaves it."""
    old, new = _flatten(saved), _flatten(wanted)
    allowed = set(MAY_CHANGE_ON_RESUME)
    if old["train.lr_schedule"] == new["train.lr_schedule"] == "constant":
        allowed.add("train.epochs")
    differing = sorted(
        k for k in set(old) | set(new) if old.get(k, "<absent>") != new.get(k, "<absent>")
    )
    return [k for k in differing if not any(k == a or k.startswith(a + ".") for a in allowed)]


def check_resumable(workdir: str, config_json: dict) -> None:
    """Refuses to resume a run with a config other than its own, naming what differs, before
    anything is written. Nothing to check without a checkpoint."""
    if not has_checkpoint(workdir):
        return
    path = os.path.join(workdir, "config.json")
    if os.path.exists(path):
        saved = read_run_config(path)
        differing = config_differences(saved, config_json)
        if differing:
            old, new = _flatten(saved), _flatten(config_json)
            changes = "; ".join(
                f"{k}: {old.get(k, '<absent>')!r} -> {new.get(k, '<absent>')!r}" for k in differing
            )
            raise RunError(
                f"{workdir} holds a run with another config ({changes}); resuming would mix "
                f"settings. Use another --workdir, or the run's own settings (in {path}). Only "
                f"{', '.join(MAY_CHANGE_ON_RESUME)} (and train.epochs with a constant learning "
                "rate) may change when resuming."
            )


def check_same_data(workdir: str, assets: Assets) -> None:
    """Refuses to resume a run on other data or with another context encoder (its assets differ),
    naming what differs, before anything is written."""
    assets_path = os.path.join(workdir, ASSETS)
    if has_checkpoint(workdir) and os.path.exists(assets_path):
        differing = Assets.load(assets_path).differences(assets)
        if differing:
            raise RunError(
                f"{workdir}: this run was trained on other data or with another context encoder "
                f"({', '.join(differing)} differ); resuming would mix them. Use another --workdir."
            )


def check_restored(restored, abstract_state) -> None:
    """Raises if a restored leaf is missing or differs in shape or dtype from what was asked
    for: a partial restore hands back the request itself for a missing leaf, and the saved shape
    for another one, without a word."""
    leaves = jax.tree_util.tree_flatten_with_path(abstract_state)[0]
    got = dict(jax.tree_util.tree_flatten_with_path(restored)[0])
    for path, wanted in leaves:
        name = jax.tree_util.keystr(path)
        value = got.get(path)
        if value is None or isinstance(value, jax.ShapeDtypeStruct):
            raise ValueError(f"{name} is not in the checkpoint")
        if value.shape != wanted.shape or value.dtype != wanted.dtype:
            raise ValueError(
                f"{name} is {value.dtype}{list(value.shape)} in the checkpoint, this version "
                f"builds {wanted.dtype}{list(wanted.shape)}"
            )


def restore_run_state(workdir: str, abstract_state: dict, checkpoint: str = "best") -> dict:
    """Parts of the training state of a finished or running run: those in `abstract_state`, a
    subtree of the state (inference asks for the step and the generator's parameters), the only
    ones read from disk. checkpoint: 'best' (lowest validation error; the latest if there is no
    best) or 'latest'."""
    names = [BEST, CHECKPOINTS] if checkpoint == "best" else [CHECKPOINTS]
    for name in names:
        if not os.path.isdir(os.path.join(workdir, name)):
            continue
        manager = checkpoint_manager(workdir, name, keep=1, read_only=True)
        step = manager.latest_step()
        if step is not None:
            try:
                # As host arrays: inference needs no sharding (orbax would read it from the
                # checkpoint and warn about it at every load).
                as_numpy = jax.tree.map(
                    lambda _: ocp.RestoreArgs(restore_type=np.ndarray), abstract_state
                )
                state = manager.restore(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.PyTreeRestore(
                            abstract_state, restore_args=as_numpy, partial_restore=True
                        )
                    ),
                )["state"]
                check_restored(state, abstract_state)
            except Exception as error:  # orbax raises many kinds on damaged or foreign files
                first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
                raise RunError(
                    f"{os.path.join(workdir, name, str(step))}: cannot be restored ({first_line}); "
                    "is this run folder from this version, and complete?"
                ) from error
            return state
    raise RunError(
        f"{workdir}: no checkpoint found (looked in {', '.join(names)}); train first with "
        f"python -m sdetalk_jax.train --config ... --workdir {workdir}"
    )
