"""Imports an sdetalk-jax .glb into Blender as docs/animate.md's steps do, and prints what came in.

    blender -b --factory-startup --python viewer/blender_import.py -- FILE.glb [RENDER.png]

Steps, as a user would take them: the scene's frame rate set to the file's fps *before* the import
(Blender turns glTF's seconds into frame numbers at the scene's rate when it imports), the import,
the scene's frame range set to the animation's keys (they start at frame 0), the wav beside the
file added to the sequencer at frame 0. Prints one JSON line: the scene's fps and frame range, the
animation's last key in seconds against the wav's length, the shape keys, whether the face is
smooth-shaded with the file's normals; with RENDER.png, renders the last frame there (Cycles, CPU).
"""

import json
import os
import struct
import sys

import bpy


def glb_extras(path: str) -> dict:
    """asset.extras of a .glb, read from its JSON chunk."""
    with open(path, "rb") as handle:
        header = handle.read(12)
        length, kind = struct.unpack("<II", handle.read(8))
        if header[:4] != b"glTF" or kind != 0x4E4F534A:
            raise SystemExit(f"{path}: not a binary glTF")
        return json.loads(handle.read(length))["asset"].get("extras", {})


def wav_seconds(path: str) -> float:
    import wave

    with wave.open(path) as handle:
        return handle.getnframes() / handle.getframerate()


def main(argv: list[str]) -> None:
    path = os.path.abspath(argv[0])
    extras = glb_extras(path)
    scene = bpy.context.scene
    for thing in list(bpy.data.objects):
        bpy.data.objects.remove(thing)
    scene.render.fps, scene.render.fps_base = round(extras["fps"]), 1.0  # before the import
    bpy.ops.import_scene.gltf(filepath=path)
    face = next(o for o in bpy.data.objects if o.type == "MESH")
    action = face.parent.animation_data.action if face.parent else face.animation_data.action
    first, last = (int(round(f)) for f in action.frame_range)
    scene.frame_start, scene.frame_end = first, last
    audio = os.path.join(os.path.dirname(path), extras.get("audio", ""))
    seconds = None
    if extras.get("audio") and os.path.exists(audio):
        scene.sequence_editor_create()
        scene.sequence_editor.sequences.new_sound("speech", audio, 1, first)
        seconds = wav_seconds(audio)
    mesh = face.data
    report = {
        "fps": scene.render.fps / scene.render.fps_base, "frame_start": scene.frame_start,
        "frame_end": scene.frame_end, "frames_in_file": extras["frames"],
        "last_key_s": (last - first) / (scene.render.fps / scene.render.fps_base),
        "audio_s": seconds, "shape_keys": len(mesh.shape_keys.key_blocks) - 1,
        "smooth": all(p.use_smooth for p in mesh.polygons),
        "custom_normals": bool(mesh.has_custom_normals), "vertices": len(mesh.vertices),
    }  # fmt: skip
    if len(argv) > 1:
        render(scene, face, os.path.abspath(argv[1]))
        report["render"] = argv[1]
    print("BLENDER_IMPORT " + json.dumps(report), flush=True)


def render(scene, face, out: str) -> None:
    """The last frame, seen from the front, lit from the front and above."""
    scene.frame_set(scene.frame_end)
    centre = sum((face.matrix_world @ v.co for v in face.data.vertices), start=face.location * 0)
    centre /= len(face.data.vertices)
    camera = bpy.data.objects.new("camera", bpy.data.cameras.new("camera"))
    # glTF's +Y up and +Z front come in as Blender's +Z up and -Y front
    camera.location = (centre.x, centre.y - 0.6, centre.z)
    camera.rotation_euler = (1.5708, 0.0, 0.0)
    camera.data.lens = 85
    scene.collection.objects.link(camera)
    scene.camera = camera
    light = bpy.data.objects.new("key", bpy.data.lights.new("key", "SUN"))
    light.rotation_euler = (1.2, 0.3, 0.2)
    light.data.energy = 3.0
    scene.collection.objects.link(light)
    scene.render.engine = "CYCLES"
    scene.cycles.device, scene.cycles.samples = "CPU", 16
    scene.cycles.use_denoising = False  # Debian's Blender is built without OpenImageDenoise
    scene.render.resolution_x = scene.render.resolution_y = 320
    scene.render.filepath = out
    bpy.ops.render.render(write_still=True)


if __name__ == "__main__":
    main(sys.argv[sys.argv.index("--") + 1 :] if "--" in sys.argv else [])
