"""Animation speed and memory at BIWI size, as `animate` runs it, and prints a table.

    python benchmarks/animate_speed.py [--seconds 10 60 600 3600] [--video-up-to 60]
                                       [--write-up-to 600] [--size 512] [--vertices 23370]
                                       [--encoder-precision float32 bfloat16]

The run is BIWI-sized and random, saved as training leaves a run folder: configs/biwi.py, its
encoder a random wav2vec2-base saved as a local Hugging Face folder (wav2vec2-base's architecture:
768 wide, 12 layers), SDETalk at 23370 vertices, a SynthBIWI face mesh of that size, a checkpoint
of the whole training state. Each length of audio runs in its own process, so that its peak RSS is
its own:

* loading: `TrainedModel.load` of the run folder, as `animate` loads it (config, assets, encoder
  folder, G's parameters from the checkpoint), and the peak RSS after it;
* first window: compiling the encoder and the generator for the window's shape, and running one
  window (animate's later windows, and later samples, reuse the compilation);
* encoder + generator: `animate`'s windows over the whole audio in steady state, each chunk of
  frames dropped where `animate` writes it, and the peak RSS after them; and of that time, the
  encoder's per window, and the rest's (the generator, the log-mel, the crossfade) per window;
* model part: `animate.animate`'s time without the rendering: encoder + generator over the
  audio, window by window, the frames streamed to disk and the npz written, in steady state;
  its peak RSS is the process's peak when the rendering starts. Not for audio longer than
  `--write-up-to` (an hour's npz at BIWI size is 76 GB);
* video part: rendering and encoding the mp4 at `--size` from the streamed frames (audio up to
  `--video-up-to` seconds long; longer ones skip it), timed inside the same `animate` call.

Each length runs once per `--encoder-precision` (animate's: the context encoder's matmul operands,
float32 or bfloat16), in the same run folder.

Real-time factor = seconds of audio per second of work (10x: 10 s of speech in 1 s).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
from biwi_rehearsal import peak_rss_gib  # this process's own peak, not its parent's


def save_random_run(vertices: int, workdir: str) -> None:
    """A run folder as training leaves it, at BIWI size, with random parameters: config.json
    (configs/biwi.py, its encoder a random wav2vec2-base saved as a local Hugging Face folder),
    assets.npz and a checkpoint of the whole training state (G's zero-initialised heads moved, so
    that the face and head move)."""
    import jax
    from biwi_rehearsal import save_random_encoder

    from sdetalk_jax import checkpoint, optim
    from sdetalk_jax.config_files import repository_config
    from sdetalk_jax.data import face_model
    from sdetalk_jax.models.config import SDETalkConfig
    from sdetalk_jax.models.networks import Networks
    from sdetalk_jax.models.wav2vec2.encoder import ContextEncoder
    from sdetalk_jax.train import write_run_metadata

    config = repository_config("biwi")  # the configuration users train
    config.loss.vertex_scale = 1000.0  # its losses in mm of these vertices in metres
    config.model.wav2vec2_checkpoint = os.path.join(workdir, "wav2vec2-base-random")
    save_random_encoder(config.model.wav2vec2_checkpoint)
    config.data.feature_cache = os.path.join(workdir, "cache")
    encoder = ContextEncoder.from_config(config, allow_download=False)
    topology = face_model.build_topology(vertices)
    subjects = ("F2", "F3", "F4", "M3", "M4", "M5")
    rng = np.random.default_rng(0)
    assets = checkpoint.Assets(
        subjects=subjects,
        templates={name: face_model.template_shape(topology, rng) for name in subjects},
        faces=topology.faces,
        lip_vertices=topology.lip_vertices,
        upper_face_vertices=topology.upper_face_vertices,
        fps=25.0,
        emotion_categories=tuple(f"emotion{k}" for k in range(12)),
        encoder_fingerprint=encoder.fingerprint,
    )
    model_config = SDETalkConfig.for_run(
        config, context_dim=encoder.hidden_size, **assets.dimensions
    )
    state = jax.device_get(
        optim.initial_state(Networks.build(model_config), config, jax.random.key(0))
    )
    generator = state["params"]["generator"]
    keys = iter(jax.random.split(jax.random.key(1), len(jax.tree.leaves(generator))))
    state["params"]["generator"] = jax.tree.map(
        lambda x: x + 1e-3 * np.asarray(jax.random.normal(next(keys), x.shape)), generator
    )
    write_run_metadata(config, workdir, assets)
    manager = checkpoint.checkpoint_manager(workdir)
    checkpoint.save_checkpoint(manager, state, {"epoch": 0, "batch": 0})
    manager.wait_until_finished()


def speech_like(seconds: float) -> np.ndarray:
    """Noise shaped into syllables (the model's cost does not depend on what is said)."""
    rng = np.random.default_rng(0)
    samples = int(seconds * 16_000)
    # float32 throughout: for an hour, float64 temporaries (0.46 GB each) would be the peak
    envelope = np.sin(np.arange(samples, dtype=np.float32) * np.float32(2 * np.pi * 4.0 / 16_000))
    waveform = rng.standard_normal(samples, dtype=np.float32)
    waveform *= 0.05 * (1.0 + envelope)
    return waveform


def measure(seconds: float, args) -> dict:
    """One length of audio, in this process: the timings and this process's peak RSS."""
    import soundfile

    from sdetalk_jax import animate, render
    from sdetalk_jax.inference import DEFAULT_WINDOW_S, TrainedModel

    workdir = args.run
    start = time.perf_counter()
    # as `animate` loads a run
    model = TrainedModel.load(workdir, encoder_precision=args.encoder_precision[0])
    loading = time.perf_counter() - start
    loading_rss = peak_rss_gib()
    waveform = speech_like(seconds)
    scratch = tempfile.mkdtemp(prefix="animate-speed-", dir=workdir)
    audio_path = os.path.join(scratch, "speech.wav")
    soundfile.write(audio_path, waveform, 16_000, subtype="FLOAT")
    # Compilation: every window of the audio has one shape (DEFAULT_WINDOW_S, or the whole clip if
    # shorter), so one window's worth of audio compiles all that `animate` runs below.
    start = time.perf_counter()
    window_s = args.window_s or DEFAULT_WINDOW_S
    warm = waveform[: int(min(seconds, window_s) * 16_000)]
    for chunk in model.animation_chunks(warm, subject="F2", key=_key(0), window_s=window_s):
        del chunk  # a view of the window's outputs: not kept through the measurement below
    compilation = time.perf_counter() - start
    row = {
        "seconds": seconds,
        "precision": model.encoder.matmul_operands,
        "loading_s": loading,
        "loading_rss_gib": loading_rss,
        "compilation_s": compilation,
        **streamed_only(model, waveform, window_s),
        "model_s": None,
        "video_s": None,
        "npz_bytes": None,
    }
    if seconds > args.write_up_to:
        shutil.rmtree(scratch)
        return {**row, "model_peak_rss_gib": peak_rss_gib(), "peak_rss_gib": peak_rss_gib()}
    out = os.path.join(scratch, "out")
    video = seconds <= args.video_up_to
    timed = {}
    render_animation = render.render_animation

    def timed_render(*positional, **options):  # the video part, timed inside animate
        timed["rss_before_video_gib"] = peak_rss_gib()
        start = time.perf_counter()
        render_animation(*positional, **options)
        timed["video_s"] = time.perf_counter() - start

    render.render_animation = timed_render
    start = time.perf_counter()
    animate.animate(
        workdir, audio_path, subject="F2", out_dir=out, video=video, size=args.size, model=model,
        progress=False, window_s=window_s,
    )  # fmt: skip
    total = time.perf_counter() - start
    npz_bytes = os.path.getsize(os.path.join(out, "speech_s0.npz"))
    shutil.rmtree(scratch)  # 10 minutes at BIWI size are 12.6 GB of npz
    return {
        **row,
        "model_s": total - timed.get("video_s", 0.0),
        "video_s": timed.get("video_s"),
        "npz_bytes": npz_bytes,
        "model_peak_rss_gib": timed.get("rss_before_video_gib", peak_rss_gib()),
        "peak_rss_gib": peak_rss_gib(),
    }


def streamed_only(model, waveform: np.ndarray, window_s: float) -> dict:
    """Encoder and generator over the whole audio, as `animate` runs them, each chunk of frames
    dropped where `animate` writes it: their own time, and audio whose npz would not fit on the
    disk (an hour at BIWI size is 76 GB)."""
    encode, encoder_seconds = model.encoder.encode, []

    def timed_encode(piece):  # synchronous: it returns the features as numpy
        start = time.perf_counter()
        features = encode(piece)
        encoder_seconds.append(time.perf_counter() - start)
        return features

    model.encoder.encode = timed_encode
    start = time.perf_counter()
    for chunk in model.animation_chunks(waveform, subject="F2", key=_key(0), window_s=window_s):
        del chunk
    compute = time.perf_counter() - start
    model.encoder.encode = encode
    return {
        "compute_s": compute,
        "encoder_s": sum(encoder_seconds),
        "windows": len(encoder_seconds),
        "compute_peak_rss_gib": peak_rss_gib(),
    }


def _key(seed: int):
    import jax

    return jax.random.key(seed)


def main() -> None:
    from sdetalk_jax.inference import ENCODER_PRECISIONS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, nargs="+", default=[10.0, 60.0, 600.0, 3600.0])
    parser.add_argument("--video-up-to", type=float, default=60.0, help="longest audio rendered")
    parser.add_argument(
        "--write-up-to", type=float, default=600.0,
        help="longest audio whose npz is written; longer ones run the model with no output",
    )  # fmt: skip
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument(
        "--window-s", type=float, help="animate's --window-s (default: animate's own)"
    )
    parser.add_argument("--vertices", type=int, default=23370)
    parser.add_argument(
        "--encoder-precision", nargs="+", default=list(ENCODER_PRECISIONS),
        choices=ENCODER_PRECISIONS, help="animate's --encoder-precision, each in turn",
    )  # fmt: skip
    parser.add_argument("--one", type=float, help=argparse.SUPPRESS)  # a child process's length
    parser.add_argument("--run", help=argparse.SUPPRESS)  # the run folder a child loads
    parser.add_argument("--save-run", help=argparse.SUPPRESS)  # where a child saves it
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(measure(args.one, args)))
        return
    if args.save_run:
        save_random_run(args.vertices, args.save_run)
        return
    run = tempfile.mkdtemp(prefix="animate-speed-run-")
    try:
        # in a process of its own, as each measurement, so that this one stays small
        save = [sys.executable, __file__, "--save-run", run, "--vertices", str(args.vertices)]
        subprocess.run(save, check=True, capture_output=True)
        checkpoint_mb = (
            sum(
                os.path.getsize(os.path.join(parent, name))
                for parent, _, names in os.walk(os.path.join(run, "checkpoints"))
                for name in names
            )
            / 1e6
        )
        rows = []
        for precision, seconds in itertools.product(args.encoder_precision, args.seconds):
            command = [
                sys.executable,
                __file__,
                "--one",
                str(seconds),
                "--size",
                str(args.size),
                "--vertices",
                str(args.vertices),
                "--video-up-to",
                str(args.video_up_to),
                "--write-up-to",
                str(args.write_up_to),
                "--run",
                run,
                "--encoder-precision",
                precision,
            ]
            command += ["--window-s", str(args.window_s)] if args.window_s else []
            child = subprocess.run(command, capture_output=True, text=True)
            if child.returncode:  # its own traceback, not just the exit status
                raise SystemExit(f"{seconds:g} s of audio failed:\n{child.stderr[-3000:]}")
            rows.append(json.loads(child.stdout.strip().splitlines()[-1]))
    finally:
        shutil.rmtree(run, ignore_errors=True)
    import jax

    from sdetalk_jax.inference import DEFAULT_WINDOW_S

    print(f"device: {jax.devices()[0].platform}, jax {jax.__version__}, {args.vertices} vertices")
    print(f"run folder loaded: checkpoint of the whole training state, {checkpoint_mb:.0f} MB")
    print(f"windows of {args.window_s or DEFAULT_WINDOW_S:g} s")
    print()
    print(
        "| encoder precision | audio | loading (s) | peak RSS after loading (GiB) "
        "| first window, incl. compilation (s) | encoder + generator (s) | real-time factor "
        "| per window: encoder / the rest (s) | peak RSS (GiB) | with the npz written (s) | real-time factor | npz (MB) "
        "| peak RSS, model part (GiB) | video part (s) | video real-time factor "
        "| peak RSS (GiB) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        seconds, model, video, npz = (
            row["seconds"],
            row["model_s"],
            row["video_s"],
            row["npz_bytes"],
        )
        print(
            f"| {row['precision']} | {seconds:g} s | {row['loading_s']:.1f} "
            f"| {row['loading_rss_gib']:.2f} | {row['compilation_s']:.1f} "
            f"| {row['compute_s']:.1f} | {seconds / row['compute_s']:.1f}x "
            f"| {row['encoder_s'] / row['windows']:.2f} / "
            f"{(row['compute_s'] - row['encoder_s']) / row['windows']:.2f} "
            f"| {row['compute_peak_rss_gib']:.2f} "
            f"| {'not written' if model is None else f'{model:.1f}'} "
            f"| {'' if model is None else f'{seconds / model:.1f}x'} "
            f"| {'' if npz is None else f'{npz / 1e6:.0f}'} "
            f"| {row['model_peak_rss_gib']:.2f} "
            f"| {'skipped' if video is None else f'{video:.1f}'} "
            f"| {'' if video is None else f'{seconds / video:.1f}x'} "
            f"| {row['peak_rss_gib']:.2f} |"
        )


if __name__ == "__main__":
    main()
