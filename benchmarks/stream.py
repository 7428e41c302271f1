"""Streaming animation (`sdetalk_jax.stream`): latency, real-time factor, quality against offline
`animate`, and memory over a long stream; prints Markdown tables.

    python benchmarks/stream.py [--run runs/synthetic] [--lookaheads 0.2 0.5 1.0] [--seconds 60]
                                [--rss-minutes 10] [--biwi-seconds 30] [--skip-biwi]
                                [--skip-quality]

Sizes: SynthBIWI's, the demo's trained run (`--run`: 4000 vertices, its small random encoder), and
BIWI's, a random run as `benchmarks/animate_speed.py` saves it (configs/biwi.py, a random
wav2vec2-base, 23370 vertices). Each look-ahead runs with the default window and hop.

* Latency: the speech is fed in 20 ms chunks at the pace it is spoken, on a clock that the work
  itself advances (a chunk waits while the previous one is still being worked on), so the
  figures are those of a live stream without sleeping through it. Algorithmic latency: the
  look-ahead (plus up to a hop, as frames leave a hop at a time); measured: from a chunk's arrival
  to the last frame it finishes, median and 95th percentile over the chunks that finish frames.
  Real-time factor: seconds of speech per second of work (>= 1 keeps up).
* Quality (SynthBIWI): every clip of test-a (in its speaker's style) and test-b (in the first
  training speaker's), streamed and animated offline with the same seed: mean vertex error and
  LVE (BIWI's convention, mm^2) of the unposed face, streamed against offline and each against the
  ground truth; and the largest frame-to-frame change of the face (mm per frame) and the head
  (deg per frame), streamed and offline.
* Memory: a stream of `--rss-minutes` of speech in a process of its own, its RSS after the first
  minute and at the end, and its peak.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
from animate_speed import save_random_run, speech_like
from biwi_rehearsal import peak_rss_gib, status_gib

CHUNK_S = 0.02


def corpus_speech(run: str, seconds: float) -> np.ndarray:
    """`seconds` of the run's corpus speech at 16 kHz: its clips one after another, repeated."""
    from sdetalk_jax import audio
    from sdetalk_jax.checkpoint import load_run_config

    root = load_run_config(run).data.root
    folder = os.path.join(root, "wav")
    pieces, total = [], 0
    for name in sorted(os.listdir(folder)):
        pieces.append(audio.load_audio(os.path.join(folder, name)))
        total += len(pieces[-1])
        if total >= seconds * audio.SAMPLE_RATE:
            break
    speech = np.concatenate(pieces)
    repeats = int(np.ceil(seconds * audio.SAMPLE_RATE / len(speech)))
    return np.tile(speech, repeats)[: int(seconds * audio.SAMPLE_RATE)]


def live_latency(model, waveform: np.ndarray, lookahead_s: float) -> dict:
    """A stream of `waveform` fed at the pace it is spoken (`CHUNK_S` chunks), on a clock the work
    advances: latency from each chunk's arrival to its last frame, and the real-time factor."""
    import jax

    from sdetalk_jax.stream import FaceStream, StreamSettings

    start = time.perf_counter()
    stream = FaceStream(
        model, subject=model.assets.subjects[0], key=jax.random.key(0),
        settings=StreamSettings(lookahead_s=lookahead_s),
    )  # fmt: skip
    warm_up = time.perf_counter() - start
    size = int(CHUNK_S * 16_000)
    clock, work, latencies = 0.0, 0.0, []
    for first in range(0, len(waveform), size):
        arrival = (first + size) / 16_000  # the chunk has been spoken
        clock = max(clock, arrival)
        began = time.perf_counter()
        frames = stream.feed(waveform[first : first + size], 16_000)
        spent = time.perf_counter() - began
        clock, work = clock + spent, work + spent
        if len(frames["frame"]):
            latencies.append(clock - arrival)
    stream.finish()
    seconds = len(waveform) / 16_000
    return {
        "lookahead_s": lookahead_s, "hop_s": stream.settings.hop_s,
        "window_s": stream.settings.window_s, "warm_up_s": warm_up,
        "median_ms": 1000 * float(np.median(latencies)),
        "p95_ms": 1000 * float(np.percentile(latencies, 95)),
        "realtime_factor": seconds / work, "seconds": seconds,
    }  # fmt: skip


def latency_table(title: str, rows: list[dict]) -> str:
    lines = [
        f"#### {title}",
        "",
        "| look-ahead (s) | window / hop (s) | algorithmic latency (s) | measured: median (ms) "
        "| 95th percentile (ms) | real-time factor | warm-up (s) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['lookahead_s']:g} | {row['window_s']:g} / {row['hop_s']:g} | "
            f"{row['lookahead_s']:g} + up to {row['hop_s']:g} | {row['median_ms']:.0f} | "
            f"{row['p95_ms']:.0f} | {row['realtime_factor']:.2f} | {row['warm_up_s']:.1f} |"
        )
    return "\n".join(lines)


def largest_change(values: np.ndarray, scale: float) -> float:
    values = np.asarray(values, np.float64).reshape(len(values), -1, 3)
    return float(np.linalg.norm(np.diff(values, axis=0), axis=-1).max() * scale)


def largest_turn_deg(rotation: np.ndarray) -> float:
    from sdetalk_jax import metrics

    return float(metrics.rotation_angles_deg(rotation[1:], rotation[:-1]).max())


def clip_quality(model, clip, subject: str, template, lookaheads) -> dict:
    """One clip streamed at each look-ahead and animated offline, on the speaker's own template
    in `subject`'s style: the figures of `quality`."""
    import jax

    from sdetalk_jax import audio, metrics
    from sdetalk_jax.data.clip_files import load_vertices
    from sdetalk_jax.stream import FaceStream, StreamSettings

    waveform = audio.load_audio(clip.audio_path)
    truth = load_vertices(clip.vertices_path)
    key = jax.random.key(0)
    offline = model.animate_waveform(waveform, subject=subject, key=key, template=template)
    lips = model.assets.lip_vertices
    row = {}
    for lookahead in lookaheads:
        stream = FaceStream(model, subject=subject, key=key, template=template,
                            settings=StreamSettings(lookahead_s=lookahead), warm_up=False)  # fmt: skip
        size = int(CHUNK_S * 16_000)
        pieces = [
            stream.feed(waveform[a : a + size], 16_000) for a in range(0, len(waveform), size)
        ]
        pieces.append(stream.finish())
        streamed = {k: np.concatenate([p[k] for p in pieces]) for k in ("expression", "rotation")}
        n = min(len(streamed["expression"]), len(offline["expression"]), len(truth))
        face, reference = streamed["expression"][:n], offline["expression"][:n]
        row[lookahead] = {
            "vs_offline": metrics.mean_vertex_error_mm(face, reference),
            "lve_vs_offline": metrics.lip_vertex_error(face, reference, lips, squared=True),
            "vs_truth": metrics.mean_vertex_error_mm(face, truth[:n]),
            "lve_vs_truth": metrics.lip_vertex_error(face, truth[:n], lips, squared=True),
            "face_step": largest_change(face, metrics.MM),
            "head_step": largest_turn_deg(streamed["rotation"][:n]),
        }
    n = min(len(offline["expression"]), len(truth))
    row["offline"] = {
        "vs_offline": 0.0, "lve_vs_offline": 0.0,
        "vs_truth": metrics.mean_vertex_error_mm(offline["expression"][:n], truth[:n]),
        "lve_vs_truth": metrics.lip_vertex_error(offline["expression"][:n], truth[:n], lips, squared=True),
        "face_step": largest_change(offline["expression"], metrics.MM),
        "head_step": largest_turn_deg(offline["rotation"]),
    }  # fmt: skip
    return row


def quality(run: str, lookaheads) -> str:
    from tqdm import tqdm

    from sdetalk_jax.data.corpus import open_corpus
    from sdetalk_jax.inference import TrainedModel

    model = TrainedModel.load(run)
    corpus = open_corpus(model.config)
    lines = []
    for split in ("test-a", "test-b"):
        clips = corpus.split(split)
        rows = []
        for clip in tqdm(clips, desc=split, unit="clip"):
            subject = (
                clip.subject if clip.subject in model.assets.subjects else model.assets.subjects[0]
            )
            template = corpus.templates[clip.subject]
            rows.append(clip_quality(model, clip, subject, template, lookaheads))
        lines += [
            f"#### {split} ({len(clips)} clips), SynthBIWI size: mean over clips",
            "",
            "| | vertex error vs offline (mm) | LVE vs offline (mm^2) | vertex error vs truth (mm) "
            "| LVE vs truth (mm^2) | largest face step (mm/frame; max over clips) "
            "| largest head step (deg/frame) |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for method in [*lookaheads, "offline"]:
            label = "offline animate" if method == "offline" else f"stream, look-ahead {method:g} s"
            values = {k: [r[method][k] for r in rows] for k in rows[0][method]}
            lines.append(
                f"| {label} | {np.mean(values['vs_offline']):.4f} | "
                f"{np.mean(values['lve_vs_offline']):.3f} | {np.mean(values['vs_truth']):.4f} | "
                f"{np.mean(values['lve_vs_truth']):.2f} | {np.max(values['face_step']):.2f} | "
                f"{np.max(values['head_step']):.3f} |"
            )
        lines.append("")
    return "\n".join(lines)


def rss_child(run: str, minutes: float) -> None:
    """(own process) A stream of `minutes` of speech, frames dropped; prints its RSS as JSON."""
    import jax

    from sdetalk_jax.inference import TrainedModel
    from sdetalk_jax.stream import FaceStream

    model = TrainedModel.load(run)
    stream = FaceStream(model, subject=model.assets.subjects[0], key=jax.random.key(0))
    minute = corpus_speech(run, 60.0) if os.path.exists(os.path.join(run, "config.json")) else None
    size = int(CHUNK_S * 16_000)
    after_first, start = None, time.perf_counter()
    for index in range(int(round(minutes))):
        for first in range(0, len(minute), size):
            stream.feed(minute[first : first + size], 16_000)
        if index == 0:
            after_first = status_gib("VmRSS")
    stream.finish()
    print(json.dumps({"minutes": minutes, "after_first_gib": after_first,
                      "end_gib": status_gib("VmRSS"), "peak_gib": peak_rss_gib(),
                      "seconds": time.perf_counter() - start}))  # fmt: skip


def rss(run: str, minutes: float) -> str:
    done = subprocess.run(
        [sys.executable, __file__, "--rss-child", run, "--rss-minutes", str(minutes)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    row = json.loads(done.stdout.strip().splitlines()[-1])
    return (
        f"#### Memory over a {row['minutes']:g}-minute stream (SynthBIWI size, its own process, "
        f"{row['seconds']:.0f} s of work)\n\n"
        "| RSS after the first minute (GiB) | RSS at the end (GiB) | peak RSS (GiB) |\n"
        "|---:|---:|---:|\n"
        f"| {row['after_first_gib']:.2f} | {row['end_gib']:.2f} | {row['peak_gib']:.2f} |\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default="runs/synthetic", help="a trained SynthBIWI run")
    parser.add_argument("--lookaheads", type=float, nargs="+", default=[0.2, 0.5, 1.0])
    parser.add_argument("--seconds", type=float, default=60.0, help="speech per latency row")
    parser.add_argument("--biwi-seconds", type=float, default=30.0)
    parser.add_argument("--rss-minutes", type=float, default=10.0)
    parser.add_argument("--skip-biwi", action="store_true")
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--rss-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        rss_child(args.rss_child, args.rss_minutes)
        return
    import jax

    from sdetalk_jax.inference import TrainedModel

    print(f"device: {jax.devices()[0].device_kind}, {os.cpu_count()} CPU cores\n")
    model = TrainedModel.load(args.run)
    speech = corpus_speech(args.run, args.seconds)
    rows = [live_latency(model, speech, lookahead) for lookahead in args.lookaheads]
    print(
        latency_table(
            f"SynthBIWI size ({args.run}: {model.assets.templates[model.assets.subjects[0]].shape[0]} vertices)",
            rows,
        ),
        "\n",
    )
    if not args.skip_biwi:
        with tempfile.TemporaryDirectory(prefix="stream-biwi-") as workdir:
            save_random_run(23370, workdir)
            biwi = TrainedModel.load(workdir)
            speech = speech_like(args.biwi_seconds)
            rows = [live_latency(biwi, speech, lookahead) for lookahead in args.lookaheads]
            print(
                latency_table(
                    "BIWI size (random configs/biwi.py run: wav2vec2-base, 23370 vertices)", rows
                ),
                "\n",
            )
            del biwi
    if not args.skip_quality:
        print(quality(args.run, args.lookaheads))
    if args.rss_minutes > 0:
        print(rss(args.run, args.rss_minutes))


if __name__ == "__main__":
    main()
