"""How near a glb's blended morph normals come to each frame's own normals, and prints a table.

    python benchmarks/morph_normals.py [--run runs/synthetic]
        [--animation runs/synthetic/animations/F2_e37_s0.npz] [--subject F2]

The animation's unposed face is turned into the glb's morph basis (`export_gltf.morph_basis`);
the shaded normals, the rest normals plus each frame's weights times the targets' normal changes,
are compared with the frame's own vertex normals: with no changes, with each target's change at
its weight 1 alone, and with `export_gltf.morph_normal_deltas` (what the glb carries).
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from sdetalk_jax import export_gltf
from sdetalk_jax.checkpoint import ASSETS, Assets


def angles_deg(normals: np.ndarray, truth: np.ndarray) -> np.ndarray:
    unit = normals / np.linalg.norm(normals, axis=-1, keepdims=True)
    return np.degrees(np.arccos(np.clip(np.einsum("nvc,nvc->nv", unit, truth), -1, 1)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default="runs/synthetic")
    parser.add_argument("--animation", default="runs/synthetic/animations/F2_e37_s0.npz")
    parser.add_argument("--subject", default="F2")
    args = parser.parse_args()
    assets = Assets.load(os.path.join(args.run, ASSETS))
    template = assets.templates[args.subject]
    with np.load(args.animation) as result:
        expression = result["expression"]
    faces = export_gltf.front_facing(assets.faces, template)
    basis = export_gltf.morph_basis(expression - template[None])
    normals = export_gltf.MeshNormals(faces, len(template))
    rest = normals(template)
    truth = np.stack([normals(frame) for frame in expression])
    changes = {
        "none": np.zeros_like(basis.targets),
        "each target's change at weight 1": np.stack([normals(template + t) - rest for t in basis.targets]),
        "fitted (export_gltf.morph_normal_deltas)": export_gltf.morph_normal_deltas(normals, template, basis),
    }  # fmt: skip
    print(
        f"{args.animation}: {len(expression)} frames, {len(template)} vertices, {basis.count} targets\n"
    )
    print("| morph normal changes | p99 angle to the frame's normals (deg) | max (deg) |")
    print("|---|---:|---:|")
    for name, delta in changes.items():
        blended = rest[None] + np.einsum("nk,kvc->nvc", basis.weights, delta)
        angle = angles_deg(blended, truth)
        print(f"| {name} | {np.percentile(angle, 99):.1f} | {angle.max():.1f} |")


if __name__ == "__main__":
    main()
