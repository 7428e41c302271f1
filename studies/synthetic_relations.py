"""Measures the relations SynthBIWI builds into its data and prints a table.

    python -m studies.synthetic_relations [--subjects 6] [--sentences 20] [--vertices 400]

Generates a corpus in a temporary folder, then: per-clip correlation of mouth opening with audio RMS
energy; head angular speed against the Hilbert envelope over lags (and against another clip's
envelope); a 6-fold cross-validated ridge probe on prosody features, each relative to the neutral
recording of the same sentence, against predicting the mean mixture; how well a clip alone
(no neutral recording beside it) tells an emotional take from a neutral one: a logistic regression
on its prosody features and their squares, trained on the first five sixths of the sentences and
tested on the rest, with the features centred per speaker and without; and how much of the head's
per-axis speed the speech can tell at all (`head_speed_floor`). The tests check bounds on the
first quantities (tests/test_synthetic.py); this prints the values.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile

import numpy as np
import soundfile

from sdetalk_jax.data import biwi, clip_files, face_model, synthetic
from sdetalk_jax.data.synthetic import analysis


def emotional_take_accuracy(corpus, prosody: dict, *, per_speaker: bool) -> tuple[float, float]:
    """(held-out, training) accuracy of telling emotional from neutral takes from one clip's
    prosody (duration, log-f0 median and spread, loudness) and their squares."""
    clips = sorted(corpus.clips, key=lambda c: c.name)
    x = np.array([prosody[c.name] for c in clips])
    x[:, 0] = np.log(x[:, 0])
    y = np.array([c.emotional for c in clips], float)
    speaker = np.array([c.subject for c in clips])
    sentence = np.array([c.sentence for c in clips])
    train = sentence <= np.quantile(np.unique(sentence), 5 / 6)
    if per_speaker:  # each speaker's mean over its training clips: its own voice
        for name in np.unique(speaker):
            x[speaker == name] -= x[train & (speaker == name)].mean(0)
    x = (x - x[train].mean(0)) / (x[train].std(0) + 1e-9)
    design = np.c_[x, x**2, np.ones(len(x))]
    weights = np.zeros(design.shape[1])
    for _ in range(3000):  # gradient descent on the L2-regularised logistic loss
        p = 1 / (1 + np.exp(-design[train] @ weights))
        weights -= 0.1 * (design[train].T @ (p - y[train]) / train.sum() + 1e-3 * weights)
    correct = ((design @ weights) > 0) == (y > 0.5)
    return float(correct[~train].mean()), float(correct[train].mean())


def head_speed_floor(waveform, rate, num_frames, fps, mixture, width, draws=32):
    """(expected, constant): the relative squared error of `losses.head_gain_loss` that SynthBIWI's
    own head generator leaves, for one clip's speech and emotion, when a drawn head's per-axis speed
    (smoothed over `width` frames) is predicted by its expectation over other draws (the best any
    model of the speech can do: the phase of each movement is random), and by the best constant per
    axis (a speed that does not follow the speech)."""
    import jax.numpy as jnp

    from sdetalk_jax import losses

    envelope = synthetic.speech_envelope(waveform, rate, num_frames, fps)
    amplitude, nod = synthetic.head_style(mixture)
    weights = jnp.ones((1, num_frames))
    speeds = []
    for draw in range(draws + 1):
        pitch, yaw, roll, _ = synthetic.head_motion(
            envelope, fps, amplitude=amplitude, nod=nod, rng=np.random.default_rng(draw)
        )
        rotation = jnp.asarray(face_model.rotation_matrices(pitch, yaw, roll)[None], jnp.float32)
        speed, _, _ = losses.head_motion_envelopes(rotation, weights, width, width)
        speeds.append(np.asarray(speed[0]))
    drawn, others = speeds[0], np.mean(speeds[1:], axis=0)
    scale = np.mean(np.sum(drawn**2, -1))

    def relative(prediction):
        return float(np.mean(np.sum((prediction - drawn) ** 2, -1)) / scale)

    return relative(others), relative(np.broadcast_to(drawn.mean(0), drawn.shape))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subjects", type=int, default=6)
    parser.add_argument("--sentences", type=int, default=20)
    parser.add_argument("--vertices", type=int, default=400)
    args = parser.parse_args()
    scratch = tempfile.mkdtemp(prefix="synthbiwi-relations-")
    try:
        root = synthetic.generate_corpus(
            os.path.join(scratch, "corpus"), subjects=args.subjects, sentences=args.sentences,
            vertices=args.vertices, progress=False,
        )  # fmt: skip
        corpus = biwi.scan_corpus(root)
        topology = face_model.build_topology(corpus.num_vertices)
        clips, mouth, lagged, mismatched, prosody, floors = {}, [], [], [], {}, []
        lags = list(range(-5, 10))
        for clip in corpus.clips:
            waveform, rate = soundfile.read(clip.audio_path, dtype="float32")
            vertices = clip_files.load_vertices(clip.vertices_path)
            rotation, _ = clip_files.load_head_pose(clip.head_pose_path)
            n = vertices.shape[0]
            opening = analysis.mouth_opening(
                vertices, topology.upper_lip_vertex, topology.lower_lip_vertex
            )
            mouth.append(np.corrcoef(analysis.frame_rms(waveform, n), opening)[0, 1])
            speed = analysis.head_angular_speed(rotation, corpus.fps)
            envelope = analysis.frame_envelope(waveform, rate, n, corpus.fps)
            lagged.append([analysis.lagged_correlation(envelope, speed, lag) for lag in lags])
            clips[clip.name] = (speed, envelope)
            prosody[clip.name] = analysis.prosody_features(waveform, rate)
            if clip.emotional and len(floors) < 48:
                floors.append(head_speed_floor(waveform, rate, n, corpus.fps, clip.emotion, 4.0))
        names = sorted(clips)
        for index, name in enumerate(names):
            speed, _ = clips[name]
            _, other = clips[names[(index + 7) % len(names)]]
            m = min(len(speed), len(other))
            mismatched.append(
                [analysis.lagged_correlation(other[:m], speed[:m], lag) for lag in lags]
            )
        lagged, mismatched = np.mean(lagged, 0), np.mean(mismatched, 0)
        best = int(np.argmax(lagged))

        features, targets = [], []
        for clip in corpus.clips:
            if clip.emotional:
                mine, reference = prosody[clip.name], prosody[clip.counterpart]
                features.append(np.r_[np.log(mine[0] / reference[0]), mine[1:] - reference[1:]])
                targets.append(clip.emotion)
        x, y = np.array(features), np.array(targets)
        x = (x - x.mean(0)) / x.std(0)
        folds = np.arange(len(x)) % 6
        probe, chance = [], []
        for fold in range(6):
            train, test = folds != fold, folds == fold
            design = np.c_[x[train], np.ones(train.sum())]
            weights = np.linalg.solve(
                design.T @ design + 1e-2 * np.eye(design.shape[1]), design.T @ y[train]
            )
            probe.append(((np.c_[x[test], np.ones(test.sum())] @ weights - y[test]) ** 2).sum(1))
            chance.append(((y[train].mean(0) - y[test]) ** 2).sum(1))
        probe_error, chance_error = np.concatenate(probe).mean(), np.concatenate(chance).mean()
        audible = {
            centred: emotional_take_accuracy(corpus, prosody, per_speaker=centred)
            for centred in (True, False)
        }
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    mouth = np.array(mouth)
    rows = [
        (
            "corpus",
            f"{args.subjects} subjects x {args.sentences} sentences x 2, {args.vertices} vertices",
        ),
        (
            "mouth opening vs RMS energy: mean per-clip r",
            f"{mouth.mean():.3f} ({(mouth > 0).mean():.0%} of clips > 0)",
        ),
        ("head speed vs envelope: best lag (frames), r", f"{lags[best]:+d}, {lagged[best]:.3f}"),
        ("same against another clip's envelope: max abs r", f"{np.abs(mismatched).max():.3f}"),
        (
            "prosody probe MSE vs mean-mixture MSE",
            f"{probe_error:.3f} vs {chance_error:.3f} ({1 - probe_error / chance_error:.0%} lower)",
        ),
    ]
    expected, constant = np.mean(floors, axis=0)
    rows.append(
        (
            "head speed per axis (width 4), relative error left: expectation given speech and emotion vs best constant per clip",
            f"{expected:.3f} vs {constant:.3f} ({len(floors)} emotional clips)",
        )
    )
    for centred, label in ((True, "centred per speaker"), (False, "raw")):
        held_out, seen = audible[centred]
        rows.append(
            (
                f"emotional vs neutral take from one clip's prosody, {label}: accuracy on held-out sentences (training)",
                f"{held_out:.0%} ({seen:.0%})",
            )
        )
    print("| relation | value |")
    print("|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
