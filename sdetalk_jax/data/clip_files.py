"""One clip's files: loading its arrays (vertices, head pose), and the checks a corpus scan runs on
its vertex array, head pose and audio before it accepts the clip. Each check appends what is wrong
to `problems` as a `Problem` naming the file."""

from __future__ import annotations

import numpy as np

from sdetalk_jax import audio
from sdetalk_jax.data.problems import Problem


def read_vertices_header(path: str) -> tuple[int, ...]:
    """The array shape without reading the data (memory-mapped header)."""
    return np.load(path, mmap_mode="r", allow_pickle=False).shape


def load_vertices(path: str) -> np.ndarray:
    return np.load(path, allow_pickle=False).astype(np.float32, copy=False)


def load_head_pose(path: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path, allow_pickle=False) as archive:
        return archive["rotation"].astype(np.float32), archive["translation"].astype(np.float32)


def check_vertices(path: str, width: int | None, problems: list[Problem]) -> int | None:
    """Returns the frame count of a good vertex file, else records problems and returns None."""
    try:
        vertices = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as err:
        problems.append(Problem(path, f"unreadable vertex array ({err})"))
        return None
    if vertices.dtype.kind not in "fiu":
        problems.append(Problem(path, f"vertex array is not numeric (dtype {vertices.dtype})"))
        return None
    if vertices.ndim != 2:
        problems.append(
            Problem(path, f"vertex array has shape {vertices.shape}, expected [frames, V*3]")
        )
        return None
    if vertices.shape[0] == 0:
        problems.append(Problem(path, "vertex array has no frames"))
        return None
    if width is not None and vertices.shape[1] != width:
        problems.append(
            Problem(
                path,
                f"vertex width {vertices.shape[1]} does not match the template ({width} = V*3)",
            )
        )
        return None
    if not np.all(np.isfinite(vertices)):
        problems.append(Problem(path, "vertex array contains NaN or Inf"))
        return None
    return int(vertices.shape[0])


def check_head_pose(path: str, num_frames: int, problems: list[Problem]) -> bool:
    """Whether the file holds finite rotation [N, 3, 3] and translation [N, 3] for the clip's N
    frames; records problems when not."""
    try:
        rotation, translation = load_head_pose(path)
    except Exception as err:
        problems.append(
            Problem(path, f"unreadable head pose (needs 'rotation' and 'translation'; {err})")
        )
        return False
    ok = True
    if rotation.shape != (num_frames, 3, 3):
        problems.append(
            Problem(path, f"rotation has shape {rotation.shape}, expected ({num_frames}, 3, 3)")
        )
        ok = False
    if translation.shape != (num_frames, 3):
        problems.append(
            Problem(path, f"translation has shape {translation.shape}, expected ({num_frames}, 3)")
        )
        ok = False
    if ok and not (np.all(np.isfinite(rotation)) and np.all(np.isfinite(translation))):
        problems.append(Problem(path, "head pose contains NaN or Inf"))
        ok = False
    return ok


def check_audio(path: str, num_frames: int, fps: float, problems: list[Problem]) -> float | None:
    """The audio's duration in seconds when it is readable and covers the clip's frames (within
    one frame), else records problems and returns None. Silent audio, or audio longer than the
    frames, is a warning."""
    try:
        info = audio.inspect_audio(path)
    except audio.AudioError as err:
        problems.append(Problem(path, str(err).removeprefix(f"{path}: ")))
        return None
    if info.peak < audio.SILENCE_PEAK:
        problems.append(Problem(path, f"audio is silent (peak {info.peak:.2e})", "warning"))
    audio_frames = info.duration_s * fps
    # One frame of slack: mesh capture and audio rarely start on the same sample.
    if num_frames > audio_frames + 1:
        problems.append(
            Problem(
                path,
                f"audio is {info.duration_s:.2f}s ({audio_frames:.1f} frames at {fps:g} fps), "
                f"shorter than its {num_frames}-frame mesh sequence",
            )
        )
        return None
    if audio_frames > num_frames + 1:
        problems.append(
            Problem(
                path,
                f"audio is {info.duration_s:.2f}s ({audio_frames:.1f} frames at {fps:g} fps), "
                f"longer than its {num_frames}-frame mesh sequence by "
                f"{audio_frames - num_frames:.1f} frames: only the first {num_frames / fps:.2f}s "
                "are used",
                "warning",
            )
        )
    return info.duration_s
