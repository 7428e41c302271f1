"""A trained run, loaded for inference: what `evaluate` and `animate` share.

`TrainedModel.load(workdir)` rebuilds the networks from the run's `config.json`, restores the
generator's parameters from the best checkpoint (or the latest one) and reads the run's assets
(subject templates, mesh, regions), saved by training in `WORKDIR/assets.npz` (`checkpoint`).

`TrainedModel.animation_chunks` turns audio of any length into frames with a fixed memory
footprint: the audio is cut into windows of `window_s` seconds that overlap by `overlap_s`, each
window goes through the context encoder and the generator on its own (one compiled shape for every
window), neighbouring windows are crossfaded linearly across their overlap, and frames are handed
on as soon as they are final. `TrainedModel.animate_waveform` gathers them into whole arrays.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import sys

import jax
import numpy as np

from sdetalk_jax import audio
from sdetalk_jax.checkpoint import ASSETS, Assets, RunError, load_run_config, restore_run_state
from sdetalk_jax.data.batching import pad_along_time
from sdetalk_jax.data.corpus import open_corpus
from sdetalk_jax.data.pipeline import ClipDataset, model_batch
from sdetalk_jax.emotion_control import (
    DEFAULT_REFINE_STEPS,
    EmotionPrototypes,
    EmotionRequest,
    gather_prototypes,
    request_inputs,
)
from sdetalk_jax.models.config import SDETalkConfig
from sdetalk_jax.models.networks import Networks
from sdetalk_jax.models.ops import pose_faces
from sdetalk_jax.models.wav2vec2.encoder import ContextEncoder
from sdetalk_jax.models.wav2vec2.model import MATMUL_OPERANDS, check_matmul_operands

# The context encoder's matmul operands at inference (training is float32).
ENCODER_PRECISIONS = tuple(MATMUL_OPERANDS)

# Seconds of audio per window, and of overlap between neighbours. A window's encoder and generator
# activations are animation's memory: at BIWI size 10 s windows peak at 2.6 GiB, 20 s ones at
# 3.0 GiB, in the same time (docs/animate.md). 10 s are also nearer the 2.5-6 s clips that the
# emotion read from each window was trained on.
DEFAULT_WINDOW_S = 10.0
DEFAULT_OVERLAP_S = 1.0


def crossfade_weights(
    length: int, overlap: int, first: bool, last: bool, lead: int = 0
) -> np.ndarray:
    """Per-frame weights [length] of one window: zero over its first `lead` frames (audio it only
    listens to), then a ramp up over `overlap` frames (unless it is the first window), and down
    over the trailing `overlap` (unless it is the last). Neighbouring windows' weights sum to one
    on their shared frames."""
    weights = np.ones(length, np.float64)
    weights[:lead] = 0.0
    if overlap > 0:
        ramp = (np.arange(overlap) + 0.5) / overlap
        if not first:
            weights[lead : lead + overlap] = ramp
        if not last:
            weights[-overlap:] = ramp[::-1]
    return weights


def window_starts(num_frames: int, window: int, overlap: int) -> list[int]:
    """Start frames of windows of `window` frames overlapping by `overlap` that cover num_frames:
    `window - overlap` apart, and the last one ending with the clip (so that it hears a whole
    window of audio, however little is left)."""
    if num_frames <= window:
        return [0]
    hop = window - overlap
    starts = list(range(0, num_frames - window, hop))
    starts.append(num_frames - window)  # the last window ends with the clip
    return starts


def window_leads(starts: list[int], window: int, overlap: int) -> list[int]:
    """Leading frames of each window that its predecessor already gives at weight one: the last
    window starts earlier than a hop after its predecessor, and is blended in only over the
    predecessor's last `overlap` frames. Zero for every other window."""
    return [0] + [
        max(previous + window - overlap - start, 0)
        for previous, start in itertools.pairwise(starts)
    ]


def window_frames(
    num_frames: int, fps: float, window_s: float, overlap_s: float
) -> tuple[int, int]:
    """(window, overlap) in frames for `window_s` and `overlap_s` seconds at `fps`: a window of at
    least two frames and at most the clip, an overlap of at most half a window."""
    window = max(int(round(window_s * fps)), 2)
    overlap = min(int(round(overlap_s * fps)), window // 2)
    return min(window, num_frames), overlap


def nearest_rotation(matrices: np.ndarray) -> np.ndarray:
    """Projects [..., 3, 3] matrices onto SO(3) (after averaging rotations across a crossfade)."""
    u, _, vt = np.linalg.svd(matrices)
    d = np.sign(np.linalg.det(u @ vt))
    u[..., :, -1] *= d[..., None]
    return u @ vt


MAX_HEAD_SCALE = 3.0


def check_head_scale(scale: float) -> None:
    if not (np.isfinite(scale) and 0.0 <= scale <= MAX_HEAD_SCALE):
        raise ValueError(f"head scale must be between 0 and {MAX_HEAD_SCALE:g}, not {scale}")


def scale_head_motion(rotation, translation, scale: float):
    """The head pose [N, 3, 3], [N, 3] moved `scale` of the way from the rest pose (identity, no
    translation): each rotation's angle about its own axis and the translation times `scale`. 0 is a
    still head, 1 leaves the pose as it is. Frame by frame, so it needs no look-ahead."""
    from scipy.spatial.transform import Rotation

    check_head_scale(scale)
    # Rotation reads column-vector matrices; ours are applied to row vectors (f R), the transpose,
    # whose power is the transpose of the power: scaling the rotation vector works either way.
    vectors = Rotation.from_matrix(np.asarray(rotation, np.float64)).as_rotvec()
    scaled = Rotation.from_rotvec(scale * vectors).as_matrix()
    return scaled.astype(np.float32), (scale * np.asarray(translation)).astype(np.float32)


def rescaled_head(result: dict, scale: float) -> dict:
    """rotation, translation and posed vertices (Eq. 4, `pose_faces`) of one clip's animation with
    its head motion scaled."""
    rotation, translation = scale_head_motion(result["rotation"], result["translation"], scale)
    expression = result["expression"]
    posed = pose_faces(
        expression.reshape(1, expression.shape[0], -1), rotation[None], translation[None]
    )
    vertices = np.asarray(posed[0]).reshape(expression.shape)
    return {"rotation": rotation, "translation": translation, "vertices": vertices}


class Crossfade:
    """Sums overlapping windows' outputs with their crossfade weights and hands frames back,
    normalised, once no later window reaches them. It holds the latest window's outputs until
    they are handed back, and of earlier windows only the rows a later window blends with.

    Each frame is, bitwise, what summing every window into whole-clip float32 arrays and dividing
    by the summed weight gives. Rows that one window alone covers at weight one are that window's
    own numbers (0 + 1.0 * value, divided by 1), handed back as views of its output: no copy, and
    no fresh memory to fault in, for most of the frames. The others are summed in window order."""

    def __init__(self):
        self.start = 0  # the first frame not yet handed back
        self.windows: list[tuple[int, dict[str, np.ndarray], np.ndarray]] = []

    def add(self, start: int, values: dict[str, np.ndarray], weights: np.ndarray) -> None:
        """A window's outputs from frame `start` on; its frames of weight zero before the first
        frame not yet handed back (audio it only listens to) are dropped."""
        weights = np.asarray(weights, np.float64)
        weighted = np.flatnonzero(weights > 0)
        if len(weighted) == 0 or start + weighted[0] < self.start:
            raise ValueError(f"a window at frame {start} reaches frames already handed back")
        skip = max(self.start - start, 0)  # all of weight zero
        values = {name: value[skip:] for name, value in values.items()}
        self.windows.append((start + skip, values, weights[skip:]))

    @property
    def held_frames(self) -> int:
        """How many frames of window outputs are held."""
        return sum(len(weights) for _, _, weights in self.windows)

    def take(self, until: int) -> list[dict[str, np.ndarray]]:
        """Frames [start, until) of every output, divided by their summed weight, as consecutive
        pieces: the rows one window gives alone, and the blended rows between them."""
        count = until - self.start
        total, cover = np.zeros(count), np.zeros(count, np.int64)
        alone_in = np.full(count, -1)  # the window giving a row alone at weight one, if any
        for index, (start, _, weights) in enumerate(self.windows):
            low, high = max(start, self.start), min(start + len(weights), until)
            if low >= high:
                continue
            rows, span = (
                weights[low - start : high - start],
                slice(low - self.start, high - self.start),
            )
            total[span] += rows
            cover[span] += rows > 0  # a window only listening there does not count
            alone_in[span] = np.where(rows == 1.0, index, np.where(rows > 0, -1, alone_in[span]))
        if not np.all(total > 0):
            raise ValueError(f"frames in [{self.start}, {until}) that no window reached")
        alone_in[cover > 1] = -1
        pieces = [self._piece(low, high, total, alone_in) for low, high in equal_runs(alone_in)]
        self.start = until
        self.windows = [self._rest(*w) for w in self.windows if w[0] + len(w[2]) > until]
        return pieces

    def _piece(self, low: int, high: int, total: np.ndarray, alone_in: np.ndarray) -> dict:
        """Output rows [low, high) (relative to `start`): a view of the window that gives them
        alone, or the weighted sum of the windows that reach them."""
        if alone_in[low] >= 0:
            start, values, _ = self.windows[alone_in[low]]
            offset = self.start + low - start
            return {name: value[offset : offset + high - low] for name, value in values.items()}
        first, last = self.start + low, self.start + high
        piece = {}
        for start, values, weights in self.windows:
            a, b = max(start, first), min(start + len(weights), last)
            if a >= b or not np.any(weights[a - start : b - start] > 0):
                continue
            for name, value in values.items():
                if name not in piece:
                    piece[name] = np.zeros((high - low,) + value.shape[1:], np.float32)
                piece[name][a - first : b - first] += (
                    weights[a - start : b - start, None] * value[a - start : b - start]
                )
        weight = total[low:high, None].astype(np.float32)
        return {name: summed / weight for name, summed in piece.items()}

    def _rest(self, start: int, values: dict, weights: np.ndarray):
        """A window's rows from `self.start` on; copied, so that the whole output is not kept."""
        skip = max(self.start - start, 0)
        if skip == 0:
            return start, values, weights
        rest = {name: value[skip:].copy() for name, value in values.items()}
        return start + skip, rest, weights[skip:]


def equal_runs(values: np.ndarray) -> list[tuple[int, int]]:
    """[low, high) of each maximal run of equal values in a 1-d array."""
    bounds = [0, *(np.flatnonzero(np.diff(values)) + 1).tolist(), len(values)]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def finished_frames(frames: dict[str, np.ndarray], head_scale: float) -> dict[str, np.ndarray]:
    """Crossfaded frames as `animate_waveform` returns them: rotations projected back onto SO(3),
    vertices [n, V, 3], the head motion scaled."""
    count = len(frames["rotation"])
    frames["rotation"] = nearest_rotation(frames["rotation"].reshape(count, 3, 3))
    for name in ("vertices", "expression", "neutral"):
        frames[name] = frames[name].reshape(count, -1, 3)
    if head_scale != 1.0:
        frames.update(rescaled_head(frames, head_scale))
    return {name: value.astype(np.float32, copy=False) for name, value in frames.items()}


def check_encoder(workdir: str, assets: Assets, encoder: ContextEncoder) -> None:
    """Refuses a context encoder other than the one the run was trained with: a changed folder,
    hub revision or initialiser would change every feature, and so the animation, silently."""
    if assets.encoder_fingerprint and encoder.fingerprint != assets.encoder_fingerprint:
        raise RunError(
            f"{workdir} was trained with context encoder {assets.encoder_fingerprint[:16]}, but "
            f"model.wav2vec2_checkpoint / model.wav2vec2_random in its config.json now give "
            f"{encoder.fingerprint[:16]} (other weights or settings); restore the encoder the run "
            "was trained with"
        )


@dataclasses.dataclass
class TrainedModel:
    config: object
    networks: Networks
    params: dict
    assets: Assets
    encoder: object
    step: int
    workdir: str = ""
    _prototypes: EmotionPrototypes | None = dataclasses.field(default=None, repr=False)
    _generate: object = dataclasses.field(default=None, repr=False)

    @classmethod
    def load(
        cls, workdir: str, *, checkpoint: str = "best", encoder_precision: str = "float32"
    ) -> TrainedModel:
        """checkpoint: 'best' (lowest validation error; the latest if there is no best) or
        'latest'. encoder_precision: the context encoder's matmul operands, 'float32' (the
        features the run was trained on) or 'bfloat16' (faster on CPUs with avx512_bf16;
        docs/animate.md has its effect)."""
        try:
            check_matmul_operands(encoder_precision)  # before any file is read
        except ValueError as error:
            raise RunError(str(error)) from None
        config = load_run_config(workdir)
        assets_path = os.path.join(workdir, ASSETS)
        if os.path.exists(assets_path):
            assets = Assets.load(assets_path)
        else:  # a run from before assets were saved: read them from its corpus
            assets = Assets.from_corpus(open_corpus(config), config.data.splits.train_subjects)
        encoder = ContextEncoder.from_config(
            config, allow_download=False, matmul_operands=encoder_precision
        )
        check_encoder(workdir, assets, encoder)
        model_config = SDETalkConfig.for_run(
            config, context_dim=encoder.hidden_size, **assets.dimensions
        )
        networks = Networks.build(model_config)
        # Only the shapes are needed to restore into: no parameters are computed. Only the
        # generator's parameters are read: not D's, the estimators' or the optimiser's moments.
        abstract = jax.eval_shape(networks.init_params, jax.random.key(0))
        wanted = {
            "step": jax.ShapeDtypeStruct((), np.int32),
            "params": {"generator": abstract["generator"]},
        }
        state = restore_run_state(workdir, wanted, checkpoint)
        # On the device once: restored as numpy, they would be copied there at every window.
        generator_params = jax.device_put(state.pop("params")["generator"])
        return cls(config, networks, generator_params, assets, encoder, int(state["step"]), workdir)

    def subject_index(self, subject: str) -> int:
        if subject not in self.assets.subjects:
            raise RunError(
                f"unknown subject '{subject}': this model was trained on "
                f"{', '.join(self.assets.subjects)} (one of them sets the speaking style)"
            )
        return self.assets.subjects.index(subject)

    def template_for(self, subject: str, template: np.ndarray | None = None) -> np.ndarray:
        if template is not None:
            return np.asarray(template, np.float32).reshape(-1)
        if subject not in self.assets.templates:
            raise RunError(f"no template for subject '{subject}' in this run's assets")
        return self.assets.templates[subject].reshape(-1)

    def emotion_prototypes(self, progress: bool = False) -> EmotionPrototypes:
        """The run's emotion prototypes for this checkpoint (`emotion_control`): saved by training,
        or fitted now from the run's training clips and saved beside them."""
        if self._prototypes is not None:
            return self._prototypes
        path = EmotionPrototypes.path(self.workdir, self.step)
        if os.path.exists(path):
            self._prototypes = EmotionPrototypes.load(path)
            if self._prototypes.gains is None:
                print(
                    f"warning: {path} was fitted by an earlier version (no gains: a requested "
                    "emotion is drawn fainter and less distinctly); move it away to fit it again",
                    file=sys.stderr,
                )
            return self._prototypes
        root = self.config.data.root
        if not os.path.isdir(root):
            raise RunError(
                f"{path} is missing (a run from before emotion control) and its training corpus "
                f"{root} is not here to fit it from; set data.root in {self.workdir}/config.json"
            )
        corpus = open_corpus(self.config)
        dataset = ClipDataset.from_corpus(corpus, "train", self.assets.subjects, self.encoder)
        steps = self.config.train.emotion_prototype_steps
        steps = steps if steps >= 0 else DEFAULT_REFINE_STEPS  # -1: none at the end of training
        self._prototypes = gather_prototypes(
            self.networks.generator, self.params, dataset, self.assets.emotion_categories,
            self.step, refine_steps=steps, progress=progress,
        )  # fmt: skip
        self._prototypes.save(self.workdir)
        return self._prototypes

    def emotion_inputs(self, emotion: EmotionRequest | None, progress: bool = False) -> dict:
        """The generator's extra inputs for a requested emotion ({} for the inferred one)."""
        if emotion is None or emotion.is_default:
            return {}
        # the speech's own emotion at another intensity needs no prototypes
        prototypes = self.emotion_prototypes(progress) if emotion.needs_prototypes else None
        inputs = request_inputs(emotion, self.networks.config.hidden, prototypes)
        return {name: np.asarray(value)[None] for name, value in inputs.items()}

    def window_batch(
        self, piece, window: int, subjects, template_flat, padded_to: int | None = None
    ) -> dict:
        """The model batch of one window of audio (one row) of `window` face frames, padded with
        masked frames to `padded_to` frames if given (one compiled shape for shorter windows)."""
        length = window if padded_to is None else padded_to
        context = audio.interpolate_frames(self.encoder.encode(piece), window)
        mel = audio.frame_aligned_log_mel(piece, window)
        features = {
            "context": pad_along_time(context, length)[None],
            "mel": pad_along_time(mel, length)[None],
            "template": template_flat[None],
            "frame_mask": (np.arange(length) < window)[None],
        }
        return model_batch(features, subjects, len(self.assets.subjects), targets=False)

    def generate_fn(self):
        """Jitted generator: (params, batch, noise) -> outputs; one per model, so that its
        compilations are kept from one call (or sample) to the next."""
        if self._generate is None:
            generator = self.networks.generator
            self._generate = jax.jit(
                lambda params, batch, noise: generator.apply({"params": params}, batch, noise)
            )
        return self._generate

    def frame_count(self, waveform: np.ndarray) -> int:
        """How many face frames `waveform` (16 kHz) animates to; refuses audio too short."""
        num_frames = int(len(waveform) // audio.samples_per_frame(self.assets.fps))
        if num_frames < 2:
            raise audio.AudioError(
                f"audio of {len(waveform) / audio.SAMPLE_RATE:.3f} s is too short to animate"
            )
        return num_frames

    def window_animation(self, batch: dict, key: jax.Array, window: int) -> dict[str, np.ndarray]:
        """One window's frames before crossfading (the keys of `animate_waveform`, rotations
        flattened to [window, 9]), its noise drawn from `key`."""
        noise = jax.random.normal(key, (1, window, self.networks.config.hidden))
        return self.window_outputs(batch, noise)

    def window_outputs(self, batch: dict, noise) -> dict[str, np.ndarray]:
        """`window_animation`'s frames for the noise [1, window, hidden] given."""
        window = noise.shape[1]
        outputs = jax.device_get(self.generate_fn()(self.params, batch, noise))
        return {
            "vertices": outputs.posed[0],
            "expression": outputs.expression[0],
            "neutral": outputs.neutral[0],
            "rotation": outputs.rotation[0].reshape(window, 9),
            "translation": outputs.translation[0],
            "emotion": np.broadcast_to(outputs.mixture[0], (window, outputs.mixture.shape[-1])),
        }

    def animation_chunks(
        self,
        waveform: np.ndarray,
        *,
        subject: str,
        key: jax.Array,
        template: np.ndarray | None = None,
        window_s: float = DEFAULT_WINDOW_S,
        overlap_s: float = DEFAULT_OVERLAP_S,
        head_scale: float = 1.0,
        emotion: EmotionRequest | None = None,
        progress: bool = False,
    ):
        """Yields the animation of `waveform` in order, a chunk of finished frames at a time (the
        keys and shapes of `animate_waveform`, with fewer frames): a window's frames are handed on
        as soon as no later window overlaps them, so memory holds about one window, whatever the
        length of the audio. Arguments as for `animate_waveform`."""
        from tqdm import tqdm

        check_head_scale(head_scale)  # a bad scale fails before any work
        steering = self.emotion_inputs(emotion, progress)
        samples_per_frame = audio.samples_per_frame(self.assets.fps)
        num_frames = self.frame_count(waveform)
        window, overlap = window_frames(num_frames, self.assets.fps, window_s, overlap_s)
        starts = window_starts(num_frames, window, overlap)
        leads = window_leads(starts, window, overlap)
        subjects = np.array([self.subject_index(subject)])
        template_flat = self.template_for(subject, template)
        crossfade = Crossfade()
        for index, start in enumerate(
            tqdm(starts, desc="animate", unit="window", disable=not progress)
        ):
            piece = waveform[start * samples_per_frame : (start + window) * samples_per_frame]
            batch = {**self.window_batch(piece, window, subjects, template_flat), **steering}
            pieces = self.window_animation(batch, jax.random.fold_in(key, index), window)
            last = index == len(starts) - 1
            weights = crossfade_weights(window, overlap, index == 0, last, leads[index])
            crossfade.add(start, pieces, weights)
            del pieces  # not held while the next window is computed
            # frames are final up to where the next window's weight starts
            finished = num_frames if last else starts[index + 1] + leads[index + 1]
            # Most of a window is handed on as views of its outputs: none is kept here while
            # the next window is computed.
            taken = crossfade.take(finished)
            while taken:
                yield finished_frames(taken.pop(0), head_scale)

    def animate_waveform(self, waveform: np.ndarray, **options) -> dict[str, np.ndarray]:
        """16 kHz mono waveform -> {'vertices' [N, V, 3] posed, 'expression' [N, V, 3] unposed,
        'neutral' [N, V, 3], 'rotation' [N, 3, 3], 'translation' [N, 3], 'emotion' [N, C]}.

        Options (keyword only): subject, key, template, window_s, overlap_s, head_scale, emotion,
        progress. The head motion and expression are drawn with noise from `key` (window w uses
        fold_in(key, w)); the same key gives the same result. `head_scale` scales the head's
        motion around the rest pose (`scale_head_motion`: 0 still, 1 as generated). `emotion`
        replaces or blends the inferred emotion and sets its intensity (`emotion_control`); the
        returned 'emotion' is then the classifier's reading of the request.

        The whole animation is held in memory; `animation_chunks` hands it on a piece at a time
        (what `animate` does, for audio of any length)."""
        result, filled, num_frames = {}, 0, self.frame_count(waveform)
        for chunk in self.animation_chunks(waveform, **options):
            for name, value in chunk.items():
                if name not in result:
                    result[name] = np.empty((num_frames,) + value.shape[1:], np.float32)
                result[name][filled : filled + len(value)] = value
            filled += len(next(iter(chunk.values())))
        return result
