"""Headless rendering of face-mesh animations to video.

OpenGL through moderngl on an EGL context: on a machine without a GPU or a display, Mesa's llvmpipe
software rasteriser renders offscreen (nothing is rasterised by this project). Frames are shaded
with per-vertex normals (Lambert plus a little specular), seen by a fixed camera, and piped to the
ffmpeg that imageio-ffmpeg ships, which also muxes the audio in.
"""

from __future__ import annotations

import os

import numpy as np
from scipy import sparse

from sdetalk_jax.fileio import atomic_path

# imageio-ffmpeg starts ffmpeg with preexec_fn=os.setpgrp (so that Ctrl-C does not reach it),
# which makes Python fork the whole process: unsafe beside JAX's threads, and JAX warns of it.
# Without it ffmpeg is spawned; a Ctrl-C then stops ffmpeg too, and the video is not written.
os.environ.setdefault("IMAGEIO_FFMPEG_NO_PREVENT_SIGINT", "1")

SKIN = (0.87, 0.72, 0.62)
LIPS = (0.72, 0.30, 0.30)

_VERTEX_SHADER = """
#version 330
uniform mat4 view_projection;
in vec3 position;
in vec3 normal;
in vec3 color;
out vec3 v_normal;
out vec3 v_color;
out vec3 v_position;
void main() {
    v_normal = normal;
    v_color = color;
    v_position = position;
    gl_Position = view_projection * vec4(position, 1.0);
}
"""

_FRAGMENT_SHADER = """
#version 330
uniform vec3 light_direction;
uniform vec3 eye;
in vec3 v_normal;
in vec3 v_color;
in vec3 v_position;
out vec4 fragment;
void main() {
    vec3 n = normalize(v_normal);
    if (!gl_FrontFacing) n = -n;
    float diffuse = max(dot(n, light_direction), 0.0);
    vec3 to_eye = normalize(eye - v_position);
    float specular = pow(max(dot(reflect(-light_direction, n), to_eye), 0.0), 24.0);
    vec3 shaded = v_color * (0.25 + 0.75 * diffuse) + 0.12 * specular;
    fragment = vec4(clamp(shaded, 0.0, 1.0), 1.0);
}
"""


class RenderError(RuntimeError):
    """No OpenGL context could be made, or ffmpeg failed; the message says which and why."""


def vertex_colors(num_vertices: int, lip_vertices=(), corpus_colors=None) -> np.ndarray:
    """[V, 3] RGB: the corpus's own colours of its mesh when it has them (`corpus_colors`,
    `checkpoint.Assets.vertex_colors`), else skin with the lip region marked so that the mouth
    is easy to read."""
    if corpus_colors is not None and len(corpus_colors) == num_vertices:
        return np.asarray(corpus_colors, np.float32)
    colors = np.tile(np.asarray(SKIN, np.float32), (num_vertices, 1))
    colors[np.asarray(lip_vertices, int)] = LIPS
    return colors


def vertex_normal_operator(faces: np.ndarray, num_vertices: int) -> sparse.csr_matrix:
    """Sparse [V, F] incidence matrix: vertex normals = incidence @ (area-weighted face normals)."""
    rows = np.asarray(faces).reshape(-1)
    columns = np.repeat(np.arange(len(faces)), 3)
    data = np.ones(rows.shape[0], np.float32)
    return sparse.csr_matrix((data, (rows, columns)), shape=(num_vertices, len(faces)))


def vertex_normals(vertices: np.ndarray, faces: np.ndarray, incidence) -> np.ndarray:
    """Unit per-vertex normals [V, 3] of one frame [V, 3]."""
    corners = vertices[faces]
    face_normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    normals = incidence @ face_normals
    return normals / (np.linalg.norm(normals, axis=1, keepdims=True) + 1e-12)


def look_at_projection(center, radius: float, aspect: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """A fixed frontal perspective camera framing a sphere (center, radius): (view-projection
    matrix [4, 4] for column vectors, eye position [3])."""
    fov = np.radians(25.0)
    distance = radius / np.tan(fov / 2)
    eye = np.asarray(center, np.float64) + np.array([0.0, 0.0, distance])
    # View: camera looks down -z; translate the world so the eye is at the origin.
    view = np.eye(4)
    view[:3, 3] = -eye
    near, far = distance - 2 * radius, distance + 2 * radius
    near = max(near, 1e-3)
    f = 1.0 / np.tan(fov / 2)
    projection = np.zeros((4, 4))
    projection[0, 0] = f / aspect
    projection[1, 1] = f
    projection[2, 2] = (far + near) / (near - far)
    projection[2, 3] = 2 * far * near / (near - far)
    projection[3, 2] = -1.0
    return projection @ view, eye


def _create_context():
    import moderngl

    try:
        return moderngl.create_standalone_context(backend="egl")
    except Exception as egl_error:  # noqa: BLE001 - fall back to the platform default, then explain
        try:
            return moderngl.create_standalone_context()
        except Exception as error:
            raise RenderError(
                "could not create a headless OpenGL context (EGL: "
                f"{egl_error}; default: {error}). Install Mesa's EGL and software driver, e.g. "
                "`apt-get install libegl1 libgl1-mesa-dri` (docs/animate.md)."
            ) from error


class MeshRenderer:
    """Renders frames of one mesh topology with a fixed camera; reuse it for a whole clip."""

    def __init__(
        self,
        faces: np.ndarray,
        colors: np.ndarray,
        *,
        size: int = 512,
        center=None,
        radius: float | None = None,
        reference: np.ndarray | None = None,
    ):
        """faces [F, 3] int; colors [V, 3]; the camera frames `reference` vertices [V, 3] (or the
        sphere center/radius) with some margin, and stays fixed for every frame."""
        self.faces = np.ascontiguousarray(faces, np.int32)
        self.num_vertices = colors.shape[0]
        self.size = size
        if center is None or radius is None:
            if reference is None:
                raise ValueError(
                    "MeshRenderer needs either center and radius or reference vertices"
                )
            low, high = reference.min(0), reference.max(0)
            center = (low + high) / 2
            radius = float(np.linalg.norm(high - low) / 2) * 1.15
        self.view_projection, self.eye = look_at_projection(center, radius)
        self.incidence = vertex_normal_operator(self.faces, self.num_vertices)

        self.context = _create_context()
        ctx = self.context
        self.program = ctx.program(vertex_shader=_VERTEX_SHADER, fragment_shader=_FRAGMENT_SHADER)
        self.program["view_projection"].write(self.view_projection.T.astype("f4").tobytes())
        light = np.array([0.3, 0.4, 1.0])
        self.program["light_direction"].value = tuple(light / np.linalg.norm(light))
        self.program["eye"].value = tuple(self.eye)
        self.positions = ctx.buffer(reserve=self.num_vertices * 12)
        self.normals = ctx.buffer(reserve=self.num_vertices * 12)
        self.colors = ctx.buffer(np.ascontiguousarray(colors, "f4").tobytes())
        index_buffer = ctx.buffer(self.faces.tobytes())
        self.vertex_array = ctx.vertex_array(
            self.program,
            [
                (self.positions, "3f", "position"),
                (self.normals, "3f", "normal"),
                (self.colors, "3f", "color"),
            ],
            index_buffer=index_buffer,
        )
        self.framebuffer = ctx.simple_framebuffer((size, size))
        ctx.enable(ctx.DEPTH_TEST)

    def set_colors(self, colors: np.ndarray) -> None:
        """Replaces the per-vertex colours [V, 3] (e.g. a heat map of a per-vertex value)."""
        self.colors.write(np.ascontiguousarray(colors, "f4").reshape(-1).tobytes())

    def render(self, vertices: np.ndarray) -> np.ndarray:
        """One frame [V, 3] (metres) -> RGB image [size, size, 3] uint8."""
        vertices = np.asarray(vertices, np.float32).reshape(-1, 3)
        self.positions.write(vertices.tobytes())
        self.normals.write(
            vertex_normals(vertices, self.faces, self.incidence).astype("f4").tobytes()
        )
        self.framebuffer.use()
        self.framebuffer.clear(0.96, 0.96, 0.96, 1.0, depth=1.0)
        self.vertex_array.render()
        pixels = self.framebuffer.read(components=3, alignment=1)
        image = np.frombuffer(pixels, np.uint8).reshape(self.size, self.size, 3)
        return image[::-1]  # OpenGL's first row is the bottom one

    def release(self) -> None:
        self.context.release()


def write_video(
    path: str,
    frames,
    *,
    fps: float,
    size: int,
    audio_path: str | None = None,
    progress: bool = False,
    total: int | None = None,
) -> None:
    """Writes RGB frames (an iterable of [size, size, 3] uint8) to an H.264 mp4, with the audio of
    `audio_path` muxed in as AAC, whole: the frames cover whole frame periods of it, so the video
    may end up to a frame before the audio (players hold the last frame). The file appears only
    when complete."""
    import imageio_ffmpeg
    from tqdm import tqdm

    sent = 0
    with atomic_path(path) as temporary:
        writer = imageio_ffmpeg.write_frames(
            temporary,
            (size, size),
            fps=fps,
            codec="libx264",
            quality=7,
            macro_block_size=16,
            audio_path=audio_path,
            audio_codec="aac" if audio_path else None,
            ffmpeg_log_level="error",
        )
        try:
            writer.send(None)  # start ffmpeg
            try:
                for frame in tqdm(
                    frames, total=total, disable=not progress, desc="render", unit="frame"
                ):
                    writer.send(np.ascontiguousarray(frame))
                    sent += 1
            finally:
                writer.close()
            # imageio-ffmpeg does not check ffmpeg's exit status: count what it really wrote, so
            # that a video cut short is never renamed into place.
            written, _ = imageio_ffmpeg.count_frames_and_secs(temporary)
        except (OSError, RuntimeError) as error:
            raise RenderError(
                f"ffmpeg failed while writing {path} after {sent} frames; nothing was written "
                f"({str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__})"
            ) from error
        if written != sent:
            raise RenderError(
                f"ffmpeg wrote {written} of {sent} frames of {path}; nothing was written"
            )


def render_animation(
    path: str,
    vertices: np.ndarray,
    faces: np.ndarray,
    colors: np.ndarray,
    *,
    fps: float = 25.0,
    size: int = 512,
    audio_path: str | None = None,
    progress: bool = False,
    chunk_frames: int = 256,
) -> None:
    """Renders frames [N, V, 3] (or [N, V*3]) with a camera fixed on the bounds of every frame
    (the head moves within the picture) and writes `path` as mp4 with the audio muxed in.
    `vertices` may be anything sliced by frames, like `fileio.StoredFrames`: it is read
    `chunk_frames` at a time, twice (bounds, then pictures), never whole."""
    count = len(vertices)

    def chunks():
        for start in range(0, count, chunk_frames):
            block = np.asarray(vertices[start : start + chunk_frames], np.float32)
            yield block.reshape(len(block), -1, 3)

    low = np.full(3, np.inf, np.float32)
    high = np.full(3, -np.inf, np.float32)
    for block in chunks():
        low = np.minimum(low, block.reshape(-1, 3).min(0))
        high = np.maximum(high, block.reshape(-1, 3).max(0))
    renderer = MeshRenderer(
        faces,
        colors,
        size=size,
        center=(low + high) / 2,
        radius=float(np.linalg.norm(high - low) / 2) * 1.1,
    )
    try:
        write_video(
            path,
            (renderer.render(frame) for block in chunks() for frame in block),
            fps=fps,
            size=size,
            audio_path=audio_path,
            progress=progress,
            total=count,
        )
    finally:
        renderer.release()


def probe_video(path: str) -> dict:
    """Frame count, size, fps, whether an audio stream is present and how many seconds of sound
    it decodes to, read back with ffmpeg."""
    import subprocess

    import imageio_ffmpeg

    frames, _ = imageio_ffmpeg.count_frames_and_secs(path)
    result = subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", path],
        capture_output=True,
        text=True,
    )
    info = result.stderr
    reader = imageio_ffmpeg.read_frames(path)
    meta = next(reader)
    reader.close()
    return {
        "frames": frames,
        "size": tuple(meta["size"]),
        "fps": meta["fps"],
        "has_audio": "Audio:" in info,
        "audio_seconds": _decoded_audio_seconds(path) if "Audio:" in info else 0.0,
    }


def _decoded_audio_seconds(path: str, rate: int = 16000) -> float:
    import subprocess

    import imageio_ffmpeg

    decoded = subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", path, "-vn", "-ac", "1",
         "-ar", str(rate), "-f", "s16le", "-"],
        capture_output=True, check=True,
    )  # fmt: skip
    return len(decoded.stdout) / 2 / rate
