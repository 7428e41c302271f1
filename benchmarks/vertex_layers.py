"""Times, forward and backward, the operations on [frames, V*3] arrays that the train step
writes for XLA's CPU backend (docs/training.md, "Written gradients"), each beside the plain
formula autodiff would differentiate, and prints a table.

    python benchmarks/vertex_layers.py [--frames 416] [--vertices 23370] [--repeats 5]

* the expression layer, [frames, 128] -> V*3, and a squared-error loss on it: autodiff of
  `scale * (x @ W + b)` against `models.layers.scaled_affine` (written gradient);
* Eq. 4 and a squared-error loss on the posed faces: a batch of [V, 3] x [3, 3] products
  against `models.ops.pose_faces` (coordinate rows [3, V]);
* L_n's per-frame squared error (the mean over the coordinates of each frame): `jnp.mean(...,
  axis=-1)` against `losses.squared_error_per_frame` (`mean_per_frame`, a product with a vector);
* L_d's rotation distance and its gradient, over every vertex of a SynthBIWI template against the
  strided subset of `loss.rotation_distance_vertices` (configs/biwi.py): the one pair that is
  not the same formula, so its difference is the subset's error, not rounding.

Best of `--repeats` after one warm-up run; the results of the first three pairs agree to float32
rounding (printed as the largest relative difference of the results: gradients, or per-frame
values and gradients).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from sdetalk_jax import losses
from sdetalk_jax.config_files import repository_config
from sdetalk_jax.data import face_model
from sdetalk_jax.models import layers, ops

SCALE = 1e-3


def best_seconds(function, arguments, repeats: int):
    result = jax.block_until_ready(function(*arguments))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(function(*arguments))
        best = min(best, time.perf_counter() - start)
    return best, result


def largest_relative_difference(first, second) -> float:
    return max(
        float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-30))
        for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(second), strict=True)
    )


def squared_error(outputs, target):
    return jnp.mean(jnp.square((outputs - target) * 1000.0))


def gradients_of(plain, written, arguments):
    """(plain, written, arguments) of a case: each loss's jitted gradient for every argument."""
    every = tuple(range(len(arguments)))
    return (
        jax.jit(jax.grad(plain, argnums=every)),
        jax.jit(jax.grad(written, argnums=every)),
        arguments,
    )


def layer_case(frames, vertices, key):
    keys = jax.random.split(key, 3)
    query = jax.random.normal(keys[0], (4, frames // 4, 128))
    kernel = 0.01 * jax.random.normal(keys[1], (128, vertices * 3))
    target = jax.random.normal(keys[2], (4, frames // 4, vertices * 3))
    bias = jnp.zeros(vertices * 3)

    def plain(kernel, bias, query):
        return squared_error(SCALE * (query @ kernel + bias), target)

    def written(kernel, bias, query):
        return squared_error(layers.scaled_affine(query, kernel, bias, SCALE), target)

    return gradients_of(plain, written, (kernel, bias, query))


def posing_case(frames, vertices, key):
    keys = jax.random.split(key, 4)
    faces = 0.1 * jax.random.normal(keys[0], (4, frames // 4, vertices * 3))
    rotation = jax.random.normal(keys[1], (4, frames // 4, 3, 3))
    translation = jax.random.normal(keys[2], (4, frames // 4, 3))
    target = 0.1 * jax.random.normal(keys[3], faces.shape)

    def plain(faces, rotation, translation):
        rows = faces.reshape(faces.shape[:2] + (-1, 3))
        posed = jnp.einsum("bnvi,bnij->bnvj", rows, rotation) + translation[:, :, None]
        return squared_error(posed.reshape(faces.shape), target)

    def written(faces, rotation, translation):
        return squared_error(ops.pose_faces(faces, rotation, translation), target)

    return gradients_of(plain, written, (faces, rotation, translation))


def mean_case(frames, vertices, key):
    keys = jax.random.split(key)
    prediction = jax.random.normal(keys[0], (4, frames // 4, vertices * 3))
    target = jax.random.normal(keys[1], prediction.shape)

    def plain(prediction, target):
        difference = (prediction - target) * 1000.0
        return jnp.mean(jnp.square(difference).reshape(difference.shape[:2] + (-1,)), axis=-1)

    def written(prediction, target):
        return losses.squared_error_per_frame(prediction, target, 1000.0)

    return jax.jit(plain), jax.jit(written), (prediction, target)


def rotation_distance_case(frames, vertices, key):
    """L_d's rotation distance (mean |R^T t| per frame, mm) between two samples' heads a few
    degrees apart, on a SynthBIWI subject's template of this size, and its gradient: over every
    vertex against over the strided subset that configs/biwi.py keeps
    (`loss.rotation_distance_vertices`, `losses.distance_vertices`)."""
    most = repository_config("biwi").loss.rotation_distance_vertices
    topology = face_model.build_topology(vertices)
    template = face_model.template_shape(topology, np.random.default_rng(0))
    rows = jnp.broadcast_to(jnp.asarray(template.T * 1000.0), (4, 3, vertices))
    angles = np.random.default_rng(int(jax.random.randint(key, (), 0, 2**30)))
    pitch_yaw_roll = np.deg2rad(angles.normal(0.0, 3.0, size=(2, 3, 4 * (frames // 4))))
    first, second = (face_model.rotation_matrices(*head) for head in pitch_yaw_roll)
    difference = jnp.asarray(first - second).reshape(4, frames // 4, 3, 3)

    def measured_on(rows):
        def per_frame(difference):
            moved = jnp.einsum("bnij,biv->bnjv", difference, rows)
            return losses.mean_per_frame(jnp.abs(moved))

        def with_gradient(difference):
            values, pull_back = jax.vjp(per_frame, difference)
            return values, pull_back(jnp.ones_like(values))[0]

        return jax.jit(with_gradient)

    return measured_on(rows), measured_on(losses.distance_vertices(rows, most)), (difference,)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=416, help="batch 4 x 104 frames")
    parser.add_argument("--vertices", type=int, default=23370)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    cases = [
        ("expression layer + loss, forward and backward", "autodiff", "scaled_affine", layer_case),
        ("Eq. 4 + loss, forward and backward", "[V, 3] x [3, 3]", "pose_faces (rows)", posing_case),
        ("L_n's per-frame squared error, forward", "jnp.mean", "mean_per_frame", mean_case),
        (
            "L_d's rotation distance, forward and backward",
            "every vertex",
            "strided subset",
            rotation_distance_case,
        ),
    ]
    print(f"{jax.devices()[0].platform}, jax {jax.__version__}, {args.frames} frames, "
          f"{args.vertices} vertices\n")  # fmt: skip
    print("| operation | plain | ms | written | ms | speed-up | largest relative difference |")
    print("|---|---|---:|---|---:|---:|---:|")
    for index, (name, plain_name, written_name, case) in enumerate(cases):
        plain, written, arguments = case(args.frames, args.vertices, jax.random.key(index))
        plain_seconds, plain_result = best_seconds(plain, arguments, args.repeats)
        written_seconds, written_result = best_seconds(written, arguments, args.repeats)
        difference = largest_relative_difference(written_result, plain_result)
        print(
            f"| {name} | {plain_name} | {1e3 * plain_seconds:.0f} | {written_name} | "
            f"{1e3 * written_seconds:.0f} | {plain_seconds / written_seconds:.1f}x | "
            f"{difference:.1e} |"
        )
        del plain_result, written_result, arguments


if __name__ == "__main__":
    main()
