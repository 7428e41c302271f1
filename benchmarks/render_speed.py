"""How fast the headless renderer turns a 10 s clip of a BIWI-sized mesh into an mp4.

    python benchmarks/render_speed.py [--vertices 23370] [--seconds 10] [--size 512]

The mesh is SynthBIWI's face at 23370 vertices (BIWI's count) with its lips moving and the head
turning; the audio is a tone of the clip's length, muxed in. Target: rendering takes no longer than
the clip lasts. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import soundfile

from sdetalk_jax import render
from sdetalk_jax.data import face_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vertices", type=int, default=23370)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--fps", type=float, default=25.0)
    args = parser.parse_args()

    topology = face_model.build_topology(args.vertices)
    shapes = face_model.blendshapes(topology)
    template = face_model.template_shape(topology, np.random.default_rng(0)).reshape(-1, 3)
    jaw = shapes[face_model.VISEME_SHAPES[0]].reshape(-1, 3)
    frames = int(args.seconds * args.fps)
    t = np.arange(frames) / args.fps
    yaw = np.radians(6 * np.sin(2 * np.pi * 0.3 * t))
    rotation = face_model.rotation_matrices(np.zeros(frames), yaw, np.zeros(frames))
    vertices = np.stack(
        [
            (template + max(np.sin(2 * np.pi * 3 * s), 0) * jaw) @ r
            for s, r in zip(t, rotation, strict=True)
        ]
    ).astype(np.float32)

    with tempfile.TemporaryDirectory() as folder:
        wav = os.path.join(folder, "tone.wav")
        samples = np.arange(int(args.seconds * 16000)) / 16000
        soundfile.write(wav, 0.2 * np.sin(2 * np.pi * 220 * samples), 16000)
        colors = render.vertex_colors(args.vertices, topology.lip_vertices)
        out = os.path.join(folder, "clip.mp4")

        start = time.perf_counter()
        renderer = render.MeshRenderer(
            topology.faces, colors, size=args.size, reference=vertices[0]
        )
        setup = time.perf_counter() - start
        start = time.perf_counter()
        for frame in vertices[:50]:
            renderer.render(frame)
        per_frame = (time.perf_counter() - start) / 50
        info = renderer.context.info
        renderer.release()

        start = time.perf_counter()
        render.render_animation(
            out, vertices, topology.faces, colors, fps=args.fps, size=args.size, audio_path=wav
        )
        total = time.perf_counter() - start
        probe = render.probe_video(out)

    rows = [
        ("OpenGL renderer", f"{info['GL_RENDERER']} ({info['GL_VERSION']})"),
        ("mesh", f"{args.vertices} vertices, {len(topology.faces)} triangles"),
        (
            "clip",
            f"{args.seconds:g} s, {frames} frames at {args.fps:g} fps, {args.size}x{args.size}",
        ),
        ("context setup (s)", f"{setup:.2f}"),
        ("render only, per frame (ms)", f"{per_frame * 1000:.1f}"),
        ("render + encode + mux, whole clip (s)", f"{total:.2f}"),
        ("real-time factor (clip duration / time taken)", f"{args.seconds / total:.2f}x"),
        ("written video", f"{probe['frames']} frames, audio: {probe['has_audio']}"),
    ]
    print("| measure | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
