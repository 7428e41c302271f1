"""Failure modes of docs/reliability.md that need no training run: outputs that respect the umask,
a video cut short by ffmpeg, refusals to overwrite, bad corpus metadata, audio of every kind."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from sdetalk_jax import fileio, render


@pytest.fixture
def umask():
    previous = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(previous)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize(("mask", "expected"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_outputs_respect_the_umask(tmp_path, umask, mask, expected):
    umask(mask)
    fileio.write_bytes(os.fspath(tmp_path / "a.bin"), b"x")
    fileio.write_npz(os.fspath(tmp_path / "b.npz"), x=np.zeros(3))
    fileio.write_json(os.fspath(tmp_path / "c.json"), {"x": 1})
    with fileio.atomic_path(os.fspath(tmp_path / "d.mp4")) as temporary:
        with open(temporary, "wb") as handle:
            handle.write(b"video")
    for name in ("a.bin", "b.npz", "c.json", "d.mp4"):
        assert mode(tmp_path / name) == expected, name


def test_a_failed_atomic_write_leaves_nothing(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("the user's own file")
    with pytest.raises(RuntimeError), fileio.atomic_output(os.fspath(target)) as handle:
        handle.write(b"half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "the user's own file"
    assert sorted(os.listdir(tmp_path)) == ["out.json"]


def _frames(count: int, size: int = 64):
    for index in range(count):
        yield np.full((size, size, 3), index * 20 % 255, np.uint8)


def test_video_cut_short_by_ffmpeg_is_an_error_and_leaves_nothing(tmp_path, monkeypatch):
    import imageio_ffmpeg

    real = imageio_ffmpeg.write_frames

    def stops_after_three_frames(path, size, **kwargs):
        # ffmpeg ends by itself after 3 frames, with exit status 0: a truncated video.
        kwargs["output_params"] = [*(kwargs.get("output_params") or []), "-frames:v", "3"]
        return real(path, size, **kwargs)

    monkeypatch.setattr(imageio_ffmpeg, "write_frames", stops_after_three_frames)
    target = tmp_path / "clip.mp4"
    with pytest.raises(render.RenderError, match="clip.mp4"):
        render.write_video(os.fspath(target), _frames(40), fps=25, size=64)
    assert os.listdir(tmp_path) == []


def test_video_when_ffmpeg_dies_is_an_error_and_leaves_nothing(tmp_path, monkeypatch):
    import imageio_ffmpeg

    real = imageio_ffmpeg.write_frames

    def broken_encoder(path, size, **kwargs):
        kwargs["codec"] = "no-such-codec"  # ffmpeg exits at once with an error
        return real(path, size, **kwargs)

    monkeypatch.setattr(imageio_ffmpeg, "write_frames", broken_encoder)
    with pytest.raises(render.RenderError, match="ffmpeg"):
        render.write_video(os.fspath(tmp_path / "clip.mp4"), _frames(40), fps=25, size=64)
    assert os.listdir(tmp_path) == []


def test_a_complete_video_is_written_without_forking_beside_jax(tmp_path):
    """ffmpeg is spawned, not forked from a process whose JAX runs threads (JAX warns of a
    fork: "os.fork() was called ... JAX is multithreaded")."""
    import warnings

    import jax.numpy as jnp

    jnp.zeros(1).block_until_ready()  # JAX's threads are running
    target = tmp_path / "clip.mp4"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        render.write_video(os.fspath(target), _frames(10), fps=25, size=64)
        assert render.probe_video(os.fspath(target))["frames"] == 10
    assert not [w for w in caught if "fork" in str(w.message)]


def test_train_without_its_encoder_says_so_in_one_line_and_creates_nothing(
    small_corpus, tmp_path, capsys
):
    from sdetalk_jax import train

    workdir = tmp_path / "run"
    missing = tmp_path / "no-such-encoder"
    code = train.main(
        [
            "--config", "configs/biwi.py", "--workdir", os.fspath(workdir),
            f"--config.data.root={small_corpus}", f"--config.model.wav2vec2_checkpoint={missing}",
            "--config.train.progress=False",
        ]
    )  # fmt: skip
    assert code == 1
    assert capsys.readouterr().err == (
        f"error: {missing}: not a checkpoint folder (needs config.json and weights)\n"
    )
    assert not workdir.exists()


def test_train_with_an_unreachable_hub_name_says_so_in_one_line(small_corpus, tmp_path):
    """configs/biwi.py names the encoder on the hub; without it on disk (and offline) the user
    gets one line, no chained tracebacks of the hub client."""
    import subprocess
    import sys

    workdir = tmp_path / "run"
    result = subprocess.run(
        [
            sys.executable, "-m", "sdetalk_jax.train", "--config", "configs/biwi.py",
            "--workdir", os.fspath(workdir), f"--config.data.root={small_corpus}",
            "--config.train.progress=False",
        ],
        capture_output=True, text=True, check=False,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": os.fspath(tmp_path / "hf")},
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.startswith("error: facebook/wav2vec2-base-960h: not a local folder")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert not workdir.exists()


def test_frame_folders_a_killed_animate_left_are_removed_by_the_next_and_no_others(tmp_path):
    """A process killed outright leaves its `.tmp-frames-HOST-PID-*` folder (as large as the npz);
    the next `FrameFiles` in that folder removes it once that process is gone, and leaves a
    living process's, another host's and anything else alone."""
    import subprocess
    import sys

    out = tmp_path / "out"
    out.mkdir()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    abandoned = out / (fileio.frames_folder_prefix(gone.pid) + "x1")
    living = out / (fileio.frames_folder_prefix(os.getpid()) + "x2")
    elsewhere = out / f"{fileio.FRAMES_PREFIX}another-host-{gone.pid}-x3"
    for folder in (abandoned, living, elsewhere):
        folder.mkdir()
        (folder / "vertices.npy").write_bytes(b"frames")
    (out / "a.npz").write_bytes(b"a user's output")
    with fileio.FrameFiles(os.fspath(out), 4) as frames:
        assert os.path.basename(frames.folder).startswith(fileio.frames_folder_prefix())
    assert sorted(os.listdir(out)) == sorted(["a.npz", living.name, elsewhere.name])


def test_frames_written_in_chunks_read_back_and_go_into_an_npz_unchanged(tmp_path):
    """`FrameFiles` (animate's constant-memory path): chunks appended to .npy files, read back
    by slices, and copied into an npz that loads as the arrays themselves; too many or too few
    frames are refused, and the temporary folder is gone afterwards."""
    rng = np.random.default_rng(0)
    vertices = rng.normal(size=(50, 7, 3)).astype(np.float32)
    emotion = rng.random((50, 4)).astype(np.float32)
    out = os.fspath(tmp_path / "out")
    with fileio.FrameFiles(out, 50) as frames:
        for start in range(0, 50, 16):
            frames.append(
                {"vertices": vertices[start : start + 16], "emotion": emotion[start : start + 16]}
            )
        with pytest.raises(ValueError, match="more than the 50 frames"):
            frames.append({"emotion": emotion[:1]})
        stored = frames.arrays()
        assert len(stored["vertices"]) == 50
        np.testing.assert_array_equal(stored["vertices"][10:23], vertices[10:23])
        np.testing.assert_array_equal(np.asarray(stored["emotion"]), emotion)
        fileio.write_npz(os.path.join(out, "a.npz"), fps=np.float64(25.0), **stored)
        folder = frames.folder
    assert not os.path.exists(folder)
    with np.load(os.path.join(out, "a.npz")) as loaded:
        np.testing.assert_array_equal(loaded["vertices"], vertices)
        np.testing.assert_array_equal(loaded["emotion"], emotion)
        assert float(loaded["fps"]) == 25.0
    with fileio.FrameFiles(out, 50) as frames:
        frames.append({"vertices": vertices[:20]})
        with pytest.raises(ValueError, match="frames missing"):
            frames.arrays()
        with pytest.raises(ValueError, match="a chunk of float64"):
            frames.append({"vertices": vertices[20:30].astype(np.float64)})
    with pytest.raises(RuntimeError, match="rendering failed"):  # a failure inside the block
        with fileio.FrameFiles(out, 50) as frames:
            frames.append({"vertices": vertices[:20]})
            raise RuntimeError("rendering failed")
    assert os.listdir(out) == ["a.npz"]


def test_inference_restores_part_of_a_checkpoint_and_refuses_one_that_does_not_fit(tmp_path):
    """`restore_run_state` reads only the leaves asked for (inference: the step and G), and names
    a leaf the checkpoint lacks or holds at another shape instead of handing back the request
    itself or the saved shape (what orbax's partial restore does, without a word)."""
    import jax

    from sdetalk_jax import checkpoint

    generator = {"dense": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3)}}
    state = {
        "step": np.int32(7),
        "params": {"generator": generator, "discriminator": {"bias": np.ones(4, np.float32)}},
    }
    manager = checkpoint.checkpoint_manager(os.fspath(tmp_path))
    checkpoint.save_checkpoint(manager, state, {"epoch": 1, "batch": 0})
    manager.wait_until_finished()

    def asking(kernel_shape=(2, 3), extra=False):
        layers = {"dense": {"kernel": jax.ShapeDtypeStruct(kernel_shape, np.float32)}}
        if extra:
            layers["head"] = {"bias": jax.ShapeDtypeStruct((3,), np.float32)}
        return {"step": jax.ShapeDtypeStruct((), np.int32), "params": {"generator": layers}}

    part = checkpoint.restore_run_state(os.fspath(tmp_path), asking(), "latest")
    assert int(part["step"]) == 7 and set(part["params"]) == {"generator"}
    np.testing.assert_array_equal(
        part["params"]["generator"]["dense"]["kernel"], generator["dense"]["kernel"]
    )
    with pytest.raises(
        checkpoint.RunError, match=r"\['head'\]\['bias'\].* is not in the checkpoint"
    ):
        checkpoint.restore_run_state(os.fspath(tmp_path), asking(extra=True), "latest")
    with pytest.raises(
        checkpoint.RunError, match=r"float32\[2, 3\] in the checkpoint.*float32\[3, 3\]"
    ):
        checkpoint.restore_run_state(os.fspath(tmp_path), asking(kernel_shape=(3, 3)), "latest")


def test_assets_that_differ_only_in_their_colours_are_the_same_run():
    """The mesh's colours are display only: a repainted corpus is no reason to refuse a resume,
    while other templates are."""
    import dataclasses

    import numpy as np

    from sdetalk_jax.checkpoint import Assets

    assets = Assets(
        subjects=("F2",), templates={"F2": np.zeros((4, 3), np.float32)},
        faces=np.zeros((1, 3), np.int32), lip_vertices=np.arange(2), upper_face_vertices=np.arange(1),
        fps=25.0, emotion_categories=("anger",),
    )  # fmt: skip
    repainted = dataclasses.replace(assets, vertex_colors=np.full((4, 3), 0.5, np.float32))
    assert assets.differences(repainted) == []
    moved = dataclasses.replace(assets, templates={"F2": np.ones((4, 3), np.float32)})
    assert assets.differences(moved) == ["templates"]
