import os

import numpy as np
import pytest
import soundfile

from sdetalk_jax.data import biwi, writer
from sdetalk_jax.data.__main__ import main as data_main
from sdetalk_jax.data.labels import EMOTION_LABELS_FILE
from sdetalk_jax.data.pipeline import ClipDataset
from sdetalk_jax.data.problems import DataError
from tests.conftest import CATEGORIES, NUM_VERTICES, write_small_corpus


def test_clean_corpus_reads_without_problems(small_corpus, capsys):
    corpus = biwi.scan_corpus(small_corpus)

    assert corpus.errors == []
    assert corpus.num_vertices == NUM_VERTICES
    assert corpus.emotion_categories == CATEGORIES
    assert corpus.fps == 25
    # F2 and M3 train on sentences 1-2 (x2 conditions), validate on 33, test-A on 37; F1 is test-B.
    assert len(corpus.split("train")) == 8
    assert len(corpus.split("val")) == 4
    assert len(corpus.split("test-a")) == 4
    assert {c.name for c in corpus.split("test-b")} == {"F1_e37", "F1_37"}
    clip = corpus.clip("F2_e01")
    assert clip.emotional and clip.counterpart == "F2_01" and clip.head_pose_path is not None

    assert data_main(["check", "--root", small_corpus, "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "test-b" in out and "0 errors" in out and "distinct shapes" in out


def test_splits_are_configurable(small_corpus):
    spec = biwi.SplitSpec.from_config(
        {"train_subjects": ["F1"], "unseen_subjects": ["F2"], "train_sentences": [1, 40]}
    )
    corpus = biwi.scan_corpus(small_corpus, spec)
    assert {c.subject for c in corpus.split("train")} == {"F1"}
    assert {c.name for c in corpus.split("test-b")} == {"F2_e37", "F2_37"}
    with pytest.raises(ValueError, match="unknown split field"):
        biwi.SplitSpec.from_config({"train_subject": ["F1"]})


def _break(root, kind):
    """Damages one file the way `kind` says; returns (path that must be named, message)."""
    wav = os.path.join(root, "wav", "F2_e01.wav")
    npy = os.path.join(root, "vertices_npy", "F2_e01.npy")
    pose = os.path.join(root, "head_pose", "F2_e01.npz")
    frames = np.load(npy).shape[0]
    if kind == "unreadable audio":
        with open(wav, "wb") as handle:
            handle.write(b"garbage, not RIFF")
        return wav, "unreadable audio"
    if kind == "empty audio":
        soundfile.write(wav, np.zeros((0,), np.float32), 16_000)
        return wav, "empty"
    if kind == "short audio":
        soundfile.write(wav, 0.1 * np.ones((16_000 * (frames - 5) // 25,), np.float32), 16_000)
        return wav, "shorter than its"
    if kind == "width":
        np.save(npy, np.zeros((frames, NUM_VERTICES * 3 - 3), np.float32))
        return npy, "does not match the template"
    if kind == "nan":
        vertices = np.load(npy)
        vertices[3, 5] = np.nan
        np.save(npy, vertices)
        return npy, "NaN or Inf"
    if kind == "inf":
        vertices = np.load(npy)
        vertices[0, 0] = np.inf
        np.save(npy, vertices)
        return npy, "NaN or Inf"
    if kind == "no frames":
        np.save(npy, np.zeros((0, NUM_VERTICES * 3), np.float32))
        return npy, "no frames"
    if kind == "text dtype":
        np.save(npy, np.full((frames, NUM_VERTICES * 3), "1.0"))
        return npy, "not numeric"
    if kind == "head pose length":
        writer.write_npz(
            pose, rotation=np.zeros((frames + 3, 3, 3)), translation=np.zeros((frames, 3))
        )
        return pose, "rotation has shape"
    if kind == "missing template":
        name = os.path.join(root, "vertices_npy", "M9_e01.npy")
        np.save(name, np.zeros((10, NUM_VERTICES * 3), np.float32))
        return name, "no template for subject 'M9'"
    raise AssertionError(kind)


BAD_CASES = [
    "unreadable audio",
    "empty audio",
    "short audio",
    "width",
    "nan",
    "inf",
    "no frames",
    "text dtype",
    "head pose length",
    "missing template",
]


@pytest.mark.parametrize("kind", BAD_CASES)
def test_each_bad_clip_is_named_and_refused(small_corpus, capsys, kind):
    path, message = _break(small_corpus, kind)

    corpus = biwi.scan_corpus(small_corpus)

    matching = [p for p in corpus.errors if p.path == path and message in p.message]
    assert matching, [str(p) for p in corpus.problems]
    clip_name = os.path.basename(path).rsplit(".", 1)[0]
    assert clip_name not in {c.name for c in corpus.clips}
    # Only that clip is lost.
    assert len(corpus.clips) == 24 - (kind != "missing template")
    assert data_main(["check", "--root", small_corpus, "--quiet"]) == 1
    assert path in capsys.readouterr().err


def test_emotion_rows_with_negative_or_missing_weights(small_corpus):
    path = os.path.join(small_corpus, EMOTION_LABELS_FILE)
    with open(path) as handle:
        lines = handle.read().splitlines()
    lines[1] = lines[1].split(",")[0] + ",0.5,-0.1,0.6"
    lines[2] = lines[2].split(",")[0] + ",0.5,0.5"
    with open(path, "w") as handle:
        handle.write("\n".join(lines) + "\n")

    corpus = biwi.scan_corpus(small_corpus)

    messages = {p.path: p.message for p in corpus.errors}
    assert "negative weight" in messages[f"{path}:2"]
    assert "row has 2 weights, header has 3" in messages[f"{path}:3"]


def test_missing_folder_or_templates_give_a_pointer(tmp_path):
    with pytest.raises(DataError, match="docs/data.md"):
        biwi.scan_corpus(tmp_path / "nowhere")
    os.makedirs(tmp_path / "empty")
    with pytest.raises(DataError, match="synthetic"):
        biwi.scan_corpus(tmp_path / "empty")


def test_npz_templates_work_too(tmp_path):
    root = os.fspath(tmp_path / "c")
    write_small_corpus(root, as_pickle=False)
    assert biwi.scan_corpus(root).errors == []


def test_example_from_44k_stereo_clip(small_corpus):
    corpus = biwi.scan_corpus(small_corpus)
    clip = corpus.clip("F2_e01")
    seconds = clip.num_frames / 25 + 0.1
    t = np.arange(int(seconds * 44_100)) / 44_100
    tone = 0.3 * np.sin(2 * np.pi * 200 * t)
    soundfile.write(clip.audio_path, np.stack([tone, -tone * 0.5], 1).astype(np.float32), 44_100)

    corpus = biwi.scan_corpus(small_corpus)
    assert corpus.errors == []
    dataset = ClipDataset.from_corpus(corpus, "train", ("F2", "M3"))
    example = dataset.example([c.name for c in dataset.clips].index("F2_e01"))

    n = clip.num_frames
    assert example["vertices"].shape == (n, NUM_VERTICES * 3)
    assert example["mel"].shape == (n, 128)
    assert example["audio"].shape == (n * 640,)
    assert example["rotation"].shape == (n, 3, 3)
    assert example["emotion"].shape == (3,)
    assert example["emotion"].sum() == pytest.approx(1.0)
    assert int(example["subject"]) == 0
    assert bool(example["has_head_pose"]) and bool(example["has_emotion"])


def test_statistics_standardisation_is_the_training_clips_mean_and_spread(small_corpus):
    from sdetalk_jax.models import ops
    from sdetalk_jax.models.networks import statistics_standardisation

    dataset = ClipDataset.from_corpus(biwi.scan_corpus(small_corpus), "train", ("F2", "F5"))
    assert len({c.num_frames for c in dataset.clips}) > 1  # padded to the longest
    centre, scale = statistics_standardisation(dataset)
    rows = []
    for index in range(len(dataset.clips)):
        mel = dataset.log_mel(index)
        rows.append(np.asarray(ops.clip_statistics(mel[None], np.ones((1, len(mel)), bool)))[0])
    np.testing.assert_allclose(centre, np.mean(rows, 0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(scale, np.std(rows, 0), rtol=1e-4, atol=1e-5)
    assert centre.shape == scale.shape == (3 * 128,)


# Corpus-level inputs that are refused with a clear error rather than dropped.


def test_a_template_with_nan_or_another_vertex_count_leaves_its_clips_out(small_corpus, capsys):
    templates = {
        "F2": np.full((NUM_VERTICES, 3), np.nan, np.float32),  # NaN
        "M3": np.zeros((NUM_VERTICES + 5, 3), np.float32),  # another vertex count
        "F1": np.zeros((NUM_VERTICES, 3), np.float32),
    }
    writer.write_templates(small_corpus, templates)
    corpus = biwi.scan_corpus(small_corpus)
    assert {c.subject for c in corpus.clips} == {"F1"}
    messages = [str(p) for p in corpus.errors]
    assert any("template 'F2' contains NaN or Inf; its clips are left out" in m for m in messages)
    assert any(f"template 'M3' has {NUM_VERTICES + 5} vertices" in m for m in messages)
    assert any("unusable template for subject 'F2'" in m for m in messages)
    assert data_main(["check", "--root", small_corpus, "--quiet"]) == 1
    assert "template 'F2' contains NaN" in capsys.readouterr().err


def _rewrite_labels(root, transform):
    path = os.path.join(root, EMOTION_LABELS_FILE)
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(transform(text))
    return path


def test_emotion_table_with_a_byte_order_mark_is_read(small_corpus):
    _rewrite_labels(small_corpus, lambda text: "\ufeff" + text)
    corpus = biwi.scan_corpus(small_corpus)
    assert corpus.emotion_categories == ("happy", "sad", "angry")
    assert all(c.emotion is not None for c in corpus.clips) and not corpus.problems


@pytest.mark.parametrize(
    "header", ["name,happy,sad,angry", "clip", "clip,happy,,angry", "clip,happy,happy,sad"]
)
def test_emotion_table_with_a_bad_header_is_an_error(small_corpus, header):
    path = _rewrite_labels(small_corpus, lambda text: header + text[text.index("\n") :])
    with pytest.raises(DataError, match="header") as info:
        biwi.scan_corpus(small_corpus)
    assert path in str(info.value)


def test_emotion_rows_repeated_or_in_conflict(small_corpus):
    lines = []

    def duplicate(text):
        lines.extend(text.splitlines())
        row = next(line for line in lines if line.startswith("F2_e01,"))
        other = next(line for line in lines if line.startswith("M3_e01,"))
        conflicting = "M3_e01," + ",".join(reversed(other.split(",")[1:]))
        return text + row + "\n" + conflicting + "\n"

    path = _rewrite_labels(small_corpus, duplicate)
    corpus = biwi.scan_corpus(small_corpus)
    names = {c.name for c in corpus.clips}
    assert "F2_e01" in names  # an identical repeat is harmless: a warning
    assert any(
        "'F2_e01' repeats line" in p.message for p in corpus.problems if p.severity == "warning"
    )
    assert "M3_e01" not in names  # two different labels: left out until one is removed
    conflict = [p for p in corpus.errors if "'M3_e01' has other weights" in p.message]
    assert conflict and conflict[0].path.startswith(path + ":")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not a readable JSON file"),
        ('{"fps": 0}', "'fps' must be a positive number"),
        ('{"fps": -25}', "'fps' must be a positive number"),
        ('{"fps": "25"}', "'fps' must be a positive number"),
        ("[25]", "expected a JSON object"),
    ],
)
def test_corpus_json_that_cannot_be_used_is_an_error(small_corpus, content, message, capsys):
    path = os.path.join(small_corpus, "corpus.json")
    with open(path, "w") as handle:
        handle.write(content)
    with pytest.raises(DataError, match=message) as info:
        biwi.scan_corpus(small_corpus)
    assert path in str(info.value)
    assert data_main(["check", "--root", small_corpus, "--quiet"]) == 1
    assert capsys.readouterr().err.startswith(f"error: {path}: ")
