"""The BIWI corpus layout: clip names, splits, validation and loading.

Layout (see docs/data.md):

    ROOT/wav/<clip>.wav                 any rate / channels
    ROOT/vertices_npy/<clip>.npy        [frames, V*3] float, head motion removed
    ROOT/templates.pkl | templates.npz  {subject: [V, 3]}
    ROOT/regions/lve.txt, fdd.txt       lip and upper-face vertex indices
    ROOT/head_pose/<clip>.npz           rotation [frames, 3, 3], translation [frames, 3]   (ours)
    ROOT/emotion_labels.csv             clip, then one column per emotion category         (ours)
    ROOT/neutral_vertices_npy/<clip>.npy  frame-aligned neutral face of an emotional clip   (ours)
    ROOT/corpus.json                    optional: {"fps": 25, ...}

Clip names are `F2_e01` (emotional) and `F2_01` (its neutral counterpart). Vertex count, emotion
categories and frame rate come from the data, never from constants. The emotion table is read in
`labels.py`, each clip's files are loaded and checked in `clip_files.py`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from sdetalk_jax.data import clip_files
from sdetalk_jax.data.labels import EMOTION_LABELS_FILE, read_emotion_labels
from sdetalk_jax.data.problems import DataError, Problem
from sdetalk_jax.data.safe_pickle import load_templates

DEFAULT_FPS = 25.0
_CLIP_NAME = re.compile(r"^(?P<subject>[A-Za-z]+\d+)_(?P<emotional>e?)(?P<sentence>\d+)$")


@dataclasses.dataclass(frozen=True)
class ClipName:
    subject: str
    sentence: int
    emotional: bool

    @property
    def name(self) -> str:
        return f"{self.subject}_{'e' if self.emotional else ''}{self.sentence:02d}"

    @property
    def counterpart(self) -> str:
        """The same sentence by the same subject in the other recording condition."""
        return dataclasses.replace(self, emotional=not self.emotional).name


def parse_clip_name(name: str) -> ClipName | None:
    match = _CLIP_NAME.match(name)
    if match is None:
        return None
    return ClipName(match["subject"], int(match["sentence"]), bool(match["emotional"]))


# --------------------------------------------------------------------------------------------------
# Splits


@dataclasses.dataclass(frozen=True)
class SplitSpec:
    """Which (subject, sentence) pairs form each split. Defaults follow FaceFormer / CodeTalker."""

    train_subjects: tuple[str, ...] = ("F2", "F3", "F4", "M3", "M4", "M5")
    unseen_subjects: tuple[str, ...] = ("F1", "F5", "F6", "F7", "F8", "M1", "M2", "M6")
    train_sentences: tuple[int, int] = (1, 32)
    val_sentences: tuple[int, int] = (33, 36)
    test_sentences: tuple[int, int] = (37, 40)
    # Whether neutral recordings (F2_01) are clips of their own or only counterparts.
    include_neutral: bool = True

    @classmethod
    def from_config(cls, config) -> SplitSpec:
        """From a mapping/ConfigDict with any subset of the field names."""
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {}
        for key, value in dict(config).items():
            if key not in fields:
                raise ValueError(f"unknown split field '{key}' (known: {sorted(fields)})")
            values[key] = value if isinstance(value, bool) else tuple(value)
        return cls(**values)

    def split_of(self, clip: ClipName) -> str | None:
        if not clip.emotional and not self.include_neutral:
            return None

        def within(bounds):
            return bounds[0] <= clip.sentence <= bounds[1]

        if clip.subject in self.train_subjects:
            if within(self.train_sentences):
                return "train"
            if within(self.val_sentences):
                return "val"
            if within(self.test_sentences):
                return "test-a"
        elif clip.subject in self.unseen_subjects and within(self.test_sentences):
            return "test-b"
        return None


SPLITS = ("train", "val", "test-a", "test-b")


# --------------------------------------------------------------------------------------------------
# Clip records


@dataclasses.dataclass(frozen=True)
class Clip:
    """One usable clip: paths and what the checks learnt about it. Arrays are loaded on demand."""

    name: str
    subject: str
    sentence: int
    emotional: bool
    split: str | None
    num_frames: int
    audio_path: str
    vertices_path: str
    head_pose_path: str | None
    neutral_vertices_path: str | None
    emotion: np.ndarray | None
    counterpart: str | None  # name of the other-condition clip when it exists
    audio_seconds: float


@dataclasses.dataclass
class Corpus:
    root: str
    fps: float
    templates: dict[str, np.ndarray]
    emotion_categories: tuple[str, ...]
    lip_vertices: np.ndarray | None
    upper_face_vertices: np.ndarray | None
    clips: list[Clip]
    problems: list[Problem]

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def subjects(self) -> list[str]:
        return sorted({clip.subject for clip in self.clips})

    @property
    def num_vertices(self) -> int:
        return next(iter(self.templates.values())).shape[0]

    def split(self, name: str) -> list[Clip]:
        if name not in SPLITS:
            raise ValueError(f"unknown split '{name}' (known: {', '.join(SPLITS)})")
        return [clip for clip in self.clips if clip.split == name]

    def clip(self, name: str) -> Clip:
        for clip in self.clips:
            if clip.name == name:
                return clip
        raise KeyError(f"no usable clip named '{name}' in {self.root}")


# --------------------------------------------------------------------------------------------------
# Reading the pieces


def read_corpus_info(root: str) -> dict:
    """`corpus.json` as a dict ({} when there is none); a file that is there but is not a JSON
    object is a DataError naming it."""
    path = os.path.join(root, "corpus.json")
    if not os.path.exists(path):
        return {}
    try:
        with open(path, encoding="utf-8-sig") as handle:
            info = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: not a readable JSON file ({err})") from err
    if not isinstance(info, dict):
        raise DataError(f"{path}: expected a JSON object with 'fps', got {type(info).__name__}")
    return info


def read_fps(root: str) -> float:
    """The frame rate from `corpus.json` (BIWI's 25 fps when it says none); a rate that is not a
    positive number is a DataError naming the file."""
    fps = read_corpus_info(root).get("fps", DEFAULT_FPS)
    if isinstance(fps, bool) or not isinstance(fps, int | float) or not 0 < fps < 1000:
        raise DataError(
            f"{os.path.join(root, 'corpus.json')}: 'fps' must be a positive number of frames per "
            f"second, got {fps!r}"
        )
    return float(fps)


def read_units(root: str) -> str:
    """The corpus's length unit from `corpus.json`: "m" (the default, SynthBIWI and an import in
    metres) or "unitless" (an import with CodeTalker's normalisation)."""
    units = read_corpus_info(root).get("units", "m")
    if units not in ("m", "unitless"):
        raise DataError(
            f"{os.path.join(root, 'corpus.json')}: 'units' must be 'm' or 'unitless', got {units!r}"
        )
    return units


MM_PER_METRE = 1000.0


def read_mm_per_unit(root: str) -> float:
    """Millimetres per vertex unit: 1000 for a corpus in metres (`read_units`); for a unitless one
    (import_biwi's CodeTalker units) 1000 times the "metres_per_unit" that import_biwi records in
    `corpus.json` beside it, a DataError naming the file where it is missing."""
    if read_units(root) == "m":
        return MM_PER_METRE
    metres = read_corpus_info(root).get("metres_per_unit")
    if isinstance(metres, bool) or not isinstance(metres, int | float) or not metres > 0:
        raise DataError(
            f"{os.path.join(root, 'corpus.json')}: unitless vertices without a positive "
            "'metres_per_unit' (import the release again with import_biwi, or set "
            "--config.loss.vertex_scale to mm per unit)"
        )
    return MM_PER_METRE * metres


def find_templates(root: str) -> str | None:
    for name in ("templates.npz", "templates.pkl"):
        path = os.path.join(root, name)
        if os.path.exists(path):
            return path
    return None


def read_region(path: str, num_vertices: int | None) -> np.ndarray:
    """Vertex indices from a whitespace- or comma-separated text file."""
    with open(path) as handle:
        tokens = handle.read().replace(",", " ").split()
    try:
        indices = np.array([int(float(t)) for t in tokens], dtype=np.int64)
    except ValueError as err:
        raise ValueError(f"{path}: vertex indices must be integers ({err})") from err
    if indices.size == 0:
        raise ValueError(f"{path}: no vertex indices")
    if num_vertices is not None and (indices.min() < 0 or indices.max() >= num_vertices):
        raise ValueError(
            f"{path}: indices must lie in [0, {num_vertices}), got [{indices.min()}, {indices.max()}]"
        )
    return indices


# --------------------------------------------------------------------------------------------------
# Whole corpus


def _missing_root_message(root: str, what: str) -> str:
    return (
        f"{root}: {what}. Lay out the corpus as described in docs/data.md, or train on the "
        "synthetic corpus with --config configs/synthetic.py"
    )


def _read_templates(
    root: str, problems: list[Problem]
) -> tuple[str, dict[str, np.ndarray], frozenset[str]]:
    """(path, {subject: [V, 3]} of the usable templates, the unusable subjects); raises DataError
    when none is usable. A template with NaN or Inf, or with another vertex count than the most common one, is
    left out with an error, and so are its clips (no template, no clip)."""
    template_path = find_templates(root)
    if template_path is None:
        raise DataError(_missing_root_message(root, "no templates.pkl or templates.npz"))
    try:
        templates = load_templates(template_path)
    except Exception as err:
        raise DataError(f"{template_path}: {err}") from err
    if not templates:
        raise DataError(f"{template_path}: no subject templates")
    counts = [t.shape[0] for t in templates.values()]
    common = max(set(counts), key=lambda n: (counts.count(n), n))
    usable = {}
    for subject, template in templates.items():
        if not np.all(np.isfinite(template)):
            reason = "contains NaN or Inf"
        elif template.shape[0] != common:
            reason = f"has {template.shape[0]} vertices, the others {common}"
        else:
            usable[subject] = template
            continue
        problems.append(
            Problem(template_path, f"template '{subject}' {reason}; its clips are left out")
        )
    if not usable:
        raise DataError(f"{template_path}: no usable subject template")
    return template_path, usable, frozenset(templates) - frozenset(usable)


def _read_regions(root: str, num_vertices: int, problems: list[Problem]) -> dict:
    """{'lve': lip vertices, 'fdd': upper-face vertices}, None where missing or unreadable."""
    regions = {}
    for region in ("lve", "fdd"):
        path = os.path.join(root, "regions", f"{region}.txt")
        if not os.path.exists(path):
            problems.append(
                Problem(
                    path, "region file missing (lip / upper-face metrics unavailable)", "warning"
                )
            )
            regions[region] = None
            continue
        try:
            regions[region] = read_region(path, num_vertices)
        except ValueError as err:
            problems.append(Problem(path, str(err).removeprefix(f"{path}: ")))
            regions[region] = None
    return regions


def _read_labels(root: str, problems: list[Problem]) -> tuple[tuple[str, ...], dict]:
    """(emotion categories, {clip: weights}); empty when the corpus has no label table."""
    labels_path = os.path.join(root, EMOTION_LABELS_FILE)
    if not os.path.exists(labels_path):
        return (), {}
    categories, emotion_labels, label_problems = read_emotion_labels(labels_path)
    problems.extend(label_problems)
    return categories, emotion_labels


def _clip_names(root: str, problems: list[Problem]) -> tuple[set[str], set[str]]:
    """(names with vertices, names with audio); raises DataError when there are no clips."""
    vertex_dir = os.path.join(root, "vertices_npy")
    wav_dir = os.path.join(root, "wav")
    if not os.path.isdir(vertex_dir) or not os.path.isdir(wav_dir):
        raise DataError(_missing_root_message(root, "needs both wav/ and vertices_npy/"))
    vertex_names = {f[:-4] for f in os.listdir(vertex_dir) if f.endswith(".npy")}
    wav_names = {f[:-4] for f in os.listdir(wav_dir) if f.endswith(".wav")}
    for name in sorted(wav_names - vertex_names):
        problems.append(
            Problem(
                os.path.join(wav_dir, f"{name}.wav"), "audio has no vertices_npy file", "warning"
            )
        )
    if not vertex_names:
        raise DataError(_missing_root_message(root, "no clips in vertices_npy/"))
    return vertex_names, wav_names


@dataclasses.dataclass(frozen=True)
class _ScanContext:
    """What checking one clip needs to know of the whole corpus."""

    root: str
    fps: float
    splits: SplitSpec
    template_path: str
    templates: dict
    unusable_templates: frozenset
    emotion_labels: dict
    vertex_names: set
    wav_names: set
    check_audio: bool


def _check_clip(name: str, scan: _ScanContext, problems: list[Problem]) -> Clip | None:
    """The clip `name` if every file of it is usable; its problems are appended either way."""
    vertices_path = os.path.join(scan.root, "vertices_npy", f"{name}.npy")
    parsed = _parse_with_template(name, vertices_path, scan)
    if isinstance(parsed, Problem):
        problems.append(parsed)
        return None
    if name in scan.emotion_labels and scan.emotion_labels[name] is None:
        return None  # conflicting emotion rows, reported with the table's line numbers
    width = scan.templates[parsed.subject].shape[0] * 3
    clip_problems: list[Problem] = []
    num_frames = clip_files.check_vertices(vertices_path, width, clip_problems)
    audio_path = os.path.join(scan.root, "wav", f"{name}.wav")
    audio_seconds = None
    if num_frames is not None:
        audio_seconds = _audio_seconds(name, audio_path, num_frames, scan, clip_problems)
    head_pose_path = _head_pose_path(scan.root, name, num_frames, clip_problems)
    neutral_path = _neutral_vertices_path(scan.root, name, width, num_frames, clip_problems)
    problems.extend(clip_problems)
    if any(p.severity == "error" for p in clip_problems) or num_frames is None:
        return None
    return Clip(
        name=name,
        subject=parsed.subject,
        sentence=parsed.sentence,
        emotional=parsed.emotional,
        split=scan.splits.split_of(parsed),
        num_frames=num_frames,
        audio_path=audio_path,
        vertices_path=vertices_path,
        head_pose_path=head_pose_path,
        neutral_vertices_path=neutral_path,
        emotion=scan.emotion_labels.get(name),
        counterpart=parsed.counterpart if parsed.counterpart in scan.vertex_names else None,
        audio_seconds=float(audio_seconds),
    )


def _parse_with_template(name: str, vertices_path: str, scan: _ScanContext) -> ClipName | Problem:
    """The parsed clip name when its subject has a usable template, else the Problem that leaves
    the clip out."""
    parsed = parse_clip_name(name)
    if parsed is None:
        return Problem(vertices_path, "clip name is not of the form F2_e01 / F2_01")
    if parsed.subject not in scan.templates:
        unusable = parsed.subject in scan.unusable_templates
        return Problem(
            vertices_path,
            f"{'unusable' if unusable else 'no'} template for subject '{parsed.subject}' in "
            f"{scan.template_path}",
        )
    return parsed


def _audio_seconds(
    name: str, audio_path: str, num_frames: int, scan: _ScanContext, problems: list[Problem]
) -> float | None:
    """The clip's audio length in seconds (the mesh sequence's when the scan does not read audio);
    None, with a problem recorded, when the audio is missing or unusable."""
    if name not in scan.wav_names:
        problems.append(Problem(audio_path, "audio file missing for this clip"))
        return None
    if scan.check_audio:
        return clip_files.check_audio(audio_path, num_frames, scan.fps, problems)
    return num_frames / scan.fps


def _head_pose_path(
    root: str, name: str, num_frames: int | None, problems: list[Problem]
) -> str | None:
    """The clip's head pose file when it has one that passes its check, else None. It is not
    checked when the clip's vertices failed theirs (`num_frames` None): the clip is left out."""
    path = os.path.join(root, "head_pose", f"{name}.npz")
    if not os.path.exists(path):
        return None
    if num_frames is not None and not clip_files.check_head_pose(path, num_frames, problems):
        return None
    return path


def _neutral_vertices_path(
    root: str, name: str, width: int, num_frames: int | None, problems: list[Problem]
) -> str | None:
    """The clip's neutral track when it has one, else None; a bad track, or one whose frame count
    is not the clip's, is recorded in `problems`."""
    path = os.path.join(root, "neutral_vertices_npy", f"{name}.npy")
    if not os.path.exists(path):
        return None
    if num_frames is not None:
        neutral_frames = clip_files.check_vertices(path, width, problems)
        if neutral_frames is not None and neutral_frames != num_frames:
            problems.append(Problem(path, f"{neutral_frames} frames, its clip has {num_frames}"))
    return path


def scan_corpus(
    root: str | os.PathLike,
    splits: SplitSpec | None = None,
    *,
    check_audio: bool = True,
    progress: bool = False,
    between_clips: Callable[[], None] | None = None,
) -> Corpus:
    """Reads and checks every clip under `root`; bad clips are left out and listed in `problems`.

    Raises DataError only when nothing can be read at all (no folder, no templates, no clips).
    `between_clips` is called before each clip and may raise to stop the scan (a trainer asked to
    stop by its cluster must not wait for a whole corpus to be read).
    """
    root = os.fspath(root)
    splits = splits or SplitSpec()
    if not os.path.isdir(root):
        raise DataError(_missing_root_message(root, "corpus folder not found"))
    problems: list[Problem] = []
    fps = read_fps(root)
    template_path, templates, unusable = _read_templates(root, problems)
    num_vertices = next(iter(templates.values())).shape[0]
    regions = _read_regions(root, num_vertices, problems)
    categories, emotion_labels = _read_labels(root, problems)
    vertex_names, wav_names = _clip_names(root, problems)
    scan = _ScanContext(
        root=root, fps=fps, splits=splits, template_path=template_path, templates=templates, unusable_templates=unusable,
        emotion_labels=emotion_labels, vertex_names=vertex_names, wav_names=wav_names,
        check_audio=check_audio,
    )  # fmt: skip
    names: Iterable[str] = sorted(vertex_names)
    if progress:
        from tqdm import tqdm

        names = tqdm(names, desc="checking clips", unit="clip")
    clips = []
    for name in names:
        if between_clips is not None:
            between_clips()
        clip = _check_clip(name, scan, problems)
        if clip is not None:
            clips.append(clip)
    return Corpus(
        root=root,
        fps=fps,
        templates=templates,
        emotion_categories=categories,
        lip_vertices=regions["lve"],
        upper_face_vertices=regions["fdd"],
        clips=clips,
        problems=problems,
    )


def summarize(corpus: Corpus) -> list[str]:
    """Human-readable summary lines: subjects, clips per split, frames, minutes, annotations."""
    lines = [
        f"corpus: {corpus.root}",
        f"  frame rate: {corpus.fps:g} fps, vertices: {corpus.num_vertices}, "
        f"templates: {len(corpus.templates)} subjects",
        f"  subjects with clips: {len(corpus.subjects)} ({' '.join(corpus.subjects)})",
        f"  emotion categories: {len(corpus.emotion_categories)}"
        + (f" ({', '.join(corpus.emotion_categories)})" if corpus.emotion_categories else ""),
        f"  {'split':<8} {'clips':>6} {'frames':>8} {'minutes':>8} {'head pose':>10} "
        f"{'emotion':>8} {'neutral pair':>13}",
    ]

    def row(label: str, clips: Sequence[Clip]) -> str:
        frames = sum(c.num_frames for c in clips)
        minutes = sum(c.audio_seconds for c in clips) / 60
        pose = sum(c.head_pose_path is not None for c in clips)
        emotion = sum(c.emotion is not None for c in clips)
        paired = sum(c.counterpart is not None for c in clips)
        return f"  {label:<8} {len(clips):>6} {frames:>8} {minutes:>8.1f} {pose:>10} {emotion:>8} {paired:>13}"

    for split in SPLITS:
        lines.append(row(split, corpus.split(split)))
    lines.append(row("unused", [c for c in corpus.clips if c.split is None]))
    lines.append(row("all", corpus.clips))
    errors = len(corpus.errors)
    warnings = len(corpus.problems) - errors
    lines.append(f"  problems: {errors} errors, {warnings} warnings")
    return lines
