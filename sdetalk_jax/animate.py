"""Speech in, animated face out:

    python -m sdetalk_jax.animate --workdir runs/x --audio in.wav --subject F2 --samples 3 --seed 0 --out out/

Any wav (rate, channels). For each sample k it writes `out/STEM_sK.npz` (posed vertices per frame,
the unposed emotional face, the neutral face, head rotation and translation, the predicted emotion
mixture per frame) and `out/STEM_sK.mp4` (rendered headless, 25 fps, the input audio muxed in).
Sample k draws its noise from fold_in(key(seed), k): the same seed gives the same files; other seeds
or samples give other head motion and expression. Long audio is processed in overlapping windows
(`--window-s`, `--overlap-s`), so memory does not grow with its length. `--head-scale` scales the
head's rotation and translation around the rest pose, frame by frame (0: a still head; 1: as
generated). `--emotion` keeps the emotion inferred from the speech (default), replaces it with a
mixture of the run's categories or blends the two; `--emotion-intensity` scales the expression
away from the neutral face (docs/animate.md).
"""

from __future__ import annotations

import dataclasses
import os
import sys

import jax
import numpy as np

from sdetalk_jax import audio, cli
from sdetalk_jax.checkpoint import RunError
from sdetalk_jax.emotion_control import (
    INFERRED,
    MAX_INTENSITY,
    EmotionRequest,
    EmotionRequestError,
    parse_emotion,
)
from sdetalk_jax.export_gltf import DEFAULT_TOLERANCE_MM
from sdetalk_jax.fileio import FrameFiles, write_npz
from sdetalk_jax.inference import (
    DEFAULT_OVERLAP_S,
    DEFAULT_WINDOW_S,
    ENCODER_PRECISIONS,
    MAX_HEAD_SCALE,
    TrainedModel,
    check_head_scale,
)
from sdetalk_jax.models.wav2vec2.convert import CheckpointError

FORMATS = ("npz", "mp4", "glb")


def sample_paths(out_dir: str, stem: str, k: int) -> dict[str, str]:
    """Sample k's files by suffix: npz, mp4, glb and the glb's audio (wav)."""
    return {suffix: os.path.join(out_dir, f"{stem}_s{k}.{suffix}") for suffix in FORMATS + ("wav",)}


def output_paths(
    out_dir: str, stem: str, samples: int, video: bool, glb: bool = False
) -> list[str]:
    """Every file the command writes: per sample the npz, the mp4, the glb and its audio."""
    suffixes = ["npz"] + (["mp4"] if video else []) + (["glb", "wav"] if glb else [])
    return [sample_paths(out_dir, stem, k)[suffix] for k in range(samples) for suffix in suffixes]


def parse_formats(text: str) -> tuple[bool, bool]:
    """'mp4', 'glb', 'npz' or a comma list of them -> (video, glb); the npz is always written."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in FORMATS]
    if unknown or not names:
        raise ValueError(f"unknown format '{','.join(unknown)}': choose from {', '.join(FORMATS)}")
    return "mp4" in names, "glb" in names


def write_sample_npz(path: str, result: dict, assets, request, settings: dict) -> None:
    """One sample's arrays and what made them (docs/animate.md lists the keys)."""
    write_npz(
        path,
        **result,
        fps=np.float64(assets.fps),
        emotion_categories=np.array(assets.emotion_categories, dtype=np.str_),
        subject=np.array(settings["subject"]),
        seed=np.int64(settings["seed"]),
        sample=np.int64(settings["sample"]),
        head_scale=np.float64(settings["head_scale"]),
        emotion_request=np.array(request.describe()),
        emotion_intensity=np.float64(request.intensity),
        encoder_precision=np.array(settings["encoder_precision"]),
    )


def checked_emotion(model: TrainedModel, emotion: str, intensity: float, progress: bool):
    """The parsed request, its prototypes fitted if the run has none yet; a bad request is a
    RunError before any work."""
    try:
        request = parse_emotion(emotion, model.assets.emotion_categories, intensity)
        model.emotion_inputs(request, progress)  # a category without a prototype: refused now
    except EmotionRequestError as error:
        raise RunError(f"--emotion: {error}") from None
    return request


def export_glb(path: str, result: dict, model: TrainedModel, subject: str, waveform, *,
               tolerance_mm: float, colors=None, extras: dict, progress: bool = False) -> dict:  # fmt: skip
    """The .glb of one sample and its audio beside it (16 kHz mono, as the model heard it);
    returns (and with `progress` prints) what the export reports: morph targets, largest error."""
    import soundfile

    from sdetalk_jax.export_gltf import build_gltf, write_glb
    from sdetalk_jax.fileio import atomic_path

    assets = model.assets
    if assets.faces.size == 0:
        raise RunError("the run's assets have no mesh faces, which a .glb needs")
    audio_path = os.path.splitext(path)[0] + ".wav"
    try:
        gltf, basis = build_gltf(
            assets.templates[subject], assets.faces, result["expression"], result["rotation"],
            result["translation"], assets.fps, tolerance_mm=tolerance_mm, colors=colors,
            extras={**extras, "audio": os.path.basename(audio_path)},
        )  # fmt: skip
    except ValueError as error:  # the tolerance cannot be reached
        raise RunError(f"{path}: {error} (--morph-tolerance-mm)") from None
    with atomic_path(audio_path) as temporary:
        soundfile.write(temporary, waveform, audio.SAMPLE_RATE, format="WAV", subtype="PCM_16")
    write_glb(path, gltf)
    if progress:
        print(
            f"{path}: {basis.count} morph targets, largest vertex error "
            f"{basis.max_error_mm:.3g} mm (tolerance {tolerance_mm:g} mm)"
        )
    return {"morph_targets": basis.count, "max_error_mm": basis.max_error_mm}


def write_sample(result, model, k, *, paths, audio_path, waveform, request, colors, progress,
                 settings) -> list[str]:  # fmt: skip
    """One sample's npz, and its glb and mp4 if asked; returns the paths written. `result`'s
    arrays may be `StoredFrames` (read a piece at a time), except for the glb, which reads the
    whole clip."""
    from sdetalk_jax import render

    assets, subject = model.assets, settings["subject"]
    write_sample_npz(paths["npz"], result, assets, request, settings)
    written = [paths["npz"]]
    if settings["glb"]:
        export_glb(
            paths["glb"], {name: np.asarray(value) for name, value in result.items()}, model,
            subject, waveform, tolerance_mm=settings["morph_tolerance_mm"], colors=colors,
            progress=progress,
            extras={"subject": subject, "seed": settings["seed"], "sample": k,
                    "emotion": request.describe()},
        )  # fmt: skip
        written += [paths["glb"], paths["wav"]]
    if settings["video"]:
        if assets.faces.size == 0:
            raise RunError(f"{model.workdir}: the run's assets have no mesh faces; use --no-video")
        render.render_animation(
            paths["mp4"], result["vertices"], assets.faces, colors, fps=assets.fps,
            size=settings["size"], audio_path=audio_path, progress=progress,
        )  # fmt: skip
        written.append(paths["mp4"])
    return written


@dataclasses.dataclass(frozen=True)
class AnimationOptions:
    """What `animate` makes and where it writes it: the command's flags (`main` builds one from
    them). `encoder_precision`: the context encoder's matmul operands (float32 when None), or
    those of the model handed to `animate`; `checkpoint` and it choose how a run is loaded."""

    subject: str
    out_dir: str
    samples: int = 1
    seed: int = 0
    video: bool = True
    glb: bool = False
    morph_tolerance_mm: float = DEFAULT_TOLERANCE_MM
    size: int = 512
    window_s: float = DEFAULT_WINDOW_S
    overlap_s: float = DEFAULT_OVERLAP_S
    head_scale: float = 1.0
    emotion: str = INFERRED
    emotion_intensity: float = 1.0
    checkpoint: str = "best"
    encoder_precision: str | None = None
    force: bool = False
    progress: bool = True


def checked_head_scale(head_scale: float) -> None:
    """Refuses a head scale out of range as a RunError naming its flag."""
    try:
        check_head_scale(head_scale)
    except ValueError as error:
        raise RunError(f"--head-scale: {error}") from None


def loaded_model(
    workdir: str, options: AnimationOptions, model: TrainedModel | None
) -> TrainedModel:
    """`model`, or the run in `workdir` loaded as `options` ask; refuses an encoder precision that
    `model` was not loaded with."""
    if model is None:
        precision = options.encoder_precision or "float32"
        return TrainedModel.load(
            workdir, checkpoint=options.checkpoint, encoder_precision=precision
        )
    if options.encoder_precision not in (None, model.encoder.matmul_operands):
        raise RunError(
            f"encoder precision '{options.encoder_precision}' asked of a model loaded with "
            f"'{model.encoder.matmul_operands}': load it with TrainedModel.load(..., "
            "encoder_precision=...)"
        )
    return model


def refuse_to_overwrite(paths: list[str], force: bool) -> None:
    """Refuses to replace any of `paths` that exists, unless `force`."""
    existing = [p for p in paths if os.path.exists(p)]
    if existing and not force:
        raise RunError(
            f"{existing[0]} already exists ({len(existing)} outputs would be replaced); "
            "choose another --out or pass --force"
        )


@dataclasses.dataclass(frozen=True)
class _Animation:
    """What every sample of one `animate` call shares."""

    model: TrainedModel
    options: AnimationOptions
    audio_path: str
    stem: str
    waveform: np.ndarray
    num_frames: int
    request: EmotionRequest
    colors: np.ndarray

    def settings(self, k: int) -> dict:
        """What `write_sample` records of sample k and how it writes its files."""
        options = self.options
        return {
            "subject": options.subject, "seed": options.seed, "sample": k,
            "head_scale": options.head_scale,
            "encoder_precision": self.model.encoder.matmul_operands,
            "video": options.video, "glb": options.glb, "size": options.size,
            "morph_tolerance_mm": options.morph_tolerance_mm,
        }  # fmt: skip

    def sample(self, k: int) -> list[str]:
        """Sample k's frames, drawn with noise from fold_in(key(seed), k), and its files; returns
        the paths written."""
        options = self.options
        key = jax.random.fold_in(jax.random.key(options.seed), k)
        # The frames go to disk as they are made, so memory does not grow with the audio.
        with FrameFiles(options.out_dir, self.num_frames) as frame_files:
            for chunk in self.model.animation_chunks(
                self.waveform, subject=options.subject, key=key, window_s=options.window_s,
                overlap_s=options.overlap_s, head_scale=options.head_scale, emotion=self.request,
                progress=options.progress,
            ):  # fmt: skip
                frame_files.append(chunk)
                del chunk  # not held while the next window is computed
            return write_sample(
                frame_files.arrays(), self.model, k,
                paths=sample_paths(options.out_dir, self.stem, k), audio_path=self.audio_path,
                waveform=self.waveform, request=self.request, colors=self.colors,
                progress=options.progress, settings=self.settings(k),
            )  # fmt: skip


def animate(
    workdir: str,
    audio_path: str,
    options: AnimationOptions | None = None,
    *,
    model: TrainedModel | None = None,
    **fields,
) -> list[str]:
    """Writes the npz (and mp4, glb) of each sample; returns their paths. What to make: `options`,
    or `AnimationOptions`'s fields as keywords, which replace those of `options` if both are given
    (`animate(workdir, "in.wav", subject="F2", out_dir="out", samples=3)`). `model`: the run,
    already loaded (otherwise it is loaded from `workdir`)."""
    from sdetalk_jax import render

    if options is None:
        options = AnimationOptions(**fields)
    elif fields:
        options = dataclasses.replace(options, **fields)
    waveform = audio.load_audio(audio_path)  # raises AudioError naming the file
    checked_head_scale(options.head_scale)
    model = loaded_model(workdir, options, model)
    model.subject_index(options.subject)  # unknown subject: fail before any work
    num_frames = model.frame_count(waveform)  # too short: likewise
    request = checked_emotion(model, options.emotion, options.emotion_intensity, options.progress)
    stem = os.path.splitext(os.path.basename(audio_path))[0]
    out_dir = options.out_dir
    refuse_to_overwrite(
        output_paths(out_dir, stem, options.samples, options.video, options.glb), options.force
    )
    os.makedirs(out_dir, exist_ok=True)
    assets = model.assets
    colors = render.vertex_colors(
        assets.templates[options.subject].shape[0], assets.lip_vertices, assets.vertex_colors
    )
    animation = _Animation(model, options, audio_path, stem, waveform, num_frames, request, colors)
    written = []
    for k in range(options.samples):
        written += animation.sample(k)
        if options.progress:
            print(f"sample {k}: " + ", ".join(p for p in written if f"_s{k}." in p))
    return written


def add_input_arguments(parser) -> None:
    """The run, the speech, the speaker's style, the output folder and how many samples."""
    parser.add_argument("--workdir", required=True, help="training run folder")
    parser.add_argument("--audio", required=True, help="input speech (wav, any rate and channels)")
    parser.add_argument("--subject", required=True, help="training subject whose style to speak in")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--samples", type=int, default=1, help="how many different animations")
    parser.add_argument("--seed", type=int, default=0)


def add_format_arguments(parser) -> None:
    """What is written beside each npz, and how."""
    parser.add_argument(
        "--format", default="mp4",
        help="what to write beside each npz: mp4 (video with audio), glb (glTF 2.0 with morph "
        "targets and head animation, its audio beside it) or both: mp4,glb",
    )  # fmt: skip
    parser.add_argument(
        "--no-video", action="store_true", help="no mp4 (the npz, and glb if asked)"
    )
    parser.add_argument(
        "--morph-tolerance-mm", type=float, default=DEFAULT_TOLERANCE_MM,
        help="glb: largest vertex error allowed to the morph-target basis",
    )  # fmt: skip
    parser.add_argument("--size", type=int, default=512, help="video width and height in pixels")


def add_animation_arguments(parser) -> None:
    """The windows long audio is cut into, the head motion and the emotion."""
    parser.add_argument(
        "--window-s", type=float, default=DEFAULT_WINDOW_S,
        help="window length for long audio (seconds; memory grows with it)",
    )  # fmt: skip
    parser.add_argument(
        "--overlap-s", type=float, default=DEFAULT_OVERLAP_S, help="crossfaded overlap of windows"
    )
    parser.add_argument(
        "--head-scale", type=float, default=1.0,
        help=f"head motion around the rest pose: 0 a still head, 1 as generated (up to {MAX_HEAD_SCALE:g})",
    )  # fmt: skip
    parser.add_argument(
        "--emotion", default=INFERRED,
        help="'inferred' (from the speech), 'none', a category ('anger') or a mixture "
        "('happiness=0.7,surprise=0.3'; may include 'inferred' to blend)",
    )  # fmt: skip
    parser.add_argument(
        "--emotion-intensity", type=float, default=1.0,
        help=f"expression away from the neutral face: 0 none, 1 the emotion's own size (up to {MAX_INTENSITY:g})",
    )  # fmt: skip


def argument_parser():
    """The command's parser, its flags in the order its help lists them."""
    parser = cli.parser("python -m sdetalk_jax.animate", __doc__)
    add_input_arguments(parser)
    add_format_arguments(parser)
    add_animation_arguments(parser)
    parser.add_argument("--checkpoint", default="best", choices=("best", "latest"))
    parser.add_argument(
        "--encoder-precision", default="float32", choices=ENCODER_PRECISIONS,
        help="wav2vec 2.0's matmul operands: float32 (the features the run was trained on) or "
        "bfloat16 (the encoder 1.3-1.5x faster on CPUs with avx512_bf16; docs/animate.md)",
    )  # fmt: skip
    parser.add_argument("--force", action="store_true", help="replace existing outputs")
    return parser


def options_from_args(parser, args) -> AnimationOptions:
    """The options the parsed flags ask for; a flag out of range is a usage error (exit 2)."""
    if args.samples < 1:
        parser.error("--samples must be at least 1")
    if args.overlap_s < 0 or args.window_s <= 2 * args.overlap_s:
        parser.error("--window-s must be more than twice --overlap-s")
    if not 0 <= args.head_scale <= MAX_HEAD_SCALE:
        parser.error(f"--head-scale must be between 0 and {MAX_HEAD_SCALE:g}")
    try:
        video, glb = parse_formats(args.format)
    except ValueError as error:
        parser.error(f"--format: {error}")
    if not args.morph_tolerance_mm > 0:
        parser.error("--morph-tolerance-mm must be positive")
    if not 0 <= args.emotion_intensity <= MAX_INTENSITY:
        parser.error(f"--emotion-intensity must be between 0 and {MAX_INTENSITY:g}")
    return AnimationOptions(
        subject=args.subject, out_dir=args.out, samples=args.samples, seed=args.seed,
        video=video and not args.no_video, glb=glb, morph_tolerance_mm=args.morph_tolerance_mm,
        size=args.size, window_s=args.window_s, overlap_s=args.overlap_s,
        head_scale=args.head_scale, emotion=args.emotion,
        emotion_intensity=args.emotion_intensity, checkpoint=args.checkpoint,
        encoder_precision=args.encoder_precision, force=args.force,
    )  # fmt: skip


def main(argv=None) -> int:
    parser = argument_parser()
    args = parser.parse_args(argv)
    options = options_from_args(parser, args)
    from sdetalk_jax.render import RenderError

    try:
        animate(args.workdir, args.audio, options)
    except (audio.AudioError, RunError, RenderError, CheckpointError) as error:
        return cli.report(error)
    return 0


if __name__ == "__main__":
    sys.exit(main())
