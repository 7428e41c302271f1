"""A trained run, loaded for inference: what `evaluate` and `animate` share.

`TrainedModel.load(workdir)` rebuilds the networks from the run's `config.json`, restores the
generator's parameters from the best checkpoint (or the latest one) and reads the run's assets
(subject templates, mesh, regions), saved by training in `WORKDIR/assets.npz`.

`TrainedModel.animate_waveform` turns audio of any length into frames with a fixed memory footprint:
the audio is cut into windows of `window_s` seconds that overlap by `overlap_s`, each window goes
through the context encoder and the generator on its own (one compiled shape for every window), and
neighbouring windows are crossfaded linearly across their overlap.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from sdetalk_jax import audio, runtime
from sdetalk_jax.data import biwi

ASSETS = "assets.npz"


class RunError(ValueError):
    """A workdir that cannot be used: no config, no checkpoint, unknown subject, ..."""


@dataclasses.dataclass(frozen=True)
class Assets:
    """What inference needs from the corpus, kept with the run so that animating needs no data."""

    subjects: tuple[str, ...]  # training subjects, in identity (one-hot) order
    templates: dict[str, np.ndarray]  # subject -> [V, 3] (all corpus subjects)
    faces: np.ndarray  # [F, 3] triangles
    lip_vertices: np.ndarray
    upper_face_vertices: np.ndarray
    fps: float
    emotion_categories: tuple[str, ...]

    @classmethod
    def from_corpus(cls, corpus: biwi.Corpus, subjects) -> Assets:
        faces_path = os.path.join(corpus.root, "mesh", "faces.npy")
        faces = (
            np.load(faces_path, allow_pickle=False)
            if os.path.exists(faces_path)
            else np.zeros((0, 3), np.int32)
        )
        empty = np.zeros((0,), np.int64)
        return cls(
            subjects=tuple(subjects),
            templates={k: np.asarray(v, np.float32) for k, v in corpus.templates.items()},
            faces=faces.astype(np.int32),
            lip_vertices=empty if corpus.lip_vertices is None else corpus.lip_vertices,
            upper_face_vertices=(
                empty if corpus.upper_face_vertices is None else corpus.upper_face_vertices
            ),
            fps=float(corpus.fps),
            emotion_categories=tuple(corpus.emotion_categories),
        )

    def save(self, path: str) -> None:
        from sdetalk_jax.data.writer import write_npz

        arrays = {f"template/{k}": v for k, v in self.templates.items()}
        arrays.update(
            faces=self.faces,
            lip_vertices=self.lip_vertices,
            upper_face_vertices=self.upper_face_vertices,
            fps=np.float64(self.fps),
            subjects=np.array(self.subjects, dtype=np.str_),
            emotion_categories=np.array(self.emotion_categories, dtype=np.str_),
        )
        write_npz(path, **arrays)

    @classmethod
    def load(cls, path: str) -> Assets:
        with np.load(path, allow_pickle=False) as archive:
            templates = {
                key.split("/", 1)[1]: archive[key]
                for key in archive.files
                if key.startswith("template/")
            }
            return cls(
                subjects=tuple(str(s) for s in archive["subjects"]),
                templates=templates,
                faces=archive["faces"],
                lip_vertices=archive["lip_vertices"],
                upper_face_vertices=archive["upper_face_vertices"],
                fps=float(archive["fps"]),
                emotion_categories=tuple(str(s) for s in archive["emotion_categories"]),
            )


def load_run_config(workdir: str):
    import ml_collections

    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise RunError(
            f"{workdir}: no config.json; is this a training workdir? "
            "(python -m sdetalk_jax.train --config ... --workdir DIR writes one)"
        )
    with open(path) as handle:
        return ml_collections.ConfigDict(json.load(handle))


def crossfade_weights(length: int, overlap: int, first: bool, last: bool) -> np.ndarray:
    """Per-frame weights [length] of one window: ramps up over the leading overlap (unless it is the
    first window) and down over the trailing one (unless it is the last). Neighbouring windows'
    weights sum to one on their shared frames."""
    weights = np.ones(length, np.float64)
    if overlap > 0:
        ramp = (np.arange(overlap) + 0.5) / overlap
        if not first:
            weights[:overlap] = ramp
        if not last:
            weights[-overlap:] = ramp[::-1]
    return weights


def window_starts(num_frames: int, window: int, overlap: int) -> list[int]:
    """Start frames of windows of `window` frames overlapping by `overlap` that cover num_frames."""
    if num_frames <= window:
        return [0]
    hop = window - overlap
    starts = list(range(0, num_frames - window, hop))
    starts.append(num_frames - window)  # the last window ends with the clip
    return starts


def nearest_rotation(matrices: np.ndarray) -> np.ndarray:
    """Projects [..., 3, 3] matrices onto SO(3) (after averaging rotations across a crossfade)."""
    u, _, vt = np.linalg.svd(matrices)
    d = np.sign(np.linalg.det(u @ vt))
    u[..., :, -1] *= d[..., None]
    return u @ vt


@dataclasses.dataclass
class TrainedModel:
    config: object
    networks: runtime.Networks
    params: dict
    assets: Assets
    encoder: object
    step: int

    @classmethod
    def load(cls, workdir: str, *, checkpoint: str = "best") -> TrainedModel:
        """checkpoint: 'best' (lowest validation error; the latest if there is no best) or
        'latest'."""
        config = load_run_config(workdir)
        assets_path = os.path.join(workdir, ASSETS)
        if os.path.exists(assets_path):
            assets = Assets.load(assets_path)
        else:  # a run from before assets were saved: read them from its corpus
            corpus = runtime.open_corpus(config)
            assets = Assets.from_corpus(corpus, config.data.splits.train_subjects)
        encoder = runtime.context_encoder(config)
        model_config = runtime.sdetalk.SDETalkConfig.from_config(
            config.model,
            num_vertices=next(iter(assets.templates.values())).shape[0],
            context_dim=encoder.hidden_size,
            num_subjects=len(assets.subjects),
            num_emotions=max(len(assets.emotion_categories), 1),
            motion_unit=1.0 / config.loss.vertex_scale,
        )
        networks = runtime.Networks.build(model_config)
        # Only the shapes are needed to restore into: no parameters are computed.
        abstract = jax.eval_shape(
            lambda key: runtime.initial_state(networks, config, key), jax.random.key(0)
        )
        managers = (
            [runtime.BEST, runtime.CHECKPOINTS] if checkpoint == "best" else [runtime.CHECKPOINTS]
        )
        for name in managers:
            folder = os.path.join(workdir, name)
            if not os.path.isdir(folder):
                continue
            manager = runtime.checkpoint_manager(workdir, name, keep=1, read_only=True)
            if manager.latest_step() is not None:
                restored, _ = runtime.restore_checkpoint(manager, abstract)
                return cls(
                    config, networks, restored["params"]["generator"], assets, encoder,
                    int(restored["step"]),
                )  # fmt: skip
        raise RunError(
            f"{workdir}: no checkpoint found (looked in {', '.join(managers)}); train first with "
            f"python -m sdetalk_jax.train --config ... --workdir {workdir}"
        )

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

    def generate_fn(self):
        """Jitted generator: (batch, noise) -> outputs."""
        generator = self.networks.generator
        return jax.jit(
            lambda params, batch, noise: generator.apply({"params": params}, batch, noise)
        )

    def animate_waveform(
        self,
        waveform: np.ndarray,
        *,
        subject: str,
        key: jax.Array,
        template: np.ndarray | None = None,
        window_s: float = 20.0,
        overlap_s: float = 1.0,
        progress: bool = False,
    ) -> dict[str, np.ndarray]:
        """16 kHz mono waveform -> {'vertices' [N, V, 3] posed, 'expression' [N, V, 3] unposed,
        'neutral' [N, V, 3], 'rotation' [N, 3, 3], 'translation' [N, 3], 'emotion' [N, C]}.

        The head motion and expression are drawn with noise from `key` (window w uses
        fold_in(key, w)); the same key gives the same result."""
        from tqdm import tqdm

        fps = self.assets.fps
        samples_per_frame = audio.samples_per_frame(fps)
        num_frames = int(len(waveform) // samples_per_frame)
        if num_frames < 2:
            raise audio.AudioError(
                f"audio of {len(waveform) / audio.SAMPLE_RATE:.3f} s is too short to animate"
            )
        window = max(int(round(window_s * fps)), 2)
        overlap = min(int(round(overlap_s * fps)), window // 2)
        window = min(window, num_frames)
        starts = window_starts(num_frames, window, overlap)
        identity = jax.nn.one_hot(self.subject_index(subject), len(self.assets.subjects))
        template_flat = self.template_for(subject, template)
        generate = self.generate_fn()
        hidden = self.networks.config.hidden
        accumulated = {}
        total_weight = np.zeros(num_frames)
        for index, start in enumerate(
            tqdm(starts, desc="animate", unit="window", disable=not progress)
        ):
            piece = waveform[start * samples_per_frame : (start + window) * samples_per_frame]
            context = audio.interpolate_frames(self.encoder.encode(piece), window)
            batch = {
                "context": jnp.asarray(context)[None],
                "mel": jnp.asarray(audio.frame_aligned_log_mel(piece, window))[None],
                "subject_onehot": identity[None],
                "template": jnp.asarray(template_flat)[None],
                "frame_mask": jnp.ones((1, window), bool),
            }
            noise = jax.random.normal(jax.random.fold_in(key, index), (1, window, hidden))
            outputs = jax.device_get(generate(self.params, batch, noise))
            weights = crossfade_weights(window, overlap, index == 0, index == len(starts) - 1)
            mixture = np.broadcast_to(outputs["mixture"][0], (window, outputs["mixture"].shape[-1]))
            pieces = {
                "vertices": outputs["posed"][0],
                "expression": outputs["expression"][0],
                "neutral": outputs["neutral"][0],
                "rotation": outputs["rotation"][0].reshape(window, 9),
                "translation": outputs["translation"][0],
                "emotion": mixture,
            }
            for name, value in pieces.items():
                if name not in accumulated:
                    # float32 and divided in place: for long clips these arrays are the memory
                    accumulated[name] = np.zeros((num_frames,) + value.shape[1:], np.float32)
                accumulated[name][start : start + window] += weights[:, None] * value
            total_weight[start : start + window] += weights
        for value in accumulated.values():
            value /= total_weight[:, None].astype(np.float32)
        result = accumulated
        result["rotation"] = nearest_rotation(result["rotation"].reshape(num_frames, 3, 3))
        for name in ("vertices", "expression", "neutral"):
            result[name] = result[name].reshape(num_frames, -1, 3)
        return {name: value.astype(np.float32, copy=False) for name, value in result.items()}
