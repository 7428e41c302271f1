"""The README's pictures of an animation: its frames of an open and of a closed mouth side by side,
and a strip of frames over the clip, taken from the mp4 that `animate` wrote.

    python -m studies.readme_pictures [--animation runs/synthetic/animations/F2_e37_s0]
        [--out docs/images]

The mouth's opening is read from the animation's npz (the unposed face's gap between the middle
vertices of the upper and the lower lip of SynthBIWI's head, `face_model`): the open frame is the
widest, the closed one the narrowest while the clip speaks (between its first and last tenth).
The pictures are the video's own frames, decoded with ffmpeg: what a viewer of the mp4 sees.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np


def lip_gap_mm(expression: np.ndarray) -> np.ndarray:
    """[N] the lips' gap (mm) of SynthBIWI frames [N, V, 3]."""
    from sdetalk_jax.data import face_model

    topology = face_model.build_topology(expression.shape[1])
    upper, lower = topology.upper_lip_vertex, topology.lower_lip_vertex
    return 1000 * (expression[:, upper, 1] - expression[:, lower, 1])


def video_frames(path: str, wanted: list[int]) -> tuple[dict[int, np.ndarray], float]:
    """(the frames `wanted` of an mp4 as RGB [H, W, 3] uint8, its fps)."""
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(path)
    meta = next(reader)
    width, height = meta["size"]
    frames = {}
    for index, raw in enumerate(reader):
        if index in wanted:
            frames[index] = np.frombuffer(raw, np.uint8).reshape(height, width, 3)
        if len(frames) == len(wanted):
            break
    reader.close()
    return frames, float(meta["fps"])


def crop_to_face(image: np.ndarray, background: int = 235) -> np.ndarray:
    """The image cut to the face's bounding box (the renderer's background is near white), with a
    small margin."""
    face = np.nonzero((image < background).any(axis=-1))
    top, bottom = face[0].min(), face[0].max()
    left, right = face[1].min(), face[1].max()
    margin = 8
    return image[max(top - margin, 0) : bottom + margin, max(left - margin, 0) : right + margin]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--animation", default="runs/synthetic/animations/F2_e37_s0")
    parser.add_argument("--out", default="docs/images")
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sdetalk_jax.fileio import atomic_output

    with np.load(args.animation + ".npz") as result:
        gap = lip_gap_mm(result["expression"])
    n = len(gap)
    speaking = np.arange(n)[n // 10 : n - n // 10]
    opened = int(np.argmax(gap))
    closed = int(speaking[np.argmin(gap[speaking])])
    strip = [int(i) for i in np.linspace(0, n - 1, 6).round()]
    frames, fps = video_frames(args.animation + ".mp4", sorted({opened, closed, *strip}))
    os.makedirs(args.out, exist_ok=True)
    pictures = {
        "mouth-open-closed.png": [
            (opened, f"open: {opened / fps:.2f} s, lips {gap[opened]:.1f} mm apart"),
            (closed, f"closed: {closed / fps:.2f} s, lips {max(gap[closed], 0):.1f} mm apart"),
        ],
        "animate-frames.png": [(i, f"{i / fps:.2f} s") for i in strip],
    }
    for name, panels in pictures.items():
        figure, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 3.0))
        for axis, (index, title) in zip(np.atleast_1d(axes), panels, strict=True):
            axis.imshow(crop_to_face(frames[index]))
            axis.set_title(title, fontsize=9)
            axis.axis("off")
        figure.tight_layout()
        with atomic_output(os.path.join(args.out, name)) as handle:
            figure.savefig(handle, format="png", dpi=110)
        plt.close(figure)
        print(os.path.join(args.out, name), [index for index, _ in panels])
    print(f"lips' gap over the clip: median {np.median(gap):.1f} mm, max {gap.max():.1f} mm")
    return 0


if __name__ == "__main__":
    sys.exit(main())
