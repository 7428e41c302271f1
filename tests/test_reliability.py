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


def test_a_complete_video_is_written(tmp_path):
    target = tmp_path / "clip.mp4"
    render.write_video(os.fspath(target), _frames(10), fps=25, size=64)
    assert render.probe_video(os.fspath(target))["frames"] == 10
