"""The evaluation's pictures: the paper's Fig. 5 (neutral face, emotional face and the per-vertex
displacement between them) and Fig. 6 (speech envelope against generated and true head speed)."""

from __future__ import annotations

import os

import numpy as np

from sdetalk_jax import render
from sdetalk_jax.metrics import frame_envelope, head_angular_speed

MAX_ROWS = 3


def _pick_clips(figure_inputs, count: int = MAX_ROWS):
    """Emotional clips first (they show an expression), in split order."""
    emotional = [item for item in figure_inputs if item[0].emotional]
    others = [item for item in figure_inputs if not item[0].emotional]
    return (emotional + others)[:count]


def _render_still(renderer: render.MeshRenderer, vertices, colors) -> np.ndarray:
    renderer.set_colors(colors)
    return renderer.render(vertices)


def expression_figure(path: str, figure_inputs, assets) -> str:
    """Fig. 5: per clip, at the frame where the expression moves the face most, the neutral face
    f^n, the emotional face f^e and |f^e - f^n| per vertex as a heat map (mm)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import cm
    from matplotlib import colors as mcolors

    from sdetalk_jax.fileio import atomic_output

    chosen = _pick_clips(figure_inputs)
    skin = render.vertex_colors(
        assets.templates[next(iter(assets.templates))].shape[0],
        assets.lip_vertices,
        assets.vertex_colors,
    )
    rows = []
    for clip, example, mean, _ in chosen:
        n = int(example["num_frames"])
        neutral = mean.neutral[0, :n].reshape(n, -1, 3)
        emotional = mean.expression[0, :n].reshape(n, -1, 3)
        displacement = np.linalg.norm(emotional - neutral, axis=-1) * 1000.0  # mm
        frame = int(np.argmax(displacement.mean(axis=1)))
        rows.append((clip, frame, neutral[frame], emotional[frame], displacement[frame]))
    top = max(float(np.percentile(np.concatenate([r[4] for r in rows]), 99)), 1e-6)
    norm = mcolors.Normalize(0.0, top)
    renderer = render.MeshRenderer(assets.faces, skin, size=384, reference=rows[0][2])
    figure, axes = plt.subplots(len(rows), 3, figsize=(9, 3.2 * len(rows)), squeeze=False)
    try:
        for row, (clip, frame, neutral, emotional, displacement) in enumerate(rows):
            heat = cm.magma(norm(displacement))[:, :3]
            images = [
                _render_still(renderer, neutral, skin),
                _render_still(renderer, emotional, skin),
                _render_still(renderer, emotional, heat),
            ]
            titles = ["neutral face f^n", "emotional face f^e", "|f^e - f^n| (mm)"]
            for column, (image, title) in enumerate(zip(images, titles, strict=True)):
                axis = axes[row, column]
                axis.imshow(image)
                axis.set_axis_off()
                axis.set_title(f"{clip.name}, frame {frame}\n{title}", fontsize=9)
    finally:
        renderer.release()
    figure.colorbar(cm.ScalarMappable(norm=norm, cmap="magma"), ax=axes[:, 2].tolist(), label="mm")
    with atomic_output(path) as handle:
        figure.savefig(handle, format="png", dpi=110)
    plt.close(figure)
    return path


def head_motion_figure(path: str, figure_inputs, fps: float, sample_rate: int) -> str:
    """Fig. 6: per clip, the audio's Hilbert envelope against the head's angular speed, generated
    (z = 0 and one noise sample) and true."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sdetalk_jax.fileio import atomic_output

    chosen = _pick_clips(figure_inputs)
    figure, axes = plt.subplots(len(chosen), 1, figsize=(10, 2.6 * len(chosen)), squeeze=False)
    for row, (clip, example, mean, samples) in enumerate(chosen):
        n = int(example["num_frames"])
        time = np.arange(n) / fps
        envelope = frame_envelope(example["audio"], sample_rate, n, fps)
        axis = axes[row, 0]
        axis.fill_between(
            time,
            0,
            envelope / max(envelope.max(), 1e-9),
            color="0.85",
            label="speech envelope (scaled)",
        )
        twin = axis.twinx()
        curves = [
            (np.degrees(head_angular_speed(example["rotation"], fps)), "ground truth", "k"),
            (
                np.degrees(head_angular_speed(mean.rotation[0, :n], fps)),
                "generated, z = 0",
                "C0",
            ),
        ]
        if samples:
            curves.append(
                (np.degrees(head_angular_speed(samples[0], fps)), "generated, a noise sample", "C1")
            )
        for speed, label, colour in curves:
            twin.plot(time, speed, color=colour, lw=1.2, label=label)
        twin.set_ylabel("head speed (deg/s)")
        axis.set_yticks([])
        axis.set_xlim(0, time[-1] if n > 1 else 1)
        axis.set_title(clip.name, fontsize=9)
        if row == 0:
            handles = axis.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
            labels = axis.get_legend_handles_labels()[1] + twin.get_legend_handles_labels()[1]
            twin.legend(handles, labels, fontsize=8, loc="upper right")
    axes[-1, 0].set_xlabel("time (s)")
    figure.tight_layout()
    with atomic_output(path) as handle:
        figure.savefig(handle, format="png", dpi=110)
    plt.close(figure)
    return path


def evaluation_figures(out_dir, split, figure_inputs, assets, fps, sample_rate) -> list[str]:
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    if assets.faces.size:
        paths.append(
            expression_figure(
                os.path.join(out_dir, f"{split}_expression.png"), figure_inputs, assets
            )
        )
    paths.append(
        head_motion_figure(
            os.path.join(out_dir, f"{split}_head_motion.png"), figure_inputs, fps, sample_rate
        )
    )
    return paths
