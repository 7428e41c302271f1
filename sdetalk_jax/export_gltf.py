"""An animation as a glTF 2.0 binary (.glb) that Blender, three.js and game engines open.

    mesh      the subject's template (metres; the corpus's axes: SynthBIWI is +Y up, facing +Z, as
              glTF expects), its triangles wound counter-clockwise seen from +Z, its vertex
              normals (smooth shading), the corpus's vertex colours, one material
    targets   the expression as K morph targets: a per-clip basis of the unposed face's offsets
              from the template (an SVD), K the smallest that reconstructs every vertex of every
              frame within `tolerance_mm`; target k is named `expression_k`, ordered by how much
              of the motion it carries, and carries a change of the normals, fitted over
              the clip's frames (`morph_normal_deltas`)
    animation per-frame morph weights, and the head pose as the node's rotation and translation
              (Eq. 4, f = f^e R + T: glTF's column vectors take R^T), keyframed at the clip's fps
              with LINEAR interpolation, starting at 0 s in step with the audio
    extras    fps, frame count, the frame range (first and last keyframe, from 0) and duration in
              seconds, subject, the audio file saved beside it, the morph tolerance and the
              reconstruction error reached (`asset.extras`)

The writing is pygltflib's; this module decides the content. `python -m sdetalk_jax.animate
--format glb` calls `write_glb`; docs/animate.md shows how to open the file.
"""

from __future__ import annotations

import dataclasses

import numpy as np

DEFAULT_TOLERANCE_MM = 0.05
MAX_TARGETS = 64


@dataclasses.dataclass(frozen=True)
class MorphBasis:
    targets: np.ndarray  # [K, V, 3] metres: what weight 1 of target k adds to the template
    weights: np.ndarray  # [N, K], within [-1, 1]
    max_error_mm: float  # the largest per-vertex distance between the face and its reconstruction
    tolerance_mm: float

    @property
    def count(self) -> int:
        return self.targets.shape[0]


def morph_basis(
    offsets: np.ndarray, tolerance_mm: float = DEFAULT_TOLERANCE_MM, max_targets: int = MAX_TARGETS
) -> MorphBasis:
    """offsets [N, V, 3] (face minus template, metres) -> the fewest morph targets (at most
    `max_targets`) whose weighted sum puts every vertex of every frame within `tolerance_mm` of
    its place. Raises ValueError if even `max_targets` cannot."""
    if not tolerance_mm > 0:
        raise ValueError(f"morph tolerance must be positive, not {tolerance_mm} mm")
    frames, vertices, _ = offsets.shape
    # float32: rounding far below 0.1 um on offsets of millimetres, and half float64's memory (the
    # clip is held whole: 0.42 GB a minute at BIWI size, about three times that during the SVD)
    flat = np.asarray(offsets, np.float32).reshape(frames, -1)
    u, s, vt = np.linalg.svd(flat, full_matrices=False)
    limit = min(max_targets, len(s))
    residual = flat.copy()  # what the first `count` targets leave, updated one target at a time
    for count in range(0, limit + 1):
        if count:
            residual -= np.outer(u[:, count - 1] * s[count - 1], vt[count - 1])
        error_mm = float(
            np.linalg.norm(residual.reshape(frames, vertices, 3), axis=-1).max() * 1000
        )
        if error_mm <= tolerance_mm:
            break
    else:
        raise ValueError(
            f"{limit} morph targets leave {error_mm:.3g} mm of error, above the tolerance of "
            f"{tolerance_mm:g} mm; allow a larger tolerance"
        )
    # Weights scaled into [-1, 1] (engines and Blender's sliders expect small weights).
    scale = np.maximum(np.abs(u[:, :count]).max(axis=0), 1e-12)
    weights = u[:, :count] / scale
    targets = (s[:count, None] * scale[:, None] * vt[:count]).reshape(count, vertices, 3)
    return MorphBasis(
        targets.astype(np.float32), weights.astype(np.float32), error_mm, tolerance_mm
    )


def front_facing(faces: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """faces [F, 3] wound counter-clockwise seen from +Z, glTF's front: a mask whose summed
    (area-weighted) normal points to -Z has every triangle's winding reversed."""
    faces = np.asarray(faces, np.int64)
    corners = np.asarray(vertices, np.float64)[faces]
    normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    return faces[:, ::-1].copy() if normals.sum(axis=0)[2] < 0 else faces


def linear_rgb(colors: np.ndarray) -> np.ndarray:
    """sRGB colours [V, 3] in [0, 1] (as the videos paint them) in linear RGB, which glTF's
    COLOR_0 is: written as they are, viewers would show them washed out."""
    srgb = np.clip(np.asarray(colors, np.float64), 0, 1)
    linear = np.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4)
    return linear.astype(np.float32)


class MeshNormals:
    """Unit vertex normals [V, 3] float32 of frames of one mesh: the area-weighted mean of the
    normals of the triangles around each vertex (as the videos shade)."""

    def __init__(self, faces: np.ndarray, num_vertices: int):
        from sdetalk_jax.render import vertex_normal_operator

        self.faces = np.asarray(faces, np.int64)
        self.incidence = vertex_normal_operator(self.faces, num_vertices)

    def __call__(self, vertices: np.ndarray) -> np.ndarray:
        from sdetalk_jax.render import vertex_normals

        normals = vertex_normals(np.asarray(vertices, np.float64), self.faces, self.incidence)
        return normals.astype(np.float32)


def morph_normal_deltas(
    normals: MeshNormals, template: np.ndarray, basis: MorphBasis
) -> np.ndarray:
    """[K, V, 3]: each morph target's change of the normals, fitted by least squares over the
    clip's frames, so that the rest normals plus the weighted changes are as near as a linear
    blend gets to each frame's own normals. (A target's change at its weight 1 alone is a poor
    fit: the targets are signed mixtures of the motion.)"""
    if not basis.count:
        return np.zeros((0,) + template.shape, np.float32)
    rest = normals(template)
    frames = template[None] + np.einsum("nk,kvc->nvc", basis.weights, basis.targets)
    turned = np.stack([normals(frame) - rest for frame in frames]).reshape(len(frames), -1)
    deltas, *_ = np.linalg.lstsq(basis.weights.astype(np.float64), turned, rcond=None)
    return deltas.reshape((basis.count,) + template.shape).astype(np.float32)


def head_quaternions(rotation: np.ndarray) -> np.ndarray:
    """[N, 3, 3] rotations applied to row vectors (f R) -> glTF quaternions [N, 4] (x, y, z, w)
    of the same turn for column vectors (R^T), sign-continuous so LINEAR interpolation takes the
    short way between frames."""
    from scipy.spatial.transform import Rotation

    matrices = np.swapaxes(np.asarray(rotation, np.float64), -1, -2)
    quaternions = Rotation.from_matrix(matrices).as_quat()  # x, y, z, w
    for index in range(1, len(quaternions)):
        if quaternions[index] @ quaternions[index - 1] < 0:
            quaternions[index] = -quaternions[index]
    return quaternions.astype(np.float32)


class _Buffer:
    """Accessors over one binary buffer, each 4-byte aligned."""

    def __init__(self, gltf):
        self.gltf = gltf
        self.data = bytearray()

    def add(self, array: np.ndarray, kind: str, component: int, *, bounds=False, target=None):
        import pygltflib

        array = np.ascontiguousarray(array)
        while len(self.data) % 4:
            self.data.append(0)
        view = pygltflib.BufferView(
            buffer=0, byteOffset=len(self.data), byteLength=array.nbytes, target=target
        )
        self.data.extend(array.tobytes())
        self.gltf.bufferViews.append(view)
        columns = array.reshape(len(array), -1)
        accessor = pygltflib.Accessor(
            bufferView=len(self.gltf.bufferViews) - 1,
            componentType=component,
            count=len(array),
            type=kind,
            min=columns.min(axis=0).tolist() if bounds else None,
            max=columns.max(axis=0).tolist() if bounds else None,
        )
        self.gltf.accessors.append(accessor)
        return len(self.gltf.accessors) - 1


def _add_mesh(gltf, buffer: _Buffer, template, faces, basis: MorphBasis, colors) -> None:
    """The face mesh, its morph targets and material, in node 0 of scene 0."""
    import pygltflib as gl

    attributes = gl.Attributes(
        POSITION=buffer.add(
            template.astype(np.float32), gl.VEC3, gl.FLOAT, bounds=True, target=gl.ARRAY_BUFFER
        )
    )
    if colors is not None:  # per-vertex RGB in [0, 1], as in the videos
        attributes.COLOR_0 = buffer.add(
            linear_rgb(colors), gl.VEC3, gl.FLOAT, target=gl.ARRAY_BUFFER
        )
    faces = front_facing(faces, template)
    indices = buffer.add(
        faces.astype(np.uint32).reshape(-1), gl.SCALAR, gl.UNSIGNED_INT,
        target=gl.ELEMENT_ARRAY_BUFFER,
    )  # fmt: skip
    normals = MeshNormals(faces, len(template))
    rest = normals(template)
    attributes.NORMAL = buffer.add(rest, gl.VEC3, gl.FLOAT, target=gl.ARRAY_BUFFER)
    targets = [
        {
            "POSITION": buffer.add(t, gl.VEC3, gl.FLOAT, bounds=True, target=gl.ARRAY_BUFFER),
            "NORMAL": buffer.add(delta, gl.VEC3, gl.FLOAT, target=gl.ARRAY_BUFFER),
        }
        for t, delta in zip(
            basis.targets, morph_normal_deltas(normals, template, basis), strict=True
        )
    ]
    skin = [1.0, 1.0, 1.0, 1.0] if colors is not None else [0.86, 0.68, 0.58, 1.0]
    gltf.materials.append(
        gl.Material(
            name="skin",
            doubleSided=False,
            pbrMetallicRoughness=gl.PbrMetallicRoughness(
                baseColorFactor=skin, metallicFactor=0.0, roughnessFactor=0.7
            ),
        )  # fmt: skip
    )
    primitive = gl.Primitive(
        attributes=attributes, indices=indices, material=0, targets=targets or None
    )
    gltf.meshes.append(
        gl.Mesh(
            name="face",
            primitives=[primitive],
            weights=[0.0] * basis.count or None,
            extras={"targetNames": [f"expression_{k}" for k in range(basis.count)]},
        )  # fmt: skip
    )
    gltf.nodes.append(gl.Node(name="head", mesh=0))
    gltf.scenes.append(gl.Scene(nodes=[0]))
    gltf.scene = 0


def _add_animation(gltf, buffer: _Buffer, basis: MorphBasis, rotation, translation, fps) -> None:
    """One keyframe per frame (LINEAR): node 0's rotation and translation, the morph weights."""
    import pygltflib as gl

    frames = len(rotation)
    times = np.arange(frames, dtype=np.float64) / fps
    start = buffer.add(times.astype(np.float32), gl.SCALAR, gl.FLOAT, bounds=True)
    outputs = [
        ("rotation", buffer.add(head_quaternions(rotation), gl.VEC4, gl.FLOAT)),
        ("translation", buffer.add(np.asarray(translation, np.float32), gl.VEC3, gl.FLOAT)),
    ]
    if basis.count:
        outputs.append(("weights", buffer.add(basis.weights.reshape(-1), gl.SCALAR, gl.FLOAT)))
    samplers = [
        gl.AnimationSampler(input=start, output=o, interpolation="LINEAR") for _, o in outputs
    ]
    channels = [
        gl.AnimationChannel(sampler=i, target=gl.AnimationChannelTarget(node=0, path=path))
        for i, (path, _) in enumerate(outputs)
    ]
    gltf.animations.append(gl.Animation(name="speech", samplers=samplers, channels=channels))


def build_gltf(
    template: np.ndarray,
    faces: np.ndarray,
    expression: np.ndarray,
    rotation: np.ndarray,
    translation: np.ndarray,
    fps: float,
    *,
    tolerance_mm: float = DEFAULT_TOLERANCE_MM,
    colors: np.ndarray | None = None,
    extras: dict | None = None,
):
    """(pygltflib.GLTF2 with its binary blob set, MorphBasis) of one animation: template [V, 3],
    faces [F, 3], expression (unposed f^e) [N, V, 3], rotation [N, 3, 3], translation [N, 3],
    optional vertex colours [V, 3]."""
    import pygltflib as gl

    basis = morph_basis(expression - template[None], tolerance_mm)
    gltf = gl.GLTF2(asset=gl.Asset(version="2.0", generator="sdetalk-jax"))
    buffer = _Buffer(gltf)
    _add_mesh(gltf, buffer, template, faces, basis, colors)
    _add_animation(gltf, buffer, basis, rotation, translation, fps)
    gltf.asset.extras = {
        "fps": float(fps), "frames": len(expression),
        "frame_range": [0, len(expression) - 1], "duration_s": len(expression) / float(fps),
        "morph_targets": basis.count,
        "morph_tolerance_mm": tolerance_mm, "morph_max_error_mm": basis.max_error_mm,
        **(extras or {}),
    }  # fmt: skip
    gltf.buffers.append(gl.Buffer(byteLength=len(buffer.data)))
    gltf.set_binary_blob(bytes(buffer.data))
    return gltf, basis


def write_glb(path: str, gltf) -> None:
    """Writes the .glb atomically: a reader never sees half a file."""
    from sdetalk_jax.fileio import atomic_output

    data = b"".join(gltf.save_to_bytes())
    with atomic_output(path) as handle:
        handle.write(data)
