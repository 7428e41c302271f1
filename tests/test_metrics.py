"""Each evaluation metric on hand-made cases whose answer is known."""

import numpy as np
import pytest

from sdetalk_jax import metrics
from sdetalk_jax.data import face_model
from sdetalk_jax.inference import (
    Crossfade,
    crossfade_weights,
    finished_frames,
    nearest_rotation,
    window_leads,
    window_starts,
)


def _faces(frames=4, vertices=5):
    return np.zeros((frames, vertices, 3))


def test_mean_vertex_error_is_mean_l2_in_mm():
    truth = _faces()
    prediction = truth.copy()
    prediction[:, :, 0] = 0.003  # every vertex 3 mm off along x
    prediction[0, 0] = [0.0, 0.004, 0.003]  # one vertex 5 mm off (3-4-5)
    expected = (3.0 * 19 + 5.0) / 20
    assert metrics.mean_vertex_error_mm(prediction, truth) == pytest.approx(expected)
    # flat [N, V*3] layout gives the same
    assert metrics.mean_vertex_error_mm(
        prediction.reshape(4, -1), truth.reshape(4, -1)
    ) == pytest.approx(expected)


def test_lip_vertex_error_takes_the_worst_lip_vertex_per_frame():
    truth = _faces(frames=2)
    prediction = truth.copy()
    prediction[0, 1, 2] = 0.002  # lip vertex, 2 mm
    prediction[0, 2, 2] = 0.001  # lip vertex, 1 mm
    prediction[1, 2, 2] = 0.004  # lip vertex, 4 mm
    prediction[1, 4, 2] = 0.010  # not a lip vertex: ignored
    lips = [1, 2]
    assert metrics.lip_vertex_error(prediction, truth, lips, squared=False) == pytest.approx(3.0)
    assert metrics.lip_vertex_error(prediction, truth, lips, squared=True) == pytest.approx(10.0)


def test_fdd_is_the_gap_in_upper_face_motion_spread():
    template = np.zeros((3, 3))
    frames = 4
    truth = np.zeros((frames, 3, 3))
    truth[:, 0, 1] = np.array([0.0, 0.002, 0.0, 0.002])  # vertex 0 moves 0/2 mm: std 1 mm
    prediction = np.zeros_like(truth)  # a frozen upper face
    assert metrics.upper_face_dynamics_deviation_mm(
        prediction, truth, template, [0]
    ) == pytest.approx(1.0)
    # The same motion in the prediction gives zero; twice the motion gives -1 mm.
    assert metrics.upper_face_dynamics_deviation_mm(truth, truth, template, [0]) == pytest.approx(
        0.0
    )
    assert metrics.upper_face_dynamics_deviation_mm(
        2 * truth, truth, template, [0]
    ) == pytest.approx(-1.0)


def test_head_rotation_error_is_the_geodesic_angle():
    n = 3
    truth = np.broadcast_to(np.eye(3), (n, 3, 3))
    yaw = np.radians(np.array([10.0, 20.0, 30.0]))
    prediction = face_model.rotation_matrices(np.zeros(n), yaw, np.zeros(n))
    assert metrics.head_rotation_error_deg(prediction, truth) == pytest.approx(20.0, abs=1e-4)
    assert metrics.head_rotation_error_deg(truth, truth) == pytest.approx(0.0, abs=1e-6)


def test_head_translation_error_in_mm():
    truth = np.zeros((2, 3))
    prediction = np.array([[0.003, 0.004, 0.0], [0.0, 0.0, 0.001]])
    assert metrics.head_translation_error_mm(prediction, truth) == pytest.approx(3.0)


def test_head_motion_diversity_zero_for_identical_samples_and_known_for_spread():
    n = 5
    still = np.broadcast_to(np.eye(3), (n, 3, 3))
    assert metrics.head_motion_diversity_deg([still, still, still]) == pytest.approx(0.0, abs=1e-6)
    nod = face_model.rotation_matrices(np.full(n, np.radians(6.0)), np.zeros(n), np.zeros(n))
    # pairs: (still, still) 0, (still, nod) 6, (still, nod) 6 -> mean 4 degrees
    assert metrics.head_motion_diversity_deg([still, still, nod]) == pytest.approx(4.0, abs=1e-4)
    with pytest.raises(ValueError):
        metrics.head_motion_diversity_deg([still])


def test_expression_diversity_zero_for_identical_faces_and_known_for_spread():
    rng = np.random.default_rng(0)
    face = rng.normal(size=(4, 10 * 3)) * 0.01
    assert metrics.expression_diversity_mm([face, face]) == 0.0
    moved = face + np.tile([0.0, 0.003, 0.004], 10)  # every vertex 5 mm away
    # pairs: (face, face) 0, (face, moved) 5, (face, moved) 5 -> mean 10/3 mm
    assert metrics.expression_diversity_mm([face, face, moved]) == pytest.approx(10 / 3)
    with pytest.raises(ValueError):
        metrics.expression_diversity_mm([face])


def test_speech_head_consistency_high_when_the_head_follows_the_envelope():
    fps, rate, n = 25.0, 16000, 100
    t = np.arange(n * rate // int(fps)) / rate
    loudness = 0.5 + 0.5 * np.sin(2 * np.pi * 0.7 * t)
    waveform = loudness * np.sin(2 * np.pi * 200 * t)
    frame_loudness = 0.5 + 0.5 * np.sin(2 * np.pi * 0.7 * np.arange(n) / fps)
    # Head turns with a speed proportional to the loudness, two frames later.
    speed = np.roll(frame_loudness, 2) * np.radians(20) / fps
    angle = np.cumsum(speed)
    following = face_model.rotation_matrices(np.zeros(n), angle, np.zeros(n))
    unrelated_speed = (
        (0.5 + 0.5 * np.sin(2 * np.pi * 2.3 * np.arange(n) / fps + 1.0)) * np.radians(20) / fps
    )
    unrelated = face_model.rotation_matrices(np.zeros(n), np.cumsum(unrelated_speed), np.zeros(n))
    still = np.broadcast_to(np.eye(3), (n, 3, 3))
    high = metrics.speech_head_consistency(waveform, rate, following, fps)
    low = metrics.speech_head_consistency(waveform, rate, unrelated, fps)
    assert high > 0.9
    assert low < 0.5
    assert metrics.speech_head_consistency(waveform, rate, still, fps) == 0.0


def test_emotion_error_is_squared_l2():
    assert metrics.emotion_error(np.array([0.5, 0.5, 0]), np.array([1.0, 0, 0])) == pytest.approx(
        0.5
    )


def _windows(num_frames, window, overlap):
    """(start, frames, lead) of each window, as `animation_chunks` cuts a clip."""
    starts = window_starts(num_frames, window, overlap)
    window = min(window, num_frames)
    leads = window_leads(starts, window, overlap)
    return [(start, window, lead) for start, lead in zip(starts, leads, strict=True)]


def _weights(windows, overlap):
    return [
        crossfade_weights(length, overlap, index == 0, index == len(windows) - 1, lead)
        for index, (_, length, lead) in enumerate(windows)
    ]


@pytest.mark.parametrize("num_frames", [200 + 4 * 175, 1003, 376, 201, 200, 150])
def test_windows_cover_the_clip_and_crossfade_weights_sum_to_one(num_frames):
    # Windows of 200 frames, 175 apart, the last one ending with the clip (a whole window of
    # audio to listen to): where it starts early, its first frames weigh nothing and it is
    # blended in over its predecessor's last 25 frames, as every other pair is.
    window, overlap = 200, 25
    windows = _windows(num_frames, window, overlap)
    total = np.zeros(num_frames)
    for (start, length, _), weights in zip(windows, _weights(windows, overlap), strict=True):
        total[start : start + length] += weights
    assert windows[0][0] == 0 and windows[-1][0] + windows[-1][1] == num_frames
    np.testing.assert_allclose(total, 1.0, rtol=0, atol=1e-12)
    blended = sum(np.count_nonzero((w > 0) & (w < 1)) for w in _weights(windows, overlap))
    assert blended == 2 * overlap * (len(windows) - 1)  # each junction: one ramp each way
    assert window_starts(150, 200, 25) == [0] and window_starts(200, 200, 25) == [0]


@pytest.mark.parametrize(
    "windows",
    [
        _windows(900, 200, 25),
        _windows(1003, 200, 25),  # the last window starts 147 frames early: a lead of 122
        _windows(150, 200, 25),
        # windows that overlap by more than their ramps: frames of weight one from two windows
        [(0, 200, 0), (175, 200, 0), (300, 200, 0)],
        # no overlap at all (--overlap-s 0), taken two windows at a time
        [(0, 100, 0), (100, 100, 0), (200, 60, 0)],
    ],
)
def test_the_streaming_crossfade_gives_bitwise_the_whole_clip_crossfade(windows):
    """Windows summed into whole-clip arrays and divided at the end (how animation worked before
    it streamed) against `Crossfade`, which hands frames on as soon as no later window reaches
    them: the same numbers to the bit, and no more held than the frames not yet handed back."""
    overlap = 0 if len(windows) > 1 and windows[1][0] == windows[0][1] else 25
    num_frames = windows[-1][0] + windows[-1][1]
    rng = np.random.default_rng(num_frames)
    whole = np.zeros((num_frames, 6), np.float32)
    total = np.zeros(num_frames)
    crossfade, handed_back = Crossfade(), []
    for index, ((start, length, _), weights) in enumerate(
        zip(windows, _weights(windows, overlap), strict=True)
    ):
        values = rng.normal(size=(length, 6)).astype(np.float32)
        whole[start : start + length] += weights[:, None] * values
        total[start : start + length] += weights
        crossfade.add(start, {"x": values}, weights)
        if overlap == 0 and index % 2 == 0 and index + 1 < len(windows):
            continue  # two windows side by side, handed back in one take
        until = sum(windows[index + 1][::2]) if index + 1 < len(windows) else num_frames
        handed_back += [piece["x"] for piece in crossfade.take(until)]
        # only the rows a later window blends with are kept, not the window's whole output
        assert crossfade.held_frames == start + length - until
    whole /= total[:, None].astype(np.float32)
    np.testing.assert_array_equal(np.concatenate(handed_back), whole)
    with pytest.raises(ValueError, match="already handed back"):
        crossfade.add(0, {"x": values}, np.ones(length))


@pytest.mark.parametrize("head_scale", [1.0, 0.5])
def test_finishing_frames_chunk_by_chunk_is_finishing_the_whole_clip(head_scale):
    """What `finished_frames` does to crossfaded frames (rotations back onto SO(3), the head
    scaled, the face posed again) is frame by frame: chunks give bitwise the whole clip's."""
    rng = np.random.default_rng(1)
    frames, vertices = 40, 6
    angles = np.radians(rng.normal(scale=10.0, size=(frames, 3)))
    rotation = face_model.rotation_matrices(*angles.T).astype(np.float32)
    rotation += rng.normal(scale=1e-3, size=rotation.shape).astype(np.float32)  # an average's
    raw = {
        "vertices": rng.normal(size=(frames, vertices * 3)).astype(np.float32),
        "expression": rng.normal(size=(frames, vertices * 3)).astype(np.float32),
        "neutral": rng.normal(size=(frames, vertices * 3)).astype(np.float32),
        "rotation": rotation.reshape(frames, 9),
        "translation": rng.normal(scale=0.01, size=(frames, 3)).astype(np.float32),
        "emotion": rng.random((frames, 4)).astype(np.float32),
    }
    whole = finished_frames({k: v.copy() for k, v in raw.items()}, head_scale)
    pieces = [
        finished_frames({k: v[a:b].copy() for k, v in raw.items()}, head_scale)
        for a, b in ((0, 7), (7, 31), (31, 40))
    ]
    for name, value in whole.items():
        np.testing.assert_array_equal(np.concatenate([p[name] for p in pieces]), value, name)
    np.testing.assert_allclose(np.linalg.det(whole["rotation"]), 1.0, atol=1e-5)
    if head_scale != 1.0:  # the face was posed again with the scaled head
        assert not np.allclose(whole["vertices"].reshape(frames, -1), raw["vertices"])


def test_nearest_rotation_returns_a_rotation_close_to_the_average():
    n = 4
    a = face_model.rotation_matrices(np.zeros(n), np.radians(np.full(n, 10.0)), np.zeros(n))
    b = face_model.rotation_matrices(np.zeros(n), np.radians(np.full(n, 20.0)), np.zeros(n))
    blended = nearest_rotation(0.5 * a + 0.5 * b)
    np.testing.assert_allclose(
        np.einsum("nij,nkj->nik", blended, blended),
        np.broadcast_to(np.eye(3), (n, 3, 3)),
        atol=1e-6,
    )
    np.testing.assert_allclose(np.linalg.det(blended), 1.0, atol=1e-6)
    expected = face_model.rotation_matrices(np.zeros(n), np.radians(np.full(n, 15.0)), np.zeros(n))
    np.testing.assert_allclose(blended, expected, atol=1e-6)


def _head(pitch, yaw, roll=None):
    from sdetalk_jax.data.face_model import rotation_matrices

    roll = np.zeros_like(pitch) if roll is None else roll
    return rotation_matrices(pitch, yaw, roll).astype(np.float64)


def test_head_size_speed_and_nod_share_on_hand_made_motion():
    fps = 25.0
    t = np.arange(200) / fps
    wave = np.radians(5.0) * np.sin(2 * np.pi * 1.0 * t)
    nodding, shaking = _head(wave, 0 * wave), _head(0 * wave, wave)
    assert metrics.nod_share(nodding) == pytest.approx(1.0, abs=1e-6)
    assert metrics.nod_share(shaking) == pytest.approx(0.0, abs=1e-6)
    assert np.isnan(metrics.nod_share(np.broadcast_to(np.eye(3), (20, 3, 3))))
    mixed = _head(wave, 0.5 * wave)
    assert metrics.nod_share(mixed) == pytest.approx(2 / 3, abs=0.01)
    # A sine of amplitude 5 deg: RMS angle 5 / sqrt(2), mean speed 4 * 5 deg per period (1 s).
    assert metrics.rms_head_angle_deg(nodding) == pytest.approx(5 / np.sqrt(2), rel=0.01)
    assert metrics.mean_head_speed_deg(nodding, fps) == pytest.approx(20.0, rel=0.01)
    # The rotation vector between frames has the angle turned as its length.
    vectors = metrics.head_rotation_vectors(nodding)
    turned = np.radians(metrics.rotation_angles_deg(nodding[1:], nodding[:-1]))
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=-1), turned, rtol=1e-3, atol=1e-6)


def test_head_style_metrics_of_the_truth_itself_and_of_a_still_head():
    from sdetalk_jax.evaluate import head_style_metrics

    t = np.arange(120) / 25.0
    truth = _head(np.radians(4) * np.sin(2 * np.pi * t), np.radians(2) * np.sin(3 * t))
    example = {"rotation": truth, "has_head_pose": True}
    same = head_style_metrics({"rotation": truth, "rotation_samples": [truth]}, example, 25.0)
    for name in ("head_speed_ratio", "head_angle_ratio", "head_speed_ratio_sampled"):
        assert same[name] == pytest.approx(1.0)
    assert same["nod_share"] == pytest.approx(metrics.nod_share(truth))
    assert same["head_rotation_error_sampled"] < 0.01  # arccos of float32 matrices near 1
    still = np.broadcast_to(np.eye(3), truth.shape)
    none = head_style_metrics({"rotation": still, "rotation_samples": []}, example, 25.0)
    assert none["head_speed_ratio"] == 0.0 and none["head_angle_ratio"] == 0.0
    assert np.isnan(none["nod_share"])
    unposed = head_style_metrics(
        {"rotation": truth, "rotation_samples": []}, {**example, "has_head_pose": False}, 25.0
    )
    assert all(np.isnan(v) for v in unposed.values())
