"""`preview.png`: a few frames of one clip (neutral track, emotional face, with head pose) and its
speech envelope against mouth opening and head speed, so a person can see that the data is sane."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import soundfile

from sdetalk_jax.data import biwi, clip_files, face_model
from sdetalk_jax.data.synthetic import analysis


def draw_mesh(axis, vertices: np.ndarray, faces: np.ndarray, colors: np.ndarray) -> None:
    """Flat-shaded frontal view (orthographic, painter's algorithm) of a [V, 3] mesh with
    per-vertex colours [V, 3]."""
    from matplotlib.collections import PolyCollection

    corners = vertices[faces]  # [F, 3, 3]
    normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    normals /= np.linalg.norm(normals, axis=1, keepdims=True) + 1e-12
    light = np.array([0.3, 0.4, 1.0]) / np.linalg.norm([0.3, 0.4, 1.0])
    facing = normals[:, 2] > 0
    shade = 0.25 + 0.75 * np.clip(normals @ light, 0, 1)
    order = np.argsort(corners[:, :, 2].mean(axis=1))
    order = order[facing[order]]
    colours = np.clip(shade[order, None] * colors[faces[order]].mean(axis=1), 0, 1)
    axis.add_collection(
        PolyCollection(
            corners[order, :, :2], facecolors=colours, edgecolors=colours, linewidths=0.3
        )
    )
    axis.set_xlim(vertices[:, 0].min() - 0.01, vertices[:, 0].max() + 0.01)
    axis.set_ylim(vertices[:, 1].min() - 0.01, vertices[:, 1].max() + 0.01)
    axis.set_aspect("equal")
    axis.axis("off")


@dataclasses.dataclass(frozen=True)
class _Preview:
    """The clip a preview draws, with its arrays loaded."""

    clip: biwi.Clip
    fps: float
    emotion_categories: tuple[str, ...]
    faces: np.ndarray
    vertices: np.ndarray
    neutral: np.ndarray
    rotation: np.ndarray
    translation: np.ndarray
    waveform: np.ndarray
    sample_rate: int
    topology: face_model.FaceTopology


def write_preview(root: str, clip_name: str | None = None, out: str | None = None) -> str:
    """Draws `out` (default ROOT/preview.png) for the clip `clip_name`, by default the corpus's
    first emotional clip with a neutral track and head pose; returns the path written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sdetalk_jax.fileio import atomic_output

    preview = _load(root, clip_name)
    columns = 4
    figure = plt.figure(figsize=(3.0 * columns, 12))
    grid = figure.add_gridspec(5, columns, height_ratios=[1, 1, 1, 0.6, 0.6])
    _draw_faces(figure, grid, preview, columns)
    _draw_signals(figure, grid, preview)
    figure.tight_layout()

    out = out or os.path.join(root, "preview.png")
    with atomic_output(out) as handle:
        figure.savefig(handle, format="png", dpi=80)
    plt.close(figure)
    return out


def _load(root: str, clip_name: str | None) -> _Preview:
    """Scans the corpus (without reading audio) and loads the clip to preview; a corpus without an
    emotional clip that has a neutral track and head pose is a ValueError."""
    corpus = biwi.scan_corpus(root, check_audio=False)
    emotional = [
        c for c in corpus.clips if c.emotional and c.neutral_vertices_path and c.head_pose_path
    ]
    if not emotional:
        raise ValueError(f"{root}: no emotional clip with a neutral track and head pose to preview")
    clip = corpus.clip(clip_name) if clip_name else emotional[0]
    faces = np.load(os.path.join(root, "mesh", "faces.npy"))
    vertices = clip_files.load_vertices(clip.vertices_path)
    neutral = clip_files.load_vertices(clip.neutral_vertices_path)
    rotation, translation = clip_files.load_head_pose(clip.head_pose_path)
    waveform, rate = soundfile.read(clip.audio_path, dtype="float32")
    return _Preview(
        clip=clip,
        fps=corpus.fps,
        emotion_categories=corpus.emotion_categories,
        faces=faces,
        vertices=vertices,
        neutral=neutral,
        rotation=rotation,
        translation=translation,
        waveform=waveform,
        sample_rate=rate,
        topology=face_model.build_topology(corpus.num_vertices),
    )


def _draw_faces(figure, grid, preview: _Preview, columns: int) -> None:
    """Rows 0-2 of the grid: the neutral track, the emotional face and the posed face, each at
    `columns` frames spread over the clip."""
    colors = face_model.vertex_colors(preview.topology)
    n = preview.clip.num_frames
    frames = np.linspace(0.15 * n, 0.85 * n, columns).astype(int)
    rows = [
        ("neutral track", lambda t: preview.neutral[t].reshape(-1, 3)),
        ("emotional face f^e", lambda t: preview.vertices[t].reshape(-1, 3)),
        (
            "with head pose f^e R + T",
            lambda t: (
                preview.vertices[t].reshape(-1, 3) @ preview.rotation[t] + preview.translation[t]
            ),
        ),
    ]
    for row, (label, frame_vertices) in enumerate(rows):
        for column, t in enumerate(frames):
            axis = figure.add_subplot(grid[row, column])
            draw_mesh(axis, frame_vertices(t), preview.faces, colors)
            axis.set_title(f"{label}\nframe {t} ({t / preview.fps:.2f}s)", fontsize=8)


def _draw_signals(figure, grid, preview: _Preview) -> None:
    """Rows 3-4 of the grid: the speech envelope against mouth opening, then against head speed,
    each scaled to [0, 1]; the first is titled with the clip's three strongest emotions."""
    n = preview.clip.num_frames
    seconds = np.arange(n) / preview.fps
    envelope = analysis.frame_envelope(preview.waveform, preview.sample_rate, n, preview.fps)
    lips = preview.topology.upper_lip_vertex, preview.topology.lower_lip_vertex
    opening = analysis.mouth_opening(preview.vertices, *lips)
    speed = analysis.head_angular_speed(preview.rotation, preview.fps)
    top = np.argsort(preview.clip.emotion)[::-1][:3]
    mixture = ", ".join(
        f"{preview.emotion_categories[i]} {preview.clip.emotion[i]:.2f}" for i in top
    )

    axis = figure.add_subplot(grid[3, :])
    axis.plot(seconds, _normalised(envelope), label="audio envelope (Hilbert)", color="0.4")
    axis.plot(seconds, _normalised(opening), label="mouth opening", color="tab:red")
    axis.set_ylabel("normalised")
    axis.legend(loc="upper right", fontsize=8)
    axis.set_title(f"{preview.clip.name}: {mixture}", fontsize=9)
    axis = figure.add_subplot(grid[4, :])
    axis.plot(seconds, _normalised(envelope), label="audio envelope", color="0.4")
    axis.plot(seconds, _normalised(speed), label="head angular speed", color="tab:blue")
    axis.set_xlabel("time (s)")
    axis.legend(loc="upper right", fontsize=8)


def _normalised(x: np.ndarray) -> np.ndarray:
    """`x` shifted and scaled to [0, 1]."""
    return (x - x.min()) / (np.ptp(x) + 1e-12)
