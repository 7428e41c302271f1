"""Streaming animation: speech in as it is spoken, face frames out at a fixed latency.

    python -m sdetalk_jax.stream --workdir runs/synthetic --subject F2 --audio in.wav --out out.npz --jsonl -
    arecord -q -f S16_LE -r 16000 -c 1 | python -m sdetalk_jax.stream --workdir runs/synthetic \\
        --subject F2 --audio - --raw-rate 16000 --jsonl frames.jsonl

`FaceStream` takes audio in chunks of any size at any sample rate (`feed`) and hands back each face
frame (posed vertices, the unposed faces, the head pose and the emotion mixture as it is inferred)
once the audio `lookahead_s` past it has arrived. SDETalk's networks are bidirectional, so this is a
sliding window: every `hop_s` of audio, the last `window_s` seconds (ending with the newest audio)
go through the context encoder and the generator of the same `TrainedModel` that `animate` uses,
and the window's frames up to `lookahead_s` before its end are handed on, crossfaded over the hop
with the previous window's, so that nothing jumps at a window's edge. A frame leaves between
`lookahead_s` and `lookahead_s + hop_s` after its own audio, plus the window's compute time. The
emotion is inferred over each window (or fixed by the request, as in `animate --emotion`). Frame
t's noise is drawn from fold_in(key, t), the same in every window that holds it. Work and memory
per hop are one window's, whatever the length of the stream, and the frames are the same however
the audio was cut into chunks (docs/animate.md#streaming).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from sdetalk_jax import audio, cli
from sdetalk_jax.fileio import FrameFiles, write_npz
from sdetalk_jax.inference import TrainedModel, check_head_scale, finished_frames

# Measured by benchmarks/stream.py (docs/animate.md#streaming): at 0.5 s a frame's whole delay stays
# under 0.8 s, and the hop of 0.2 s keeps up at SynthBIWI size on 2 CPU cores (2.6x real time).
DEFAULT_LOOKAHEAD_S = 0.5
DEFAULT_WINDOW_S = 4.0
DEFAULT_HOP_S = 0.2
FRAME_KEYS = ("vertices", "expression", "neutral", "rotation", "translation", "emotion")


class StreamError(ValueError):
    """Audio a stream cannot take, or settings it cannot run with; the message says which."""


@dataclasses.dataclass(frozen=True)
class StreamSettings:
    lookahead_s: float = DEFAULT_LOOKAHEAD_S  # audio past a frame heard before it is handed on
    window_s: float = DEFAULT_WINDOW_S  # audio each window hears: its past and its look-ahead
    hop_s: float = DEFAULT_HOP_S  # audio between windows

    def frames(self, fps: float) -> tuple[int, int, int]:
        """(look-ahead, window, hop) in face frames at `fps`; refuses settings that cannot run."""
        values = {"lookahead_s": self.lookahead_s, "window_s": self.window_s, "hop_s": self.hop_s}
        for name, value in values.items():
            if not (np.isfinite(value) and value >= 0):
                raise StreamError(f"{name} must be a number of seconds >= 0, not {value}")
        lookahead, window, hop = (int(round(value * fps)) for value in values.values())
        if hop < 1:
            raise StreamError(f"hop_s must be at least one frame ({1 / fps:g} s), not {self.hop_s}")
        if window < lookahead + hop + 1:
            raise StreamError(
                f"window_s {self.window_s} must hold the look-ahead ({self.lookahead_s} s), a hop "
                f"({self.hop_s} s) and a frame of the past: at least "
                f"{(lookahead + hop + 1) / fps:g} s"
            )
        return lookahead, window, hop


def frame_noise(key: jax.Array, start, *, count: int, width: int) -> jax.Array:
    """[count, width] unit Gaussian noise of frames start .. start + count - 1, frame t's row drawn
    from fold_in(key, t): every window that holds a frame gives it the same noise."""
    frames = start + jnp.arange(count)
    return jax.vmap(lambda t: jax.random.normal(jax.random.fold_in(key, t), (width,)))(frames)


def mono_float(samples, sample_rate, received: int, first_rate: int | None) -> np.ndarray:
    """A chunk as float32 mono [n]: [n] or [n, channels] floats in [-1, 1], or integer PCM
    (scaled by its type's range). Refuses NaN or Inf, other shapes and a changed sample rate,
    naming where in the stream (`received` input samples before the chunk) it happened."""
    where = f"at input sample {received}"
    if first_rate is not None and sample_rate != first_rate:
        raise StreamError(
            f"sample rate changed mid-stream {where}: {first_rate} Hz before, {sample_rate} Hz "
            "now; resample the audio or start a new stream"
        )
    if not (isinstance(sample_rate, (int, np.integer)) and sample_rate > 0):
        raise StreamError(f"sample rate must be a positive integer (Hz), not {sample_rate!r}")
    chunk = np.asarray(samples)
    if chunk.ndim not in (1, 2):
        raise StreamError(f"a chunk {where} has shape {chunk.shape}: expected [n] or [n, channels]")
    if np.issubdtype(chunk.dtype, np.signedinteger):
        chunk = chunk / float(np.iinfo(chunk.dtype).max + 1)
    elif not np.issubdtype(chunk.dtype, np.floating):
        raise StreamError(f"a chunk {where} holds {chunk.dtype} samples: expected floats or PCM")
    chunk = chunk.astype(np.float32, copy=False)
    if chunk.ndim == 2:
        chunk = chunk.mean(axis=1, dtype=np.float32)
    if not np.all(np.isfinite(chunk)):
        bad = int(np.flatnonzero(~np.isfinite(chunk))[0])
        raise StreamError(
            f"a chunk {where} holds NaN or Inf samples (the first at input sample "
            f"{received + bad}, {(received + bad) / sample_rate:.3f} s)"
        )
    return chunk


class FaceStream:
    """One stream of speech animated as it arrives (the module's docstring says how).

    `feed(samples, sample_rate)` and `finish()` return the frames they finish, as a dict of the
    keys of `TrainedModel.animate_waveform` (rows [n, ...]) and `frame` [n], the frames' indices
    (frame t shows t / fps s into the stream); n may be 0."""

    def __init__(
        self,
        model: TrainedModel,
        *,
        subject: str,
        key: jax.Array,
        settings: StreamSettings = StreamSettings(),
        emotion=None,
        template: np.ndarray | None = None,
        head_scale: float = 1.0,
        warm_up: bool = True,
    ):
        check_head_scale(head_scale)
        self.model, self.key, self.head_scale = model, key, head_scale
        self.fps = model.assets.fps
        self.lookahead, self.window, self.hop = settings.frames(self.fps)
        self.settings = settings
        self.samples_per_frame = audio.samples_per_frame(self.fps)
        self._subjects = np.array([model.subject_index(subject)])
        self._template = model.template_for(subject, template)
        self._steering = model.emotion_inputs(emotion)
        width = model.networks.config.hidden
        self._noise = jax.jit(functools.partial(frame_noise, count=self.window, width=width))
        self._rate: int | None = None
        self._resampler = None
        self._received = 0  # input samples so far, at the input's rate
        self._audio = np.zeros(0, np.float32)  # the 16 kHz audio still needed
        self._audio_start = 0  # its first sample's index in the stream
        self._next_end = self.hop  # the stream's frame count at which the next window runs
        self._emitted = 0  # frames handed on
        self._previous: tuple[int, dict] | None = None  # the last window's start and frames
        self._finished = False
        if warm_up:
            self.warm_up()

    @property
    def frames_emitted(self) -> int:
        return self._emitted

    def warm_up(self) -> None:
        """Compiles what the windows run (the generator for the window's shape, the encoder for
        each length the windows' audio is padded to) on silence, so that no compilation falls
        inside the stream."""
        from sdetalk_jax.models.wav2vec2.encoder import LENGTH_QUANTUM

        seconds = -(-self.window * self.samples_per_frame // LENGTH_QUANTUM)
        for quanta in range(1, seconds + 1):
            real = min(self.window, quanta * LENGTH_QUANTUM // self.samples_per_frame)
            self._window_frames(np.zeros(real * self.samples_per_frame, np.float32), 0, real)

    def feed(self, samples, sample_rate: int) -> dict[str, np.ndarray]:
        """Takes the next chunk of audio ([n] or [n, channels], floats or integer PCM, any rate,
        the same for the whole stream); returns the frames it finishes."""
        if self._finished:
            raise StreamError("the stream has ended (finish was called): start a new FaceStream")
        chunk = mono_float(samples, sample_rate, self._received, self._rate)
        self._rate = self._rate or int(sample_rate)
        self._received += len(chunk)
        self._append(self._resampled(chunk, last=False))
        return self._run_due()

    def finish(self) -> dict[str, np.ndarray]:
        """Ends the stream: returns its last frames, those whose look-ahead would have come after
        the end, from a window ending with the stream (none if no whole frame of audio came)."""
        if self._finished:
            return self._frames([])
        if self._rate is not None:
            self._append(self._resampled(np.zeros(0, np.float32), last=True))
        pieces = [self._run_due()]
        total = (self._audio_start + len(self._audio)) // self.samples_per_frame
        if total > self._emitted:
            pieces.append(self._update(total, final=True))
        self._finished = True
        self._audio = np.zeros(0, np.float32)
        self._previous = None
        return self._frames(pieces)

    def _resampled(self, chunk: np.ndarray, last: bool) -> np.ndarray:
        if self._rate == audio.SAMPLE_RATE:
            return chunk
        if self._resampler is None:
            import soxr  # librosa's own resampler, here as a stream: chunking changes nothing

            self._resampler = soxr.ResampleStream(
                self._rate, audio.SAMPLE_RATE, 1, dtype="float32", quality="HQ"
            )
        return self._resampler.resample_chunk(chunk, last=last)

    def _append(self, samples: np.ndarray) -> None:
        if len(samples):
            self._audio = np.concatenate([self._audio, samples])

    def _run_due(self) -> dict[str, np.ndarray]:
        """The windows that the audio so far completes, one per hop, in order."""
        available = (self._audio_start + len(self._audio)) // self.samples_per_frame
        pieces = []
        while available >= self._next_end:
            pieces.append(self._update(self._next_end, final=False))
            self._next_end += self.hop
        return self._frames(pieces)

    def _window_frames(self, piece: np.ndarray, start: int, real: int) -> dict[str, np.ndarray]:
        """The generator's frames [real, ...] of a window of `real` frames of audio from frame
        `start`, padded to the window's length with masked frames."""
        batch = self.model.window_batch(
            piece, real, self._subjects, self._template, padded_to=self.window
        )
        noise = self._noise(self.key, start)[None]
        outputs = self.model.window_outputs({**batch, **self._steering}, noise)
        return {name: np.asarray(value[:real]) for name, value in outputs.items()}

    def _update(self, end: int, final: bool) -> dict[str, np.ndarray]:
        """Runs the window ending at frame `end` and hands on its frames up to the look-ahead
        (up to `end` at the stream's end)."""
        start = max(0, end - self.window)
        first = start * self.samples_per_frame - self._audio_start
        piece = self._audio[first : first + (end - start) * self.samples_per_frame]
        outputs = self._window_frames(piece, start, end - start)
        frames = self._blended(outputs, start, end if final else end - self.lookahead)
        self._previous = (start, outputs)
        # Later windows start at end + hop - window or later, and the last one at end - window.
        keep_from = max(0, end - self.window) * self.samples_per_frame
        self._audio = self._audio[keep_from - self._audio_start :]
        self._audio_start = keep_from
        return frames

    def _blended(self, outputs: dict, start: int, until: int) -> dict[str, np.ndarray]:
        """Frames [emitted, until) of this window (from frame `start`), ramped in over those the
        previous window also gave, from the previous window's towards this one's."""
        first = self._emitted
        if until <= first:
            return {}
        assert first >= start, (first, start)
        frames = {
            name: value[first - start : until - start].copy() for name, value in outputs.items()
        }
        if self._previous is not None:
            previous_start, previous = self._previous
            covered = min(until, previous_start + len(previous["rotation"])) - first
            if covered > 0:
                ramp = (np.arange(covered, dtype=np.float32) + 1) / np.float32(covered + 1)
                offset = first - previous_start
                for name, value in frames.items():
                    weight = ramp.reshape((-1,) + (1,) * (value.ndim - 1))
                    before = previous[name][offset : offset + covered]
                    value[:covered] = (1 - weight) * before + weight * value[:covered]
        self._emitted = until
        frames = finished_frames(frames, self.head_scale)
        frames["frame"] = np.arange(first, until)
        return frames

    def _frames(self, pieces: list[dict]) -> dict[str, np.ndarray]:
        """The pieces' frames joined (empty arrays of the right rows when there are none)."""
        pieces = [piece for piece in pieces if piece]
        if len(pieces) == 1:
            return pieces[0]
        if pieces:
            return {name: np.concatenate([p[name] for p in pieces]) for name in pieces[0]}
        return self._empty()

    def _empty(self) -> dict[str, np.ndarray]:
        vertices = len(self._template) // 3
        categories = len(self.model.assets.emotion_categories)
        rows = {"vertices": (vertices, 3), "expression": (vertices, 3), "neutral": (vertices, 3),
                "rotation": (3, 3), "translation": (3,), "emotion": (categories,)}  # fmt: skip
        empty = {name: np.zeros((0, *shape), np.float32) for name, shape in rows.items()}
        return {**empty, "frame": np.zeros(0, np.int64)}


# ---------------------------------------------------------------------------------------------
# The command line


def file_chunks(path: str, chunk_s: float):
    """(samples [n, channels] float32, rate) of a wav file, `chunk_s` seconds at a time."""
    import soundfile

    if not os.path.exists(path):
        raise audio.AudioError(f"{path}: audio file not found")
    try:
        with soundfile.SoundFile(path) as source:
            rate = source.samplerate
            size = max(1, int(round(chunk_s * rate)))
            for block in source.blocks(blocksize=size, dtype="float32", always_2d=True):
                yield block, rate
    except RuntimeError as error:  # soundfile's LibsndfileError
        raise audio.AudioError(f"{path}: unreadable audio ({error})") from error


RAW_FORMATS = {"s16le": np.dtype("<i2"), "f32le": np.dtype("<f4")}


def raw_chunks(handle, rate: int, sample_format: str, channels: int, chunk_s: float):
    """(samples [n, channels], rate) of raw PCM read from a binary handle (stdin) as it comes."""
    dtype = RAW_FORMATS[sample_format]
    frame_bytes = dtype.itemsize * channels
    wanted = max(1, int(round(chunk_s * rate))) * frame_bytes
    pending = b""
    while True:
        data = handle.read1(wanted) if hasattr(handle, "read1") else handle.read(wanted)
        if not data:
            return
        pending += data
        usable = len(pending) - len(pending) % frame_bytes
        if usable:
            samples = np.frombuffer(pending[:usable], dtype).reshape(-1, channels)
            pending = pending[usable:]
            yield samples, rate


def paced(chunks, realtime: bool):
    """The chunks, each with the wall time at which it has arrived: with `realtime`, held back
    until the audio's own clock reaches the chunk's end (a file read as if it were spoken)."""
    start, heard = time.perf_counter(), 0
    for samples, rate in chunks:
        heard += len(samples)
        if realtime:
            arrival = start + heard / rate
            time.sleep(max(0.0, arrival - time.perf_counter()))
        yield samples, rate, time.perf_counter()


def frame_records(frames: dict, categories, with_expression: bool):
    """One JSON-ready dict per frame: its index and time, the head pose, the emotion mixture
    (and the unposed face, flattened, in the run's units, with `with_expression`)."""
    for row, index in enumerate(frames["frame"]):
        record = {
            "frame": int(index),
            "rotation": np.round(frames["rotation"][row], 6).tolist(),
            "translation": np.round(frames["translation"][row], 7).tolist(),
            "emotion": dict(
                zip(categories, np.round(frames["emotion"][row], 5).tolist(), strict=True)
            ),
        }
        if with_expression:
            record["expression"] = np.round(frames["expression"][row].reshape(-1), 7).tolist()
        yield record


def argument_parser():
    parser = cli.parser("python -m sdetalk_jax.stream", __doc__)
    parser.add_argument("--workdir", required=True, help="training run folder")
    parser.add_argument("--subject", required=True, help="training subject whose style to speak in")
    parser.add_argument("--audio", required=True, help="a wav file, or - for raw PCM on stdin")
    parser.add_argument("--raw-rate", type=int, help="stdin's sample rate (Hz), with --audio -")
    parser.add_argument("--raw-format", default="s16le", choices=sorted(RAW_FORMATS))
    parser.add_argument("--raw-channels", type=int, default=1)
    parser.add_argument("--out", help="npz of every frame, written when the stream ends")
    parser.add_argument("--jsonl", help="one JSON line per frame as it is ready (- for stdout)")
    parser.add_argument(
        "--jsonl-expression", action="store_true", help="also each frame's unposed face"
    )
    parser.add_argument(
        "--fast", action="store_true", help="read a wav as fast as possible, not in real time"
    )
    parser.add_argument("--chunk-s", type=float, default=0.02, help="audio read at a time (s)")
    parser.add_argument("--lookahead-s", type=float, default=DEFAULT_LOOKAHEAD_S)
    parser.add_argument("--window-s", type=float, default=DEFAULT_WINDOW_S)
    parser.add_argument("--hop-s", type=float, default=DEFAULT_HOP_S)
    parser.add_argument("--seed", type=int, default=0, help="noise key: the head motion drawn")
    parser.add_argument("--head-scale", type=float, default=1.0)
    parser.add_argument("--emotion", default="inferred", help="as animate's --emotion")
    parser.add_argument("--emotion-intensity", type=float, default=1.0)
    parser.add_argument("--checkpoint", default="best", choices=("best", "latest"))
    parser.add_argument("--force", action="store_true", help="replace existing outputs")
    parser.add_argument(
        "--serve", type=int, metavar="PORT",
        help="also show the face live in the three.js page on this localhost port (0: any free "
        "one; make viewer-setup first); the stream starts when the page connects",
    )  # fmt: skip
    parser.add_argument("--quiet", action="store_true", help="no summary on stderr")
    return parser


def checked_arguments(parser, args) -> None:
    """Usage errors (exit 2) before anything is loaded."""
    if not (args.out or args.jsonl or args.serve is not None):
        parser.error("nothing to write or show: give --out, --jsonl or --serve")
    if args.audio == "-" and not (args.raw_rate and args.raw_rate > 0):
        parser.error("--audio - (raw PCM on stdin) needs --raw-rate")
    if args.raw_channels < 1:
        parser.error("--raw-channels must be at least 1")
    if not args.chunk_s > 0:
        parser.error("--chunk-s must be positive")
    if args.out and not args.out.endswith(".npz"):
        parser.error("--out names an .npz file")


@dataclasses.dataclass
class StreamOutputs:
    """Where the frames go as they come: the JSON lines, the npz's frame files, and the time
    from each chunk's arrival to the frames it finished."""

    jsonl: object
    frame_files: FrameFiles | None
    categories: tuple
    with_expression: bool
    channel: object = None  # viewer.FrameChannel of the live page
    latencies: list = dataclasses.field(default_factory=list)
    frames: int = 0

    def take(self, frames: dict, arrival: float) -> None:
        if not len(frames["frame"]):
            return
        if self.frame_files is not None:
            self.frame_files.append({name: frames[name] for name in FRAME_KEYS})
        if self.jsonl is not None:
            for record in frame_records(frames, self.categories, self.with_expression):
                self.jsonl.write(json.dumps(record, separators=(",", ":")) + "\n")
            self.jsonl.flush()
        if self.channel is not None:
            for record in frame_records(frames, self.categories, with_expression=True):
                self.channel.publish(json.dumps(record, separators=(",", ":")))
        self.frames += len(frames["frame"])
        self.latencies.append(time.perf_counter() - arrival)


def run_stream(args, stream: FaceStream, chunks, outputs: StreamOutputs) -> float:
    """Feeds the chunks (Ctrl-C ends the stream as its end would) and returns the wall time."""
    start = time.perf_counter()
    try:
        for samples, rate, arrival in paced(chunks, not args.fast and args.audio != "-"):
            try:
                outputs.take(stream.feed(samples, rate), arrival)
            except StreamError as error:
                raise StreamError(f"{args.audio}: {error}") from None
    except KeyboardInterrupt:
        print("interrupted: ending the stream", file=sys.stderr)
    outputs.take(stream.finish(), time.perf_counter())
    return time.perf_counter() - start


def write_stream_npz(args, model: TrainedModel, frame_files: FrameFiles, request) -> None:
    arrays = frame_files.arrays()
    if not arrays:
        raise StreamError(f"{args.audio}: the stream ended before a whole frame of audio came")
    write_npz(
        args.out, **arrays, fps=np.float64(model.assets.fps),
        emotion_categories=np.array(model.assets.emotion_categories, dtype=np.str_),
        subject=np.array(args.subject), seed=np.int64(args.seed),
        head_scale=np.float64(args.head_scale), emotion_request=np.array(request.describe()),
        emotion_intensity=np.float64(request.intensity),
        lookahead_s=np.float64(args.lookahead_s), window_s=np.float64(args.window_s),
        hop_s=np.float64(args.hop_s),
    )  # fmt: skip


def stream_command(args) -> None:
    from sdetalk_jax.animate import checked_emotion, refuse_to_overwrite

    settings = StreamSettings(args.lookahead_s, args.window_s, args.hop_s)
    refuse_to_overwrite([p for p in (args.out, args.jsonl) if p and p != "-"], args.force)
    if args.audio != "-":
        audio.inspect_audio(args.audio)  # missing, empty, corrupt or NaN: named before any work
    model = TrainedModel.load(args.workdir, checkpoint=args.checkpoint)
    request = checked_emotion(model, args.emotion, args.emotion_intensity, progress=False)
    stream = FaceStream(
        model, subject=args.subject, key=jax.random.key(args.seed), settings=settings,
        emotion=request, head_scale=args.head_scale,
    )  # fmt: skip
    if args.audio == "-":
        chunks = raw_chunks(sys.stdin.buffer, args.raw_rate, args.raw_format, args.raw_channels,
                            args.chunk_s)  # fmt: skip
    else:
        chunks = file_chunks(args.audio, args.chunk_s)
    with contextlib.ExitStack() as stack:
        frame_files = None
        if args.out:
            out_dir = os.path.dirname(os.path.abspath(args.out))
            frame_files = stack.enter_context(FrameFiles(out_dir, None))
        jsonl = None
        if args.jsonl == "-":
            jsonl = sys.stdout
        elif args.jsonl:
            jsonl = stack.enter_context(open(args.jsonl, "w"))
        outputs = StreamOutputs(jsonl, frame_files, model.assets.emotion_categories,
                                args.jsonl_expression)  # fmt: skip
        if args.serve is not None:
            outputs.channel = live_page(model, args.subject, args.serve, stack)
        wall = run_stream(args, stream, chunks, outputs)
        if outputs.channel is not None:
            outputs.channel.close()
        if frame_files is not None:
            write_stream_npz(args, model, frame_files, request)
    if not args.quiet:
        print(summary(outputs, wall, model.assets.fps, settings), file=sys.stderr)


def live_page(model: TrainedModel, subject: str, port: int, stack: contextlib.ExitStack):
    """Serves the live page with the run's mesh and waits for it to connect; returns the channel
    the frames go out on."""
    from sdetalk_jax import render, viewer
    from sdetalk_jax.export_gltf import linear_rgb

    template = model.template_for(subject)
    assets = model.assets
    colors = render.vertex_colors(len(template) // 3, assets.lip_vertices, assets.vertex_colors)
    mesh = {"faces": np.asarray(assets.faces).reshape(-1).tolist(), "fps": assets.fps,
            "template": template.tolist(), "colors": linear_rgb(colors).reshape(-1).tolist()}  # fmt: skip
    channel = viewer.FrameChannel()
    try:
        server = viewer.serve_live(mesh, channel, port)
    except (viewer.ViewerError, OSError) as error:
        raise StreamError(f"--serve: {error}") from None
    stack.callback(server.shutdown)
    host, bound = server.server_address[:2]
    print(f"live page: http://{host}:{bound}/live.html (the stream starts when it connects)",
          file=sys.stderr, flush=True)  # fmt: skip
    channel.connected.wait()
    return channel


def summary(outputs: StreamOutputs, wall: float, fps: float, settings: StreamSettings) -> str:
    seconds = outputs.frames / fps
    latency = np.percentile(outputs.latencies, [50, 95]) * 1000 if outputs.latencies else (0, 0)
    return (
        f"streamed {outputs.frames} frames ({seconds:.2f} s of speech) in {wall:.2f} s; from a "
        f"chunk's arrival to its frames: median {latency[0]:.0f} ms, 95th percentile "
        f"{latency[1]:.0f} ms, on top of the look-ahead ({settings.lookahead_s:g} s) and up to a "
        f"hop ({settings.hop_s:g} s)"
    )


def main(argv=None) -> int:
    from sdetalk_jax.checkpoint import RunError
    from sdetalk_jax.models.wav2vec2.convert import CheckpointError

    parser = argument_parser()
    args = parser.parse_args(argv)
    checked_arguments(parser, args)
    try:
        stream_command(args)
    except (audio.AudioError, StreamError, RunError, CheckpointError) as error:
        return cli.report(error)
    return 0


if __name__ == "__main__":
    sys.exit(main())
