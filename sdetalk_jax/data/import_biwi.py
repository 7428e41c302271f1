"""BIWI from its release to a checked corpus in one command:

    python -m sdetalk_jax.data.import_biwi --release DIR --out DIR [--regions DIR] [--emotions CSV]

The release of the 3D Audio-Visual Corpus of Affective Communication (B3D(AC)^2), as its licensees
receive it, holds `rigid_scans/<S>.obj` (each speaker's 23370-vertex template and the shared
triangles), `faces/<S>/<seq>.tar` (one `.vl` file per frame: an unsigned vertex count of 4 or 8
bytes, then float32 x, y, z per vertex, global head motion already removed) beside a `.tgz` per
sequence, `videos/<S>/<seq>.flv` (renderings carrying the original 44.1 kHz audio) and, in some
copies, `audio/` with wav files. `<seq>` is `eNN` for the emotional take of sentence NN and `NN` for
its neutral take. Archives are read in place (tarfile), never unpacked to disk.

What it writes is the layout of docs/data.md: `vertices_npy/<S>_eNN.npy` and `<S>_NN.npy`,
`wav/<clip>.wav` (from `audio/`, else extracted from the video with ffmpeg), `templates.npz`,
`mesh/faces.npy`, `regions/` (with `--regions`), `emotion_labels.csv` (with `--emotions`, checked as
`data check` checks it), `neutral_vertices_npy/<S>_eNN.npy` (the neutral take time-warped onto the
emotional one by dynamic time warping of their audio) and `corpus.json`, which records the units and
the transform. It ends with the checks of `data check` and prints their report.

Geometry (docs/data.md, "Importing the BIWI release"): every frame and template is rotated by pi
about x, as in the public preprocessing. By default (`--units metres`) the vertices keep their
physical size, converted to metres from the release's unit (`--source-unit`, found from the size of
the head when `auto`), and each speaker's frames are shifted by its template's centroid. With
`--units codetalker` each frame is instead centred on its own mean and divided by the square root
of its own surface area (unitless), as CodeTalker does, for comparison with published LVE/FDD.

The .tgz archives' contents are not documented publicly, so head pose is not imported: on this
corpus no head motion can be learnt (the report says so). A second run skips every finished clip;
each file is written under a temporary name, so an interrupted run leaves no half-written clip.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import subprocess
import sys
import tarfile
from collections.abc import Iterable

import numpy as np

from sdetalk_jax import cli
from sdetalk_jax.data import biwi
from sdetalk_jax.fileio import atomic_path, write_bytes, write_npy

IMPORTER = "sdetalk_jax.data.import_biwi"
FPS = 25.0
UNITS = ("metres", "codetalker")
SOURCE_UNITS = {"m": 1.0, "cm": 0.01, "mm": 0.001}
# R_x(pi): y -> -y, z -> -z. Row vectors are multiplied from the right, as in the public code.
ROTATE_X_PI = np.diag([1.0, -1.0, -1.0])
_SEQUENCE = re.compile(r"(?:^|_)(e?)(\d{2})$")
_AUDIO_EXTENSIONS = (".wav", ".flac")
_VIDEO_EXTENSIONS = (".flv", ".mp4", ".avi", ".mov")


class ImportProblem(Exception):
    """One sequence (or file) that cannot be imported; the message names the file."""


@dataclasses.dataclass(frozen=True)
class Sequence:
    subject: str
    clip: str  # F2_e01 (emotional) or F2_01 (neutral)
    archive: str  # the .tar of .vl frames


# ---------------------------------------------------------------------------------------------
# Reading the release


def read_obj(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(vertices [V, 3] float64, triangles [F, 3] int32, 0-based) of a Wavefront .obj."""
    vertices, faces = [], []
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                fields = line.split()
                if not fields:
                    continue
                if fields[0] == "v":
                    vertices.append([float(x) for x in fields[1:4]])
                elif fields[0] == "f":
                    corners = [int(f.split("/")[0]) for f in fields[1:]]
                    faces += [
                        [corners[0], corners[i], corners[i + 1]] for i in range(1, len(corners) - 1)
                    ]
    except (OSError, ValueError, IndexError) as err:
        raise ImportProblem(f"{path}: not a readable .obj ({err})") from err
    if not vertices:
        raise ImportProblem(f"{path}: no vertices")
    triangles = np.asarray(faces, np.int64).reshape(-1, 3)
    triangles = np.where(triangles < 0, triangles + len(vertices), triangles - 1)  # 1-based
    return np.asarray(vertices, np.float64), triangles.astype(np.int32)


def read_vl(data: bytes, source: str) -> np.ndarray:
    """One frame's vertices [V, 3] from a .vl file: a vertex count written as MATLAB's 'ulong'
    (4 or 8 bytes, depending on the machine that wrote it; decided from the size), then float32
    x, y, z per vertex."""
    for header in (4, 8):
        if len(data) < header:
            continue
        count = int.from_bytes(data[:header], "little")
        if len(data) == header + 12 * count and count > 0:
            frame = np.frombuffer(data, "<f4", count=3 * count, offset=header).reshape(count, 3)
            if not np.all(np.isfinite(frame)):
                raise ImportProblem(f"{source}: NaN or Inf vertices")
            return frame
    raise ImportProblem(
        f"{source}: {len(data)} bytes is not a vertex count (4 or 8 bytes) followed by that many "
        "float32 x, y, z (truncated or not a .vl file)"
    )


def _natural_key(name: str):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def read_sequence(archive: str, num_vertices: int) -> np.ndarray:
    """All frames [N, V, 3] of one .tar of .vl files, in frame order, read without unpacking."""
    try:
        with tarfile.open(archive) as tar:
            members = sorted(
                (m for m in tar.getmembers() if m.isfile() and m.name.endswith(".vl")),
                key=lambda m: _natural_key(m.name),
            )
            if not members:
                raise ImportProblem(f"{archive}: no .vl frames in the archive")
            frames = []
            for member in members:
                frame = read_vl(tar.extractfile(member).read(), f"{archive}:{member.name}")
                if frame.shape[0] != num_vertices:
                    raise ImportProblem(
                        f"{archive}:{member.name}: {frame.shape[0]} vertices, the template has "
                        f"{num_vertices}"
                    )
                frames.append(frame)
    except (tarfile.TarError, OSError, EOFError) as err:
        raise ImportProblem(f"{archive}: not a readable .tar archive ({err})") from err
    return np.stack(frames).astype(np.float64)


def find_sequences(release: str, subjects: Iterable[str]) -> tuple[list[Sequence], list[str]]:
    """Every sequence archive of the given speakers, and the names that could not be placed."""
    sequences, unplaced = [], []
    for subject in subjects:
        folder = os.path.join(release, "faces", subject)
        for directory, _, files in sorted(os.walk(folder)):
            for name in sorted(files):
                if not name.endswith(".tar"):
                    continue
                match = _SEQUENCE.search(name[: -len(".tar")])
                path = os.path.join(directory, name)
                if match is None:
                    unplaced.append(path)
                    continue
                emotional, sentence = match.groups()
                sequences.append(Sequence(subject, f"{subject}_{emotional}{sentence}", path))
    return sequences, unplaced


def _media_for(release: str, sequence: Sequence, folder: str, extensions) -> str | None:
    """The file of `folder` that belongs to `sequence`: <S>/<seq>.ext or <S>_<seq>.ext."""
    seq = sequence.clip.split("_", 1)[1]
    candidates = []
    for extension in extensions:
        candidates += [
            os.path.join(release, folder, sequence.subject, seq + extension),
            os.path.join(release, folder, sequence.subject, sequence.clip + extension),
            os.path.join(release, folder, sequence.clip + extension),
        ]
    return next((path for path in candidates if os.path.isfile(path)), None)


def audio_source(release: str, sequence: Sequence) -> tuple[str, str]:
    """('audio', path) when the release has the wav, else ('video', path); ImportProblem if
    neither exists."""
    path = _media_for(release, sequence, "audio", _AUDIO_EXTENSIONS)
    if path is not None:
        return "audio", path
    path = _media_for(release, sequence, "videos", _VIDEO_EXTENSIONS)
    if path is not None:
        return "video", path
    raise ImportProblem(
        f"{sequence.archive}: no audio for {sequence.clip} (looked in audio/ and videos/)"
    )


def extract_audio(video: str, out: str) -> None:
    """The video's audio track as 16-bit PCM wav at its own rate (ffmpeg of imageio-ffmpeg),
    written atomically; ImportProblem naming the video when it has none or cannot be read."""
    import imageio_ffmpeg

    with atomic_path(out) as temporary:
        result = subprocess.run(
            [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-v", "error", "-y", "-i", video,
             "-vn", "-map", "0:a:0", "-acodec", "pcm_s16le", "-f", "wav", temporary],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if result.returncode != 0:
            reason = (result.stderr.strip().splitlines() or ["no reason given"])[-1]
            raise ImportProblem(f"{video}: no audio could be extracted ({reason})")


# ---------------------------------------------------------------------------------------------
# Geometry


def detect_source_unit(template: np.ndarray) -> str:
    """The release's length unit from the size of a head: a face's bounding box is about 0.2 m."""
    extent = float(np.max(template.max(0) - template.min(0)))
    for unit, metres in sorted(SOURCE_UNITS.items(), key=lambda item: -item[1]):
        if 0.05 <= extent * metres <= 1.0:
            return unit
    raise ImportProblem(
        f"a template spans {extent:g} units, which is no head size in m, cm or mm; pass "
        "--source-unit"
    )


def surface_area(vertices: np.ndarray, triangles: np.ndarray) -> float:
    a, b, c = (vertices[triangles[:, i]] for i in range(3))
    return float(0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=-1).sum())


@dataclasses.dataclass(frozen=True)
class Transform:
    """How release coordinates become corpus coordinates (recorded in corpus.json)."""

    units: str  # "metres" or "codetalker"
    metres_per_unit: float
    triangles: np.ndarray

    def template(self, vertices: np.ndarray) -> np.ndarray:
        return self.frames(vertices[None], centre=vertices)[0]

    def frames(self, frames: np.ndarray, *, centre: np.ndarray) -> np.ndarray:
        """[N, V, 3] release frames -> corpus frames. `centre`: the speaker's template in release
        coordinates (its centroid is the origin of the metric frames)."""
        rotated = frames @ ROTATE_X_PI
        if self.units == "codetalker":
            centred = rotated - rotated.mean(axis=1, keepdims=True)
            scales = [np.sqrt(surface_area(frame, self.triangles)) for frame in centred]
            return centred / np.asarray(scales)[:, None, None]
        origin = (centre @ ROTATE_X_PI).mean(axis=0)
        return (rotated - origin) * self.metres_per_unit

    def metres_per_corpus_unit(self, templates: dict[str, np.ndarray]) -> float:
        """What one corpus unit is in metres, on average over the speakers' templates (release
        coordinates): 1 for metric frames, the square root of a face's area for CodeTalker's.
        Recorded in corpus.json, so that training can keep its losses in mm
        (`biwi.read_mm_per_unit`)."""
        if self.units != "codetalker":
            return 1.0
        roots = [np.sqrt(surface_area(t, self.triangles)) for t in templates.values()]
        return float(np.mean(roots)) * self.metres_per_unit

    def describe(self) -> str:
        if self.units == "codetalker":
            return (
                "v' = v R_x(pi), then each frame minus its own mean, divided by the square root of "
                "its own surface area (unitless; CodeTalker's preprocessing)"
            )
        return (
            f"v' = (v R_x(pi) - c) * {self.metres_per_unit:g}, with c the centroid of the "
            "speaker's rotated template (metres)"
        )


# ---------------------------------------------------------------------------------------------
# Writing the corpus


def _write_unless_same(path: str, data: bytes) -> bool:
    """Writes `data` unless the file already holds exactly it (a rerun then changes nothing)."""
    if os.path.exists(path):
        with open(path, "rb") as handle:
            if handle.read() == data:
                return False
    write_bytes(path, data)
    return True


def _json_bytes(value) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True) + "\n").encode()


def clip_paths(out: str, clip: str) -> dict[str, str]:
    return {
        "vertices": os.path.join(out, "vertices_npy", f"{clip}.npy"),
        "wav": os.path.join(out, "wav", f"{clip}.wav"),
        "neutral": os.path.join(out, "neutral_vertices_npy", f"{clip}.npy"),
    }


def import_clip(release: str, out: str, sequence: Sequence, transform: Transform, template) -> bool:
    """Writes one clip's audio, then its vertices (whose presence marks the clip as done).
    Returns False when it was done already; raises ImportProblem naming the bad file."""
    paths = clip_paths(out, sequence.clip)
    if os.path.exists(paths["vertices"]) and os.path.exists(paths["wav"]):
        return False
    kind, source = audio_source(release, sequence)  # cheap: before the archive is read
    frames = read_sequence(sequence.archive, template.shape[0])
    if kind == "video":
        extract_audio(source, paths["wav"])
    elif source.endswith(".wav"):
        with open(source, "rb") as handle:
            write_bytes(paths["wav"], handle.read())
    else:
        import soundfile

        from sdetalk_jax.data.writer import write_wav

        samples, rate = soundfile.read(source, dtype="float32")
        write_wav(paths["wav"], samples, rate)
    corpus_frames = transform.frames(frames, centre=template).astype(np.float32)
    write_npy(paths["vertices"], corpus_frames.reshape(len(corpus_frames), -1))
    return True


def _frame_features(wav: str, num_frames: int) -> np.ndarray:
    """MFCCs of a clip's audio, one row per face frame [num_frames, 20]."""
    import librosa

    from sdetalk_jax import audio

    waveform = audio.load_audio(wav, allow_silence=True)
    mfcc = librosa.feature.mfcc(y=waveform, sr=audio.SAMPLE_RATE, n_mfcc=20, hop_length=160)
    return audio.interpolate_frames(mfcc.T.astype(np.float32), num_frames)


def align_neutral(out: str, emotional: str, neutral: str) -> float | None:
    """Writes the neutral take of a sentence time-warped onto its emotional take: dynamic time
    warping of their MFCCs, then per emotional frame the mean of the neutral frames matched to
    it. Returns the alignment's cost per step of the path (None when the track was there)."""
    import librosa

    target = clip_paths(out, emotional)["neutral"]
    if os.path.exists(target):
        return None
    emotional_paths, neutral_paths = clip_paths(out, emotional), clip_paths(out, neutral)
    neutral_vertices = np.load(neutral_paths["vertices"])
    num_frames = len(np.load(emotional_paths["vertices"], mmap_mode="r"))
    features_e = _frame_features(emotional_paths["wav"], num_frames)
    features_n = _frame_features(neutral_paths["wav"], len(neutral_vertices))
    cost, path = librosa.sequence.dtw(X=features_e.T, Y=features_n.T, metric="euclidean")
    sums = np.zeros((num_frames, neutral_vertices.shape[1]), np.float64)
    counts = np.zeros((num_frames, 1))
    for i, j in path:
        sums[i] += neutral_vertices[j]
        counts[i] += 1
    write_npy(target, (sums / counts).astype(np.float32))
    return float(cost[-1, -1] / len(path))


def write_shared_files(out: str, templates: dict, triangles: np.ndarray, regions, emotions) -> list:
    """templates.npz, mesh/faces.npy, regions/ and emotion_labels.csv; returns the problems of the
    region and emotion files (which are checked as `data check` checks them)."""
    from sdetalk_jax.fileio import npz_bytes

    problems = []
    arrays = {s: t.astype(np.float32) for s, t in sorted(templates.items())}
    _write_unless_same(os.path.join(out, "templates.npz"), npz_bytes(**arrays))
    buffer = io.BytesIO()
    np.save(buffer, triangles.astype(np.int32), allow_pickle=False)
    _write_unless_same(os.path.join(out, "mesh", "faces.npy"), buffer.getvalue())
    num_vertices = next(iter(templates.values())).shape[0]
    if regions:
        for name in ("lve", "fdd"):
            path = os.path.join(regions, f"{name}.txt")
            try:
                biwi.read_region(path, num_vertices)
                with open(path, "rb") as handle:
                    _write_unless_same(os.path.join(out, "regions", f"{name}.txt"), handle.read())
            except (OSError, ValueError) as err:
                problems.append(f"{path}: {str(err).removeprefix(f'{path}: ')}")
    if emotions:
        _, _, label_problems = biwi.read_emotion_labels(emotions)  # DataError on a bad header
        problems += [str(p) for p in label_problems if p.severity == "error"]
        with open(emotions, "rb") as handle:
            _write_unless_same(os.path.join(out, biwi.EMOTION_LABELS_FILE), handle.read())
    return problems


# ---------------------------------------------------------------------------------------------
# The import


@dataclasses.dataclass
class Report:
    imported: list[str] = dataclasses.field(default_factory=list)
    skipped: list[str] = dataclasses.field(default_factory=list)
    problems: list[str] = dataclasses.field(default_factory=list)
    alignment_costs: dict[str, float] = dataclasses.field(default_factory=dict)


def read_templates(release: str) -> tuple[dict, np.ndarray, list[str]]:
    """({speaker: template [V, 3] in release coordinates}, shared triangles, problems)."""
    folder = os.path.join(release, "rigid_scans")
    if not os.path.isdir(folder):
        raise biwi.DataError(
            f"{release}: no rigid_scans/ (the speakers' templates); is this the BIWI release?"
        )
    templates, triangles, problems = {}, None, []
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".obj"):
            continue
        path = os.path.join(folder, name)
        try:
            vertices, faces = read_obj(path)
        except ImportProblem as problem:
            problems.append(str(problem))
            continue
        if triangles is not None and (
            len(vertices) != len(next(iter(templates.values())))
            or not np.array_equal(faces, triangles)
        ):
            problems.append(f"{path}: another topology than the other templates; speaker left out")
            continue
        templates[name[:-4]], triangles = vertices, faces
    if not templates:
        raise biwi.DataError(f"{folder}: no readable .obj template")
    return templates, triangles, problems


def import_release(
    release: str,
    out: str,
    *,
    regions: str | None = None,
    emotions: str | None = None,
    units: str = "metres",
    source_unit: str = "auto",
    progress: bool = True,
) -> Report:
    """Imports every readable sequence of the release into `out`; see the module docstring."""
    from tqdm import tqdm

    report = Report()
    templates, triangles, report.problems = read_templates(release)
    unit = (
        detect_source_unit(next(iter(templates.values()))) if source_unit == "auto" else source_unit
    )
    transform = Transform(units, SOURCE_UNITS[unit], triangles)
    corpus_templates = {s: transform.template(t) for s, t in templates.items()}
    report.problems += write_shared_files(out, corpus_templates, triangles, regions, emotions)
    sequences, unplaced = find_sequences(release, templates)
    report.problems += [f"{path}: not named <seq>.tar (eNN or NN); left out" for path in unplaced]
    for subject in templates:
        own = [s for s in sequences if s.subject == subject]
        for sequence in tqdm(own, desc=subject, unit="sequence", disable=not progress):
            try:
                done = import_clip(release, out, sequence, transform, templates[subject])
            except ImportProblem as problem:
                report.problems.append(str(problem))
                continue
            (report.imported if done else report.skipped).append(sequence.clip)
    _align_neutral_takes(out, report)
    info = {
        "fps": FPS,
        "generator": IMPORTER,
        "units": "m" if units == "metres" else "unitless",
        "metres_per_unit": transform.metres_per_corpus_unit(templates),
        "source_unit": unit,
        "transform": transform.describe(),
        "head_pose": "not imported: the release's per-sequence .tgz is not documented publicly",
        "neutral_alignment": "dynamic time warping of the two takes' MFCCs (neutral_vertices_npy/)",
    }
    _write_unless_same(os.path.join(out, "corpus.json"), _json_bytes(info))
    return report


def _align_neutral_takes(out: str, report: Report) -> None:
    folder = os.path.join(out, "vertices_npy")
    clips = {name[:-4] for name in os.listdir(folder)} if os.path.isdir(folder) else set()
    for clip in sorted(clips):
        parsed = biwi.parse_clip_name(clip)
        if parsed is None or not parsed.emotional or parsed.counterpart not in clips:
            continue
        try:
            cost = align_neutral(out, clip, parsed.counterpart)
        except (OSError, ValueError) as err:
            report.problems.append(f"{clip}: the neutral take could not be aligned ({err})")
            continue
        if cost is not None:
            report.alignment_costs[clip] = cost


def print_report(report: Report, out: str) -> int:
    """The import's summary, then the corpus check of `data check`; the exit status."""
    print(
        f"imported {len(report.imported)} clips, {len(report.skipped)} already there, "
        f"{len(report.problems)} problems"
    )
    if report.alignment_costs:
        costs = np.array(list(report.alignment_costs.values()))
        worst = max(report.alignment_costs, key=report.alignment_costs.get)
        print(
            f"neutral takes aligned by DTW: {len(costs)}, cost per path step mean {costs.mean():.3g}, "
            f"largest {costs.max():.3g} ({worst})"
        )
    print(
        "head pose: not imported (the release's .tgz files are not documented publicly); on this "
        "corpus no head motion can be learnt"
    )
    for problem in report.problems:
        print(f"ERROR: {problem}", file=sys.stderr)
    corpus = biwi.scan_corpus(out)
    for line in biwi.summarize(corpus):
        print(line)
    for problem in corpus.problems:
        print(problem, file=sys.stderr if problem.severity == "error" else sys.stdout)
    return 1 if report.problems or corpus.errors else 0


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser(f"python -m {IMPORTER}", __doc__)
    parser.add_argument(
        "--release", required=True, help="the BIWI release folder (rigid_scans/, faces/, videos/)"
    )
    parser.add_argument(
        "--out", required=True, help="corpus folder to write (the layout of docs/data.md)"
    )
    parser.add_argument(
        "--regions", help="folder with lve.txt and fdd.txt (lip and upper-face vertex indices)"
    )
    parser.add_argument(
        "--emotions", metavar="CSV",
        help="the perceptual emotion ratings as emotion_labels.csv (`clip,<names>`, a row per clip); "
        "the release has them in no machine-readable form, so you supply them",
    )  # fmt: skip
    parser.add_argument(
        "--units",
        choices=UNITS,
        default="metres",
        help="metres (default) or codetalker (unitless, for published LVE/FDD)",
    )
    parser.add_argument(
        "--source-unit",
        choices=("auto", *SOURCE_UNITS),
        default="auto",
        help="the release's length unit (auto: from the size of the head)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    try:
        report = import_release(
            args.release, args.out, regions=args.regions, emotions=args.emotions,
            units=args.units, source_unit=args.source_unit, progress=not args.quiet,
        )  # fmt: skip
        return print_report(report, args.out)
    except (biwi.DataError, ImportProblem) as error:
        return cli.report(error)


if __name__ == "__main__":
    sys.exit(main())
