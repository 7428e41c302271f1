"""Evaluation metrics for one clip, in numpy, with the units in every name.

Vertices are [N, V, 3] (or [N, V*3]) in metres, rotations [N, 3, 3] (row-vector convention, as the
data), translations [N, 3] in metres. Results are in millimetres and degrees unless a name says
otherwise. Every function is a small pure function so the tests can check it on hand-made cases.
"""

from __future__ import annotations

import itertools

import numpy as np
from scipy import ndimage, signal

MM = 1000.0  # millimetres per metre


def _frames(vertices: np.ndarray) -> np.ndarray:
    vertices = np.asarray(vertices, np.float64)
    return vertices.reshape(vertices.shape[0], -1, 3)


def _flat_frames(vertices: np.ndarray) -> np.ndarray:
    vertices = np.asarray(vertices, np.float64)
    return vertices.reshape(vertices.shape[0], -1)


def vertex_distances(prediction, target):
    """L2 distance per vertex [..., V] between two meshes [..., V*3], in their own units.

    The one definition of the vertex error, for numpy arrays (float64 in the evaluation) and JAX
    arrays (float32 inside the jitted validation step): each caller keeps its own precision."""
    difference = prediction - target
    if isinstance(difference, np.ndarray):
        xp = np
    else:  # traced inside jit; imported here so that numpy-only users never load JAX
        import jax.numpy as xp
    return xp.linalg.norm(difference.reshape(difference.shape[:-1] + (-1, 3)), axis=-1)


def vertex_distances_mm(prediction: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per frame and vertex L2 distance [N, V] in mm."""
    return vertex_distances(_flat_frames(prediction), _flat_frames(target)) * MM


def mean_vertex_error_mm(prediction, target) -> float:
    """Mean L2 vertex error over all frames and vertices (the paper's Table 1 metric), in mm."""
    return float(vertex_distances_mm(prediction, target).mean())


def lip_vertex_error(prediction, target, lip_vertices, *, squared: bool) -> float:
    """LVE: per frame the largest error over the lip vertices, averaged over frames.

    squared=True is the convention of the public BIWI numbers (FaceFormer, CodeTalker): the maximal
    *squared* L2 distance, in mm^2. squared=False is the plain maximal L2 distance, in mm."""
    lips = vertex_distances_mm(prediction, target)[:, np.asarray(lip_vertices)]
    if squared:
        lips = lips**2
    return float(lips.max(axis=1).mean())


def upper_face_dynamics_deviation_mm(prediction, target, template, upper_face_vertices) -> float:
    """FDD (CodeTalker): for each upper-face vertex, the standard deviation over time of its
    displacement from the template, ground truth minus prediction, averaged over the vertices; in
    mm. Positive when the prediction moves the upper face less than the ground truth."""
    upper = np.asarray(upper_face_vertices)
    rest = _frames(np.asarray(template)[None])

    def dynamics(vertices):
        return (np.linalg.norm(_frames(vertices) - rest, axis=-1) * MM)[:, upper].std(axis=0)

    return float((dynamics(target) - dynamics(prediction)).mean())


def rotation_angles_deg(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Geodesic angle between two rotations per frame [N], in degrees."""
    cosine = (np.einsum("nij,nij->n", np.asarray(first, np.float64), second) - 1.0) / 2.0
    return np.degrees(np.arccos(np.clip(cosine, -1.0, 1.0)))


def head_rotation_error_deg(prediction: np.ndarray, target: np.ndarray) -> float:
    """Mean geodesic angle between predicted and true head rotation, in degrees."""
    return float(rotation_angles_deg(prediction, target).mean())


def head_translation_error_mm(prediction: np.ndarray, target: np.ndarray) -> float:
    """Mean L2 distance between predicted and true head translation, in mm."""
    difference = np.asarray(prediction, np.float64) - target
    return float(np.linalg.norm(difference, axis=-1).mean() * MM)


def head_motion_diversity_deg(rotations: list[np.ndarray]) -> float:
    """Mean pairwise geodesic angle between K head-rotation samples [N, 3, 3] of the same clip, in
    degrees: 0 when every sample moves the head the same way."""
    if len(rotations) < 2:
        raise ValueError("head-motion diversity needs at least two samples")
    pairs = itertools.combinations(rotations, 2)
    return float(np.mean([rotation_angles_deg(a, b).mean() for a, b in pairs]))


def expression_diversity_mm(expressions: list[np.ndarray]) -> float:
    """Mean pairwise mean vertex distance (mm) between K expression samples [N, V*3] of the same
    clip (unposed faces): 0 when every sample makes the same face."""
    if len(expressions) < 2:
        raise ValueError("expression diversity needs at least two samples")
    pairs = itertools.combinations(expressions, 2)
    return float(np.mean([mean_vertex_error_mm(a, b) for a, b in pairs]))


def speech_head_consistency(
    waveform: np.ndarray,
    sample_rate: int,
    rotation: np.ndarray,
    fps: float,
    *,
    max_lag_s: float = 0.4,
) -> float:
    """The paper's Fig. 6 relation as a number: the Pearson correlation between the audio's Hilbert
    envelope and the head's angular speed, at the best lag from 0 to `max_lag_s` (head after
    speech). Higher means head motion follows the speech more closely."""
    num_frames = rotation.shape[0]
    envelope = frame_envelope(waveform, sample_rate, num_frames, fps)
    speed = head_angular_speed(rotation, fps)
    lags = range(0, max(1, min(int(round(max_lag_s * fps)), num_frames - 3)) + 1)
    return max(lagged_correlation(envelope, speed, lag) for lag in lags)


def frame_envelope(
    waveform: np.ndarray, sample_rate: int, num_frames: int, fps: float
) -> np.ndarray:
    """Hilbert envelope of the audio averaged per face frame (the paper's Fig. 6 envelope)."""
    envelope = np.abs(signal.hilbert(waveform.astype(np.float64)))
    edges = np.linspace(0, len(envelope), num_frames + 1).astype(int)
    edges = np.minimum(edges, len(envelope))
    per_frame = np.add.reduceat(envelope, edges[:-1]) / np.maximum(np.diff(edges), 1)
    return ndimage.gaussian_filter1d(per_frame, 1.0)


def head_angular_speed(rotation: np.ndarray, fps: float) -> np.ndarray:
    """Angle turned between consecutive frames, in rad/s, [N] (first frame repeats the second)."""
    rotation = np.asarray(rotation, np.float64)  # arccos near 1 needs the precision
    relative = np.einsum("tij,tkj->tik", rotation[1:], rotation[:-1])
    cosine = np.clip((np.trace(relative, axis1=1, axis2=2) - 1) / 2, -1.0, 1.0)
    speed = np.arccos(cosine) * fps
    return np.concatenate([speed[:1], speed])


def lagged_correlation(leading: np.ndarray, following: np.ndarray, lag: int) -> float:
    """Pearson correlation of leading[t] with following[t + lag]."""
    if lag > 0:
        leading, following = leading[:-lag], following[lag:]
    elif lag < 0:
        leading, following = leading[-lag:], following[:lag]
    if leading.std() == 0 or following.std() == 0:
        return 0.0
    return float(np.corrcoef(leading, following)[0, 1])


def head_angle_deg(rotation: np.ndarray) -> np.ndarray:
    """Each frame's head rotation away from the rest pose (the identity) [N], in degrees."""
    rotation = np.asarray(rotation, np.float64)
    return rotation_angles_deg(rotation, np.broadcast_to(np.eye(3), rotation.shape))


def rms_head_angle_deg(rotation: np.ndarray) -> float:
    """Root-mean-square head angle from the rest pose, in degrees: how far the head moves."""
    return float(np.sqrt(np.mean(np.square(head_angle_deg(rotation)))))


def mean_head_speed_deg(rotation: np.ndarray, fps: float) -> float:
    """Mean head angular speed, in degrees per second: how much the head moves."""
    return float(np.degrees(head_angular_speed(rotation, fps)).mean())


def head_rotation_vectors(rotation: np.ndarray) -> np.ndarray:
    """The rotation between consecutive frames as axis * angle [N - 1, 3] (radians): its x part is
    nodding (pitch), its y part shaking (yaw), its z part tilting (roll)."""
    rotation = np.asarray(rotation, np.float64)
    relative = np.einsum("tij,tkj->tik", rotation[1:], rotation[:-1])
    angle = np.arccos(np.clip((np.trace(relative, axis1=1, axis2=2) - 1) / 2, -1.0, 1.0))
    skew = np.stack(
        [
            relative[:, 2, 1] - relative[:, 1, 2],
            relative[:, 0, 2] - relative[:, 2, 0],
            relative[:, 1, 0] - relative[:, 0, 1],
        ],
        axis=-1,
    )
    # angle / (2 sin angle), which tends to 1/2 as the angle goes to 0
    scale = np.where(angle > 1e-6, angle / (2 * np.sin(np.maximum(angle, 1e-6))), 0.5)
    return skew * scale[:, None]


def nod_share(rotation: np.ndarray) -> float:
    """The share of nodding in the head's nodding and shaking, summed over the clip: 1 for a head
    that only nods (pitch), 0 for one that only shakes (yaw), NaN for a still head. The paper's
    "nodding for positive, shaking for negative reactions" as a number."""
    motion = np.abs(head_rotation_vectors(rotation)).sum(axis=0)
    total = motion[0] + motion[1]
    return float(motion[0] / total) if total > 1e-9 else float("nan")


def emotion_error(prediction: np.ndarray, target: np.ndarray) -> float:
    """Squared L2 distance between the predicted and true emotion mixtures (the training L_cls)."""
    return float(np.sum(np.square(np.asarray(prediction, np.float64) - target)))
