"""`python -m sdetalk_jax.data.import_biwi` on a small release-shaped fixture the test builds itself:
.obj templates, .tar archives of .vl frames (both vertex-count widths), wav audio for one speaker and
.flv videos with audio for the other; geometry round trip, bad archives named, reruns that change
nothing, and the main job training on the result."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import soundfile

from sdetalk_jax.data import biwi
from sdetalk_jax.data import import_biwi as importer

ROWS, COLUMNS = 5, 8  # a grid mesh: 40 vertices
SENTENCES = (
    "01",
    "02",
    "33",
)  # training (1-32) and validation (33-36) sentences of configs/biwi.py
SPEAKERS = {"F2": 4, "M3": 8}  # bytes of each speaker's vertex-count header ('ulong')
CATEGORIES = ("happiness", "sadness", "anger")


def grid_template(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A face-sized (about 200 mm) grid in millimetres, and its triangles."""
    rng = np.random.default_rng(seed)
    y, x = np.meshgrid(np.linspace(0, 200, ROWS), np.linspace(0, 150, COLUMNS), indexing="ij")
    z = 30 * np.sin(x / 40) + rng.normal(0, 2, x.shape)
    vertices = np.stack([x, y, z], -1).reshape(-1, 3) + np.array([10.0, 500.0, 900.0])
    triangles = []
    for r in range(ROWS - 1):
        for c in range(COLUMNS - 1):
            a, b, d, e = (
                r * COLUMNS + c,
                r * COLUMNS + c + 1,
                (r + 1) * COLUMNS + c,
                (r + 1) * COLUMNS + c + 1,
            )
            triangles += [(a, b, e), (a, e, d)]
    return vertices, np.asarray(triangles)


def write_obj(path, vertices, triangles):
    lines = [f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in vertices]
    lines += [f"f {a + 1}/{a + 1} {b + 1}/{b + 1} {c + 1}/{c + 1}" for a, b, c in triangles]
    path.write_text("# template\n" + "\n".join(lines) + "\n")


def vl_bytes(frame: np.ndarray, header: int) -> bytes:
    return len(frame).to_bytes(header, "little") + frame.astype("<f4").tobytes()


def write_tar(path, frames, header):
    with tarfile.open(path, "w") as tar:
        for index, frame in enumerate(frames):
            data = vl_bytes(frame, header)
            member = tarfile.TarInfo(f"frame_{index + 1:03d}.vl")  # frame_010 after frame_009
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))


def speech(seconds: float, pitch: float, rate: int = 44_100) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)  # syllables, for the alignment to follow
    tone = 0.3 * envelope * np.sin(2 * np.pi * pitch * t)
    return np.stack([tone, 0.8 * tone], 1).astype(np.float32)  # stereo, as recorded


def write_video(path, wav_path, seconds, *, with_audio=True):
    import imageio_ffmpeg

    command = [
        imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-f", "lavfi",
        "-i", f"color=c=gray:s=64x64:d={seconds:.3f}:r=25",
    ]  # fmt: skip
    if with_audio:
        command += ["-i", os.fspath(wav_path), "-c:a", "aac", "-shortest"]
    subprocess.run([*command, "-c:v", "flv1", os.fspath(path)], check=True)


def build_release(root, *, damaged: bool = False) -> dict:
    """The fixture; returns {clip: frames [N, V, 3] in release coordinates} and the templates."""
    truth = {"frames": {}, "templates": {}}
    rng = np.random.default_rng(0)
    for number, (speaker, header) in enumerate(SPEAKERS.items()):
        template, triangles = grid_template(number)
        truth["templates"][speaker] = template
        (root / "rigid_scans").mkdir(parents=True, exist_ok=True)
        write_obj(root / "rigid_scans" / f"{speaker}.obj", template, triangles)
        faces = root / "faces" / speaker
        faces.mkdir(parents=True)
        neutral_33 = None
        for sentence in SENTENCES:
            for seq in (f"e{sentence}", sentence):
                count = int(rng.integers(28, 40))
                motion = rng.normal(0, 1.5, (count, 1, 3)) + rng.normal(
                    0, 0.3, (count, len(template), 3)
                )
                frames = template[None] + motion
                seconds = count / 25
                audio = speech(
                    seconds, 180 + 20 * int(sentence) + (0 if seq.startswith("e") else 7)
                )
                if sentence == "33":  # identical takes: the alignment must be the identity
                    neutral_33 = neutral_33 or (frames, audio)
                    frames, audio = neutral_33
                write_tar(faces / f"{seq}.tar", frames, header)
                (faces / f"{seq}.tgz").write_bytes(b"undocumented")
                truth["frames"][f"{speaker}_{seq}"] = frames
                wav = root / "audio" / speaker / f"{seq}.wav"
                wav.parent.mkdir(parents=True, exist_ok=True)
                soundfile.write(wav, audio, 44_100)
                if speaker == "M3":  # this speaker's audio only in its videos
                    video = root / "videos" / speaker / f"{seq}.flv"
                    video.parent.mkdir(parents=True, exist_ok=True)
                    write_video(
                        video, wav, len(audio) / 44_100, with_audio=not (damaged and seq == "02")
                    )
                    wav.unlink()
    if damaged:
        (root / "faces" / "F2" / "e02.tar").write_bytes(b"not a tar archive at all")
        frames = truth["frames"]["F2_02"]
        write_tar(root / "faces" / "F2" / "02.tar", frames[:, :-1], 4)  # a vertex short
        with tarfile.open(root / "faces" / "M3" / "e02.tar", "w") as tar:
            data = vl_bytes(truth["frames"]["M3_e02"][0], 8)[:-5]  # truncated
            member = tarfile.TarInfo("frame_001.vl")
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    regions = root.parent / "regions"
    regions.mkdir(exist_ok=True)
    (regions / "lve.txt").write_text("\n".join(str(i) for i in range(8)) + "\n")
    (regions / "fdd.txt").write_text(" ".join(str(i) for i in range(16, 32)) + "\n")
    rows = ["clip," + ",".join(CATEGORIES)]
    for clip in truth["frames"]:
        weights = rng.dirichlet(np.ones(3)) if "_e" in clip else np.ones(3) / 3
        rows.append(clip + "," + ",".join(f"{w:.4f}" for w in weights))
    (root.parent / "emotions.csv").write_text("\n".join(rows) + "\n")
    return truth


def expected_metres(frames, template):
    rotate = np.diag([1.0, -1.0, -1.0])
    return (frames @ rotate - (template @ rotate).mean(0)) * 0.001


def run_import(release, out, *extra):
    return importer.main(
        ["--release", os.fspath(release), "--out", os.fspath(out), "--quiet",
         "--regions", os.fspath(release.parent / "regions"),
         "--emotions", os.fspath(release.parent / "emotions.csv"), *extra]
    )  # fmt: skip


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    base = tmp_path_factory.mktemp("biwi")
    truth = build_release(base / "release")
    out = base / "corpus"
    code = run_import(base / "release", out)
    return base, truth, out, code


def test_the_release_becomes_a_corpus_that_data_check_passes(imported, capsys):
    from sdetalk_jax.data.__main__ import main as data_main

    _, truth, out, code = imported
    assert code == 0
    assert data_main(["check", "--root", os.fspath(out), "--quiet"]) == 0
    corpus = biwi.scan_corpus(out)
    assert {c.name for c in corpus.clips} == set(truth["frames"])
    assert corpus.emotion_categories == CATEGORIES
    assert corpus.lip_vertices is not None and corpus.upper_face_vertices is not None
    assert all(
        c.head_pose_path is None for c in corpus.clips
    )  # not in the release's documented part


def test_geometry_round_trips_through_the_documented_transform(imported):
    _, truth, out, _ = imported
    templates = biwi.load_templates(os.fspath(out / "templates.npz"))
    for speaker, template in truth["templates"].items():
        np.testing.assert_allclose(
            templates[speaker], expected_metres(template, template), atol=1e-6
        )
    for clip, frames in truth["frames"].items():
        stored = np.load(out / "vertices_npy" / f"{clip}.npy")
        assert stored.shape == (len(frames), frames.shape[1] * 3)
        expected = expected_metres(frames, truth["templates"][clip.split("_")[0]])
        np.testing.assert_allclose(stored.reshape(frames.shape), expected, atol=1e-6)
    info = biwi.read_fps(os.fspath(out)), (out / "corpus.json").read_text()
    assert info[0] == 25.0 and '"units": "m"' in info[1] and '"source_unit": "mm"' in info[1]


def test_audio_comes_from_the_wav_or_the_video(imported):
    _, truth, out, _ = imported
    for clip, frames in truth["frames"].items():
        samples, rate = soundfile.read(out / "wav" / f"{clip}.wav")
        assert rate == 44_100 and samples.ndim == 2
        # The video's AAC track may add a frame of padding; the mesh and the sound still agree.
        assert abs(len(samples) / rate - len(frames) / 25) < 0.05, clip


def test_neutral_takes_are_time_warped_onto_the_emotional_ones(imported):
    _, truth, out, _ = imported
    for speaker in SPEAKERS:
        for sentence in SENTENCES:
            aligned = np.load(out / "neutral_vertices_npy" / f"{speaker}_e{sentence}.npy")
            assert (
                aligned.shape == np.load(out / "vertices_npy" / f"{speaker}_e{sentence}.npy").shape
            )
        # Identical takes: the warp is the identity, the aligned track is the neutral take itself.
        same = np.load(out / "neutral_vertices_npy" / f"{speaker}_e33.npy")
        np.testing.assert_allclose(
            same, np.load(out / "vertices_npy" / f"{speaker}_33.npy"), atol=1e-6
        )


def test_a_second_run_changes_nothing(imported, capsys):
    base, _, out, _ = imported
    before = {
        os.path.relpath(os.path.join(d, f), out): os.stat(os.path.join(d, f)).st_mtime_ns
        for d, _, files in os.walk(out) for f in files
    }  # fmt: skip
    capsys.readouterr()
    assert run_import(base / "release", out) == 0
    assert "imported 0 clips, 12 already there, 0 problems" in capsys.readouterr().out
    after = {
        os.path.relpath(os.path.join(d, f), out): os.stat(os.path.join(d, f)).st_mtime_ns
        for d, _, files in os.walk(out) for f in files
    }  # fmt: skip
    assert after == before


def test_codetalker_units_are_centred_and_of_unit_area(imported, tmp_path):
    base, truth, _, _ = imported
    out = tmp_path / "unitless"
    assert run_import(base / "release", out, "--units", "codetalker") == 0
    _, triangles = grid_template(0)
    stored = np.load(out / "vertices_npy" / "F2_e01.npy").reshape(-1, ROWS * COLUMNS, 3)
    for frame in stored[:3]:
        np.testing.assert_allclose(frame.mean(0), 0.0, atol=1e-6)
        assert importer.surface_area(frame.astype(np.float64), triangles) == pytest.approx(
            1.0, rel=1e-5
        )
    assert '"units": "unitless"' in (out / "corpus.json").read_text()
    # Evaluation reports such a corpus in its own unit, never as millimetres.
    from sdetalk_jax import evaluate

    assert biwi.read_units(os.fspath(out)) == "unitless"
    units = evaluate.metric_units("unitless")
    assert units["mean_vertex_error"] == "unitless" and units["lve_squared"] == "unitless^2"
    assert "mm" not in " ".join(units.values())
    in_mm = {"mean_vertex_error": 4.0, "lve_squared": 9.0, "head_rotation_error": 2.0}
    assert evaluate.in_corpus_units(in_mm, "unitless") == pytest.approx(
        {"mean_vertex_error": 4e-3, "lve_squared": 9e-6, "head_rotation_error": 2.0}
    )
    assert evaluate.in_corpus_units(in_mm, "m") == in_mm


def template_alone_expression_loss(root) -> float:
    """L_exp of the template alone over every clip, in the loss units that training gives the
    corpus (`loss.vertex_scale` = 0 in configs/biwi.py: read from corpus.json), on each frame's
    shape about its own centre (CodeTalker's units drop the frame's translation)."""
    from sdetalk_jax.config_files import repository_config
    from sdetalk_jax.data.corpus import with_loss_scale

    config = repository_config("biwi")
    config.data.root = os.fspath(root)
    scale = with_loss_scale(config).loss.vertex_scale
    templates = biwi.load_templates(os.fspath(root / "templates.npz"))
    errors = []
    for path in sorted((root / "vertices_npy").iterdir()):
        frames = np.load(path).reshape(-1, ROWS * COLUMNS, 3)
        template = templates[path.name.split("_")[0]].reshape(1, -1, 3)
        shapes = (frames - frames.mean(1, keepdims=True)) - (template - template.mean(1))
        errors.append(np.square(shapes * scale).ravel())
    return float(np.concatenate(errors).mean())


def test_metres_and_codetalker_units_give_the_losses_one_scale(imported, tmp_path):
    """The same release imported in metres and in CodeTalker's unitless frames: training reads
    each corpus's unit from its corpus.json, so that the quadratic terms, and with them the
    balance of the loss weights, agree (they would differ by the square of the unit)."""
    base, _, metric, _ = imported
    unitless = tmp_path / "unitless"
    assert run_import(base / "release", unitless, "--units", "codetalker") == 0
    in_metres = template_alone_expression_loss(metric)
    in_codetalker_units = template_alone_expression_loss(unitless)
    assert in_codetalker_units == pytest.approx(in_metres, rel=0.05)


def test_a_unitless_corpus_without_its_metres_is_refused_by_name(tmp_path):
    (tmp_path / "corpus.json").write_text('{"fps": 25, "units": "unitless"}')
    with pytest.raises(biwi.DataError, match="corpus.json: unitless vertices without"):
        biwi.read_mm_per_unit(os.fspath(tmp_path))
    (tmp_path / "corpus.json").write_text('{"fps": 25, "units": "feet"}')
    with pytest.raises(biwi.DataError, match="'units' must be 'm' or 'unitless'"):
        biwi.read_mm_per_unit(os.fspath(tmp_path))


def test_bad_archives_are_named_and_the_rest_imported(tmp_path, capsys):
    build_release(tmp_path / "release", damaged=True)
    out = tmp_path / "corpus"
    assert run_import(tmp_path / "release", out) == 1
    err = capsys.readouterr().err
    assert "faces/F2/e02.tar: not a readable .tar archive" in err
    assert "faces/F2/02.tar:frame_001.vl: 39 vertices, the template has 40" in err
    assert "faces/M3/e02.tar:frame_001.vl:" in err and "truncated" in err
    assert "videos/M3/02.flv: no audio could be extracted" in err
    written = {name[:-4] for name in os.listdir(out / "vertices_npy")}
    assert written == {f"{s}_{q}" for s in SPEAKERS for q in ("e01", "01", "e33", "33")}
    assert not [n for d, _, files in os.walk(out) for n in files if n.startswith(".tmp-")]
    from sdetalk_jax.data.__main__ import main as data_main

    assert data_main(["check", "--root", os.fspath(out), "--quiet"]) == 0


@pytest.mark.slow
def test_the_main_job_trains_on_the_imported_corpus(imported, tmp_path):
    """configs/biwi.py on the import, with a small random wav2vec 2.0 saved as a local folder."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")

    _, _, out, _ = imported
    encoder = tmp_path / "wav2vec2"
    torch.manual_seed(0)
    config = transformers.Wav2Vec2Config(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
        do_stable_layer_norm=False, feat_extract_norm="group", conv_bias=False,
    )  # fmt: skip
    transformers.Wav2Vec2Model(config).save_pretrained(encoder)
    workdir = tmp_path / "run"
    result = subprocess.run(
        [
            sys.executable, "-m", "sdetalk_jax.train", "--config", "configs/biwi.py",
            "--workdir", os.fspath(workdir), f"--config.data.root={out}",
            f"--config.model.wav2vec2_checkpoint={encoder}",
            f"--config.data.feature_cache={tmp_path / 'cache'}", "--config.train.epochs=3",
            "--config.train.max_steps=3", "--config.train.progress=False",
            "--config.train.global_batch=4",  # the import's 8 training clips: 2 steps an epoch
            "--config.train.emotion_prototype_steps=20",  # the fit runs; its length is not tested
        ],
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    with open(workdir / "metrics.jsonl") as handle:
        assert sum('"train/total"' in line for line in handle) == 3
    (saved,) = os.listdir(workdir / "emotion_prototypes")  # emotion control's, for the checkpoint
    with np.load(workdir / "emotion_prototypes" / saved) as prototypes:
        assert prototypes["gains"].shape == prototypes["categories"].shape
        assert np.all(np.isfinite(prototypes["gains"]))


def test_alignment_follows_a_neutral_take_that_starts_late(tmp_path):
    """The neutral take is the emotional one after 0.4 s of silence: warped onto the emotional
    take, its frames must land back on the emotional frames they repeat, not a frame-by-frame copy."""
    rate, fps, frames = 16_000, 25, 60
    t = np.arange(int(frames / fps * rate)) / rate
    chirp = (0.3 * np.sin(2 * np.pi * (200 + 400 * t) * t)).astype(np.float32)  # distinct per frame
    delay = 10  # frames of silence
    rng = np.random.default_rng(0)
    emotional = rng.normal(size=(frames, 12)).astype(np.float32)
    neutral = np.concatenate([np.repeat(emotional[:1], delay, 0), emotional])
    for clip, vertices, audio in (
        ("F2_e01", emotional, chirp),
        ("F2_01", neutral, np.concatenate([np.zeros(delay * rate // fps, np.float32), chirp])),
    ):
        paths = importer.clip_paths(os.fspath(tmp_path), clip)
        os.makedirs(os.path.dirname(paths["vertices"]), exist_ok=True)
        os.makedirs(os.path.dirname(paths["wav"]), exist_ok=True)
        np.save(paths["vertices"], vertices)
        soundfile.write(paths["wav"], audio, rate)
    cost = importer.align_neutral(os.fspath(tmp_path), "F2_e01", "F2_01")
    aligned = np.load(importer.clip_paths(os.fspath(tmp_path), "F2_e01")["neutral"])
    assert aligned.shape == emotional.shape and cost is not None
    warped_error = np.abs(aligned - emotional).mean()
    copied_error = np.abs(neutral[:frames] - emotional).mean()
    assert warped_error < 0.2 * copied_error, (warped_error, copied_error)
