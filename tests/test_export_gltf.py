"""glTF export: the morph basis and its tolerance, the head pose's convention, the file's content
read back, the Khronos validator, and the three.js viewer in headless Chromium."""

import json
import os
import shutil
import subprocess

import numpy as np
import pygltflib
import pytest
from scipy.spatial.transform import Rotation

from sdetalk_jax import export_gltf, viewer
from sdetalk_jax.data import face_model
from sdetalk_jax.models.sdetalk import pose_faces

VIEWER = viewer.VIEWER_DIR


def low_rank_motion(frames=40, vertices=80, rank=3, seed=0):
    rng = np.random.default_rng(seed)
    shapes = 0.002 * rng.normal(size=(rank, vertices, 3))
    weights = np.sin(np.arange(frames)[:, None] * rng.uniform(0.1, 0.5, rank)) * rng.uniform(
        0.5, 2, rank
    )
    return np.einsum("nk,kvc->nvc", weights, shapes)


def test_the_basis_is_the_fewest_targets_within_the_tolerance():
    offsets = low_rank_motion(rank=3)
    basis = export_gltf.morph_basis(offsets, tolerance_mm=1e-3)
    assert basis.count == 3
    assert basis.max_error_mm <= 1e-3
    rebuilt = np.einsum("nk,kvc->nvc", basis.weights, basis.targets)
    np.testing.assert_allclose(rebuilt, offsets, atol=2e-6)
    assert np.abs(basis.weights).max() == pytest.approx(1.0, abs=1e-6)  # weights within [-1, 1]
    # a looser tolerance needs fewer; noise needs more, and each has its reported error
    noisy = offsets + 1e-5 * np.random.default_rng(1).normal(size=offsets.shape)
    fewer = export_gltf.morph_basis(
        offsets, tolerance_mm=0.7 * np.linalg.norm(offsets, axis=-1).max() * 1000
    )
    assert fewer.count < 3
    finer = export_gltf.morph_basis(noisy, tolerance_mm=0.02)
    assert finer.count > 3 and finer.max_error_mm <= 0.02
    rebuilt = np.einsum("nk,kvc->nvc", finer.weights, finer.targets)
    assert np.linalg.norm(rebuilt - noisy, axis=-1).max() * 1000 == pytest.approx(
        finer.max_error_mm, rel=1e-3
    )


def test_a_tolerance_the_basis_cannot_reach_is_refused():
    noise = 0.001 * np.random.default_rng(0).normal(size=(30, 50, 3))
    with pytest.raises(
        ValueError, match="4 morph targets leave .* above the tolerance of 0.001 mm"
    ):
        export_gltf.morph_basis(noise, tolerance_mm=0.001, max_targets=4)
    with pytest.raises(ValueError, match="must be positive"):
        export_gltf.morph_basis(noise, tolerance_mm=0.0)


def test_the_node_rotation_turns_the_face_as_eq4_does():
    rng = np.random.default_rng(0)
    rotation = Rotation.from_rotvec(0.3 * rng.normal(size=(5, 3))).as_matrix().astype(np.float32)
    rotation = np.swapaxes(rotation, -1, -2)  # any rotations; ours act on row vectors
    points = rng.normal(size=(5, 7, 3)).astype(np.float32)
    translation = 0.01 * rng.normal(size=(5, 3)).astype(np.float32)
    expected = np.asarray(pose_faces(points.reshape(1, 5, -1), rotation[None], translation[None]))
    quaternions = export_gltf.head_quaternions(rotation)
    # glTF: p' = T + q p q^-1 on column vectors
    turned = np.stack(
        [Rotation.from_quat(q).apply(p) for q, p in zip(quaternions, points, strict=True)]
    )
    np.testing.assert_allclose(turned + translation[:, None], expected.reshape(5, 7, 3), atol=1e-5)
    # sign-continuous: LINEAR interpolation between frames takes the short way
    turn = Rotation.from_euler("y", np.radians(np.arange(0, 720, 10))[:, None]).as_matrix()
    continuous = export_gltf.head_quaternions(turn)  # past 180 degrees the sign would jump
    assert np.all(np.sum(continuous[1:] * continuous[:-1], axis=1) > 0)


def test_triangles_face_the_front_whichever_way_the_corpus_wound_them():
    topology = face_model.build_topology(200)
    template = face_model.template_shape(topology, np.random.default_rng(0))

    def summed_normal_z(faces):
        corners = template[faces]
        return np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]).sum(0)[2]

    for faces in (topology.faces, topology.faces[:, ::-1]):
        assert summed_normal_z(export_gltf.front_facing(faces, template)) > 0


def make_export(tmp_path, frames=30):
    topology = face_model.build_topology(200)
    template = face_model.template_shape(topology, np.random.default_rng(0))
    offsets = low_rank_motion(frames=frames, vertices=len(template), rank=4)
    angles = 0.2 * np.sin(np.arange(frames) / 5.0)
    rotation = np.swapaxes(Rotation.from_euler("y", angles[:, None]).as_matrix(), -1, -2).astype(
        np.float32
    )
    translation = np.stack([0.01 * angles, 0 * angles, 0 * angles], -1).astype(np.float32)
    gltf, basis = export_gltf.build_gltf(
        template, topology.faces, template[None] + offsets, rotation, translation, 25.0,
        tolerance_mm=1e-3, colors=np.full((len(template), 3), 0.8), extras={"audio": "clip.wav"},
    )  # fmt: skip
    path = os.fspath(tmp_path / "clip.glb")
    export_gltf.write_glb(path, gltf)
    return path, template, topology.faces, offsets, rotation, translation, basis


def accessor_array(gltf, index):
    accessor = gltf.accessors[index]
    view = gltf.bufferViews[accessor.bufferView]
    blob = gltf.binary_blob()
    dtype = {pygltflib.FLOAT: np.float32, pygltflib.UNSIGNED_INT: np.uint32}[accessor.componentType]
    width = {"SCALAR": 1, "VEC3": 3, "VEC4": 4}[accessor.type]
    data = np.frombuffer(blob, dtype, accessor.count * width, view.byteOffset)
    return data.reshape(accessor.count, width) if width > 1 else data


def test_the_file_reads_back_as_the_animation(tmp_path):
    path, template, faces, offsets, rotation, translation, basis = make_export(tmp_path)
    gltf = pygltflib.GLTF2().load(path)
    primitive = gltf.meshes[0].primitives[0]
    np.testing.assert_array_equal(accessor_array(gltf, primitive.attributes.POSITION), template)
    # COLOR_0 is linear: the videos' sRGB 0.8 is 0.6038 there
    np.testing.assert_allclose(
        accessor_array(gltf, primitive.attributes.COLOR_0), 0.6038, atol=1e-4
    )
    assert len(accessor_array(gltf, primitive.indices)) == faces.size
    assert len(primitive.targets) == basis.count == 4
    assert gltf.meshes[0].extras["targetNames"] == [f"expression_{k}" for k in range(4)]
    targets = np.stack([accessor_array(gltf, t["POSITION"]) for t in primitive.targets])
    channels = {
        c.target.path: gltf.animations[0].samplers[c.sampler] for c in gltf.animations[0].channels
    }
    times = accessor_array(gltf, channels["weights"].input)
    np.testing.assert_allclose(times, np.arange(30) / 25.0, atol=1e-6)
    weights = accessor_array(gltf, channels["weights"].output).reshape(30, basis.count)
    np.testing.assert_allclose(np.einsum("nk,kvc->nvc", weights, targets), offsets, atol=2e-6)
    quaternions = accessor_array(gltf, channels["rotation"].output)
    np.testing.assert_allclose(
        Rotation.from_quat(quaternions).as_matrix(), np.swapaxes(rotation, -1, -2), atol=1e-5
    )
    np.testing.assert_allclose(accessor_array(gltf, channels["translation"].output), translation)
    extras = gltf.asset.extras
    assert extras["fps"] == 25.0 and extras["frames"] == 30 and extras["audio"] == "clip.wav"
    assert extras["morph_max_error_mm"] <= extras["morph_tolerance_mm"] == 1e-3


def test_the_mesh_carries_smooth_normals_and_targets_that_turn_them_as_the_face_moves(tmp_path):
    """NORMAL is the unit vertex normal of the template, pointing out of the head; with the
    targets' NORMAL changes blended by each frame's weights, the shaded normals are clearly
    nearer each frame's own normals than the rest normals are (a mouth shaded as it opens)."""
    path, template, faces, offsets, _, _, basis = make_export(tmp_path)
    gltf = pygltflib.GLTF2().load(path)
    primitive = gltf.meshes[0].primitives[0]
    rest = accessor_array(gltf, primitive.attributes.NORMAL)
    np.testing.assert_allclose(np.linalg.norm(rest, axis=1), 1.0, atol=1e-5)
    skin = face_model.build_topology(len(template)).part == face_model.SKIN
    assert (np.einsum("vi,vi->v", rest[skin], template[skin]) > 0).mean() > 0.95
    deltas = np.stack([accessor_array(gltf, t["NORMAL"]) for t in primitive.targets])
    normals = export_gltf.MeshNormals(faces, len(template))
    truth = np.stack([normals(template + offset) for offset in offsets])
    blended = rest[None] + np.einsum("nk,kvc->nvc", basis.weights, deltas)
    blended /= np.linalg.norm(blended, axis=-1, keepdims=True)

    def angles(a):
        return np.degrees(np.arccos(np.clip(np.einsum("nvc,nvc->nv", a, truth), -1, 1)))

    still = angles(np.broadcast_to(rest, truth.shape))
    assert np.percentile(still, 99) > 2.0  # the motion does turn the normals
    assert np.percentile(angles(blended), 99) < 0.5 * np.percentile(still, 99)


def node_tools_missing() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed (make viewer-setup)"
    if not os.path.isdir(os.path.join(VIEWER, "node_modules", "gltf-validator")):
        return "viewer/node_modules is missing (make viewer-setup)"
    return None


def validate(path: str) -> dict:
    output = subprocess.run(
        ["node", os.path.join(VIEWER, "validate.mjs"), path],
        check=True, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    return json.loads(output.stdout)


@pytest.mark.node
@pytest.mark.skipif(node_tools_missing() is not None, reason=str(node_tools_missing()))
def test_the_khronos_validator_accepts_the_export_and_catches_a_broken_one(tmp_path):
    path, *_ = make_export(tmp_path)
    report = validate(path)
    assert report["issues"]["numErrors"] == 0, report["issues"]["messages"]
    assert report["info"]["animationCount"] == 1 and report["info"]["hasMorphTargets"]
    # the validator does find errors: a morph target one vertex short
    gltf = pygltflib.GLTF2().load(path)
    gltf.accessors[gltf.meshes[0].primitives[0].targets[0]["POSITION"]].count -= 1
    broken = os.fspath(tmp_path / "broken.glb")
    gltf.save_binary(broken)
    assert validate(broken)["issues"]["numErrors"] > 0


def chromium_missing() -> str | None:
    if (reason := node_tools_missing()) is not None:
        return reason
    if not os.path.exists(os.environ.get("CHROMIUM", "/usr/bin/chromium")):
        return "Chromium is not installed (make viewer-setup: Debian's chromium)"
    if not os.path.isdir(os.path.join(VIEWER, "node_modules", "playwright-core")):
        return "viewer/node_modules/playwright-core is missing (make viewer-setup)"
    return None


def view_in_chromium(folder: str, name: str, times=(0.1, 0.9), screenshot=None, **query) -> dict:
    """check.mjs's reading of the viewer page of `name` (a time of None: the page as it opened)."""
    server = viewer.serve(folder)
    times = ["-" if t is None else t for t in times]
    try:
        output = subprocess.run(
            ["node", os.path.join(VIEWER, "check.mjs"), viewer.page_url(server, name, **query),
             screenshot or os.path.join(folder, "screenshot.png"), *map(str, times)],
            check=True, capture_output=True, text=True, timeout=180,
        )  # fmt: skip
    finally:
        server.shutdown()
    return json.loads(output.stdout.strip().splitlines()[-1])


@pytest.mark.node
@pytest.mark.skipif(chromium_missing() is not None, reason=str(chromium_missing()))
def test_the_viewer_plays_the_export_in_headless_chromium(tmp_path):
    path, *_ = make_export(tmp_path)
    import soundfile

    soundfile.write(os.fspath(tmp_path / "clip.wav"), np.zeros(16000 * 30 // 25, np.float32), 16000)
    result = view_in_chromium(os.fspath(tmp_path), "clip.glb")
    assert result["ready"] and result["errors"] == [] and result["console"] == []
    assert result["duration"] == pytest.approx(29 / 25.0, abs=1e-4)
    assert result["lit"] > 0.02 * result["pixels"]  # the face is drawn
    assert result["differing"] > 0.002 * result["pixels"]  # and moves between the two times
    # the same time twice draws the same picture: the difference above is the animation's
    still = view_in_chromium(os.fspath(tmp_path), "clip.glb", times=(0.5, 0.5))
    assert still["differing"] == 0
    # the last frame is the last frame, not the first again (the clip plays once and holds)
    ends = view_in_chromium(os.fspath(tmp_path), "clip.glb", times=(0.0, result["duration"]))
    assert ends["differing"] > 0.002 * ends["pixels"]
    missing = view_in_chromium(os.fspath(tmp_path), "nothing.glb")
    assert not missing["ready"] and missing["errors"]  # the page reports what went wrong


@pytest.mark.node
@pytest.mark.skipif(chromium_missing() is not None, reason=str(chromium_missing()))
def test_the_viewer_opens_at_a_given_time_and_plays_by_itself(tmp_path):
    """?t=SECONDS opens the page at that moment, the same picture as seeking there; ?autoplay=1
    plays from there without a click (the clock moves); a time that is not one is reported."""
    path, *_ = make_export(tmp_path)
    import soundfile

    soundfile.write(os.fspath(tmp_path / "clip.wav"), np.zeros(16000 * 30 // 25, np.float32), 16000)
    folder = os.fspath(tmp_path)
    at = view_in_chromium(folder, "clip.glb", times=(None, 0.9), t=0.9)
    assert at["ready"] and at["errors"] == [] and at["opened_at"] == pytest.approx(0.9)
    assert at["differing"] == 0 and not at["playing"]
    playing = view_in_chromium(folder, "clip.glb", times=(0.5, 0.5), t=0.2, autoplay=1)
    assert playing["ready"] and playing["errors"] == [] and playing["playing"]
    assert playing["time_later"] > playing["opened_at"] + 0.2
    bad = view_in_chromium(folder, "clip.glb", t="soon")
    assert not bad["ready"] and "not a time" in " ".join(bad["errors"])


def test_the_viewer_server_serves_only_inside_the_export_folder(tmp_path):
    if not os.path.exists(
        os.path.join(VIEWER, "node_modules", "three", "build", "three.module.js")
    ):
        with pytest.raises(viewer.ViewerError, match="make viewer-setup"):
            viewer.serve(os.fspath(tmp_path))
        return
    import urllib.error
    import urllib.request

    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "a.glb").write_bytes(b"glTF")
    (tmp_path / "secret.txt").write_text("no")
    server = viewer.serve(os.fspath(tmp_path / "export"))
    try:
        base = "http://{}:{}".format(*server.server_address[:2])
        with urllib.request.urlopen(base + "/files/a.glb") as response:
            assert response.read() == b"glTF"
            assert response.headers["Content-Type"] == "model/gltf-binary"
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(base + "/files/../secret.txt")
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(base + "/files/%2e%2e/secret.txt")
        with urllib.request.urlopen(base + "/index.html") as response:
            assert b"viewer.js" in response.read()
    finally:
        server.shutdown()
    with pytest.raises(viewer.ViewerError, match="no such folder"):
        viewer.serve(os.fspath(tmp_path / "gone"))


def blender_missing() -> str | None:
    if shutil.which("blender") is None:
        return "Blender is not installed (docs/animate.md: apt-get install blender)"
    return None


@pytest.mark.blender
@pytest.mark.skipif(blender_missing() is not None, reason=str(blender_missing()))
def test_blender_imports_the_export_smooth_shaded_and_in_step_with_the_audio(tmp_path):
    """docs/animate.md's Blender steps (viewer/blender_import.py): at the file's fps, the keys
    from frame 0 to the last frame, whose time is within a frame of the wav's end; the face
    smooth-shaded with the file's normals and its shape keys."""
    import soundfile

    path, template, *_, basis = make_export(tmp_path)
    soundfile.write(os.fspath(tmp_path / "clip.wav"), np.zeros(16000 * 30 // 25, np.float32), 16000)
    env = dict(os.environ)
    numpy_for_blender = env.get("BLENDER_NUMPY", "/opt/blender-numpy")  # docs/animate.md
    if os.path.isdir(numpy_for_blender):
        env["PYTHONPATH"] = numpy_for_blender
    output = subprocess.run(
        ["blender", "-b", "--factory-startup", "--python-use-system-env", "--python",
         os.path.join(VIEWER, "blender_import.py"), "--", path],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    lines = [line for line in output.stdout.splitlines() if line.startswith("BLENDER_IMPORT ")]
    assert lines, output.stdout[-2000:] + output.stderr[-2000:]
    report = json.loads(lines[-1].split(" ", 1)[1])
    assert report["fps"] == 25.0 and report["frame_start"] == 0 and report["frame_end"] == 29
    assert report["audio_s"] - 1 / 25 <= report["last_key_s"] <= report["audio_s"]
    assert report["smooth"] and report["custom_normals"]
    assert report["shape_keys"] == basis.count and report["vertices"] == len(template)
