import filecmp
import json
import os

import numpy as np
import pytest
import soundfile

from sdetalk_jax.data import biwi, espeak, face_model
from sdetalk_jax.data import synthetic as synth
from sdetalk_jax.data.__main__ import main as data_main
from sdetalk_jax.data.clip_files import load_head_pose, load_vertices
from sdetalk_jax.data.synthetic import analysis
from sdetalk_jax.data.synthetic.visemes import viseme_class


def generate(root, **kwargs):
    arguments = dict(subjects=2, sentences=2, vertices=200, seed=0, workers=2, progress=False)
    arguments.update(kwargs)
    return synth.generate_corpus(os.fspath(root), **arguments)


def all_files(root):
    return sorted(
        os.path.relpath(os.path.join(d, f), root) for d, _, files in os.walk(root) for f in files
    )


def test_same_arguments_give_byte_identical_files(tmp_path):
    first, second = generate(tmp_path / "a"), generate(tmp_path / "b", workers=1)
    names = all_files(first)
    assert names == all_files(second)
    assert "vertices_npy/F2_e01.npy" in names and "neutral_vertices_npy/F2_e01.npy" in names
    match, mismatch, errors = filecmp.cmpfiles(first, second, names, shallow=False)
    assert mismatch == [] and errors == []


def test_generated_corpus_passes_the_check(tmp_path, capsys):
    root = generate(tmp_path / "c", subjects=7, sentences=1)
    assert data_main(["check", "--root", root, "--quiet"]) == 0
    corpus = biwi.scan_corpus(root)
    assert corpus.num_vertices == 200
    assert len(corpus.emotion_categories) == 12
    assert corpus.subjects == sorted(synth.BIWI_SUBJECTS[:7])
    clip = corpus.clip("F2_e01")
    assert clip.neutral_vertices_path and clip.head_pose_path and clip.counterpart == "F2_01"
    # The neutral recording is labelled uniform; its emotional twin is a real mixture.
    np.testing.assert_allclose(corpus.clip("F2_01").emotion, np.full(12, 1 / 12), atol=1e-6)
    assert corpus.clip("F2_e01").emotion.max() > 1.5 / 12
    faces = np.load(os.path.join(root, "mesh", "faces.npy"))
    assert faces.shape[1] == 3 and faces.max() < 200


def test_existing_folders_are_never_clobbered(tmp_path):
    precious = tmp_path / "mine"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a SynthBIWI corpus"):
        generate(precious)
    assert (precious / "notes.txt").read_text() == "keep me"

    root = generate(tmp_path / "corpus")
    stamp = os.stat(os.path.join(root, "corpus.json")).st_mtime_ns
    generate(tmp_path / "corpus")  # same parameters: kept as it is
    assert os.stat(os.path.join(root, "corpus.json")).st_mtime_ns == stamp
    with pytest.raises(FileExistsError, match="--force"):
        generate(tmp_path / "corpus", sentences=1)
    generate(tmp_path / "corpus", sentences=1, force=True)
    assert not os.path.exists(os.path.join(root, "wav", "F2_e02.wav"))


def test_espeak_gives_speech_and_ordered_phonemes():
    utterance = espeak.synthesize("Move the boxes.", voice="en+m3")
    assert utterance.sample_rate > 8000
    assert np.abs(utterance.waveform).max() > 0.05
    starts = [event.start_s for event in utterance.phonemes]
    assert starts == sorted(starts) and len(starts) >= 8
    assert starts[-1] <= len(utterance.waveform) / utterance.sample_rate
    classes = {viseme_class(event.phoneme) for event in utterance.phonemes}
    assert "bilabial" in classes  # the m of "move" and the b of "boxes"
    with pytest.raises(espeak.SpeechError, match="no voice"):
        espeak.synthesize("hello", voice="xx+nonexistent")


@pytest.mark.parametrize(
    "phoneme, expected",
    [
        ("p", "bilabial"),
        ("'aU", "open"),
        ("_:", "rest"),
        ("dZ", "postalveolar"),
        (",u:", "rounded"),
    ],
)
def test_viseme_classes(phoneme, expected):
    assert viseme_class(phoneme) == expected


def test_preview_is_written(tmp_path):
    from sdetalk_jax.data.synthetic.preview import write_preview

    root = generate(tmp_path / "p", subjects=1, sentences=1)
    path = write_preview(root)
    with open(path, "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------------------------------
# The relations are really in the data.


@pytest.fixture(scope="module")
def relation_corpus(tmp_path_factory):
    root = generate(tmp_path_factory.mktemp("rel") / "c", subjects=6, sentences=14, vertices=200)
    corpus = biwi.scan_corpus(root)
    topology = face_model.build_topology(corpus.num_vertices)
    clips = {}
    for clip in corpus.clips:
        waveform, rate = soundfile.read(clip.audio_path, dtype="float32")
        rotation, _ = load_head_pose(clip.head_pose_path)
        clips[clip.name] = dict(
            clip=clip,
            waveform=waveform,
            rate=rate,
            vertices=load_vertices(clip.vertices_path),
            rotation=rotation,
        )
    return corpus, topology, clips


@pytest.mark.slow
def test_mouth_opening_follows_speech_energy(relation_corpus):
    _, topology, clips = relation_corpus
    correlations = []
    for item in clips.values():
        n = item["vertices"].shape[0]
        energy = analysis.frame_rms(item["waveform"], n)
        opening = analysis.mouth_opening(
            item["vertices"], topology.upper_lip_vertex, topology.lower_lip_vertex
        )
        correlations.append(np.corrcoef(energy, opening)[0, 1])
    correlations = np.array(correlations)
    assert correlations.mean() > 0.25
    assert (correlations > 0).mean() > 0.9


@pytest.mark.slow
def test_in_every_frame_the_lips_and_the_lids_meet_but_never_pass_and_most_clips_blink(
    relation_corpus,
):
    _, topology, clips = relation_corpus
    lips, lids = face_model.cut_edges(topology, "mouth"), face_model.cut_edges(topology, "eyes")
    blinked = []
    for item in clips.values():
        vertices = item["vertices"].reshape(item["vertices"].shape[0], -1, 3)
        tolerance = 1e-6 * np.abs(vertices).max()
        for upper, lower in (lips, lids):
            gap = vertices[:, upper, 1] - vertices[:, lower, 1]
            assert gap.min() > -tolerance, (item["clip"].name, gap.min())
        lid_gap = vertices[:, lids[0], 1] - vertices[:, lids[1], 1]
        blinked.append((lid_gap.max(axis=1) < 10 * tolerance).any())
    assert np.mean(blinked) > 0.4  # a blink shuts both eyes in most clips


@pytest.mark.slow
def test_head_speed_follows_the_envelope_with_a_lag(relation_corpus):
    corpus, _, clips = relation_corpus
    names = sorted(clips)
    lags = range(-5, 10)
    matched, mismatched = [], []
    for index, name in enumerate(names):
        item = clips[name]
        n = item["vertices"].shape[0]
        speed = analysis.head_angular_speed(item["rotation"], corpus.fps)
        envelope = analysis.frame_envelope(item["waveform"], item["rate"], n, corpus.fps)
        matched.append([analysis.lagged_correlation(envelope, speed, lag) for lag in lags])
        # The same head motion against another clip's speech: no relation expected.
        other = clips[names[(index + 7) % len(names)]]
        other_envelope = analysis.frame_envelope(
            other["waveform"], other["rate"], other["vertices"].shape[0], corpus.fps
        )
        m = min(n, len(other_envelope))
        mismatched.append(
            [analysis.lagged_correlation(other_envelope[:m], speed[:m], lag) for lag in lags]
        )
    matched, mismatched = np.mean(matched, 0), np.mean(mismatched, 0)
    best = int(np.argmax(matched))
    assert matched[best] > 0.4
    assert list(lags)[best] > 0  # the head moves after the stressed syllable
    assert np.abs(mismatched).max() < 0.15


def _voiced_rms(waveform: np.ndarray) -> float:
    loud = waveform[np.abs(waveform) > 0.01 * np.abs(waveform).max()]
    return float(np.sqrt(np.mean(loud**2)))


@pytest.mark.slow
def test_emotional_takes_are_faster_and_louder_than_neutral_ones(relation_corpus):
    """Arousal is not centred (docs/data.md): an emotional take can be heard as emotional without
    its neutral take, as in acted corpora. Paired over the same sentence and voice."""
    _, _, clips = relation_corpus
    duration_ratio, loudness_db = [], []
    for item in clips.values():
        if not item["clip"].emotional:
            continue
        neutral = clips[item["clip"].counterpart]
        duration_ratio.append(np.log(len(item["waveform"]) / len(neutral["waveform"])))
        loudness_db.append(
            20 * np.log10(_voiced_rms(item["waveform"]) / _voiced_rms(neutral["waveform"]))
        )

    def t_statistic(values):
        values = np.asarray(values)
        return values.mean() / values.std() * np.sqrt(len(values))

    assert t_statistic(duration_ratio) < -3, duration_ratio
    assert t_statistic(loudness_db) > 3, loudness_db


@pytest.mark.slow
def test_linear_probe_on_prosody_recovers_the_emotion_mixture(relation_corpus):
    corpus, _, clips = relation_corpus
    features, targets = [], []
    for _, item in sorted(clips.items()):
        clip = item["clip"]
        if not clip.emotional:
            continue
        neutral = clips[clip.counterpart]
        mine = analysis.prosody_features(item["waveform"], item["rate"])
        reference = analysis.prosody_features(neutral["waveform"], neutral["rate"])
        # Relative to the same sentence spoken neutrally by the same voice: removes text and speaker.
        features.append(np.r_[np.log(mine[0] / reference[0]), mine[1:] - reference[1:]])
        targets.append(clip.emotion)
    x, y = np.array(features), np.array(targets)
    x = (x - x.mean(0)) / x.std(0)
    folds = np.arange(len(x)) % 6
    probe_error, chance_error = [], []
    for fold in range(6):
        train, test = folds != fold, folds == fold
        design = np.c_[x[train], np.ones(train.sum())]
        weights = np.linalg.solve(
            design.T @ design + 1e-2 * np.eye(design.shape[1]), design.T @ y[train]
        )
        predicted = np.c_[x[test], np.ones(test.sum())] @ weights
        probe_error.append(((predicted - y[test]) ** 2).sum(1))
        chance_error.append(((y[train].mean(0) - y[test]) ** 2).sum(1))
    probe_error, chance_error = (
        np.concatenate(probe_error).mean(),
        np.concatenate(chance_error).mean(),
    )
    assert probe_error < 0.85 * chance_error, (probe_error, chance_error)


def test_two_seeds_give_different_head_motion_for_the_same_clip(tmp_path):
    first = generate(tmp_path / "s0", subjects=1, sentences=1, seed=0)
    second = generate(tmp_path / "s1", subjects=1, sentences=1, seed=1)
    for name in ("F2_e01", "F2_01"):
        a, _ = load_head_pose(os.path.join(first, "head_pose", f"{name}.npz"))
        b, _ = load_head_pose(os.path.join(second, "head_pose", f"{name}.npz"))
        m = min(len(a), len(b))
        assert np.abs(a[:m] - b[:m]).max() > 1e-2


def test_a_corpus_of_another_format_is_kept_but_reported(tmp_path, capsys):
    from sdetalk_jax.data import corpus

    parameters = dict(subjects=2, sentences=3, vertices=120, seed=0)
    root = tmp_path / "old"
    root.mkdir()
    info = {"generator": synth.GENERATOR, "parameters": synth.corpus_parameters(**parameters)}
    for version, reported in ((synth.FORMAT_VERSION - 1, True), (synth.FORMAT_VERSION, False)):
        (root / "corpus.json").write_text(json.dumps({**info, "format_version": version}))
        corpus.warn_if_other_synthetic(os.fspath(root), parameters)
        output = capsys.readouterr().out
        assert ("--force" in output and f"'format_version': {version}" in output) == reported
    assert sorted(os.listdir(root)) == ["corpus.json"]  # nothing replaced or removed


def test_a_generation_that_fails_midway_leaves_the_old_corpus_and_no_staging(tmp_path, monkeypatch):
    root = generate(tmp_path / "corpus")
    stamp = os.stat(os.path.join(root, "corpus.json")).st_mtime_ns
    started = []

    def failing_jobs(jobs, workers, progress):
        started.append(len(os.listdir(tmp_path)))  # the staging folder exists by now
        raise RuntimeError("the machine ran out of disk")

    monkeypatch.setattr(synth, "_run_jobs", failing_jobs)
    with pytest.raises(RuntimeError, match="out of disk"):
        synth.generate_corpus(
            root, subjects=2, sentences=2, vertices=200, seed=1, workers=1, progress=False,
            force=True,
        )  # fmt: skip
    assert started == [2]  # the corpus and its staging folder, side by side
    assert sorted(os.listdir(tmp_path)) == ["corpus"]  # no staging folder left
    assert os.stat(os.path.join(root, "corpus.json")).st_mtime_ns == stamp  # untouched


def test_the_eyes_blink_as_a_break_between_words_begins_and_not_more_often_than_every_1_5_s():
    from sdetalk_jax.data.synthetic import blink_track

    fps = 25
    envelope = np.zeros(8 * fps)
    envelope[:fps] = 0.8  # speech, then a break at 1.0 s
    envelope[int(1.5 * fps) : 2 * fps] = 0.8  # a break again at 2.0 s: too soon after the first
    envelope[int(2.5 * fps) : int(4.0 * fps)] = 0.8  # and at 4.0 s
    envelope[int(3.0 * fps)] = 0.05  # a dip of one frame within speech is not a break
    envelope[int(5.6 * fps) : int(5.8 * fps)] = 0.8  # 0.2 s of speech is too little before one
    envelope[6 * fps : int(7.9 * fps)] = 0.8  # a break at 7.9 s leaves no time for a blink
    track = blink_track(envelope, fps)
    shut = np.nonzero(track > 0.99)[0] / fps
    assert track.min() == 0 and track.max() == pytest.approx(1.0)
    assert np.allclose(shut, [1.12, 4.12], atol=0.05), shut
    assert np.all(track[:fps] == 0)
    assert np.all(track[int(4.5 * fps) :] == 0)  # nothing after 0.2 s of speech or at the end
