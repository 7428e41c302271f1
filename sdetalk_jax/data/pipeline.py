"""From checked clips to model-ready examples and batches.

An example is a dict of numpy arrays for one clip (time axis first where there is one):

    vertices [N, V*3], neutral_vertices [N, V*3], template [V*3], subject [], mel [N, 128],
    audio [N * samples_per_frame], emotion [C], rotation [N, 3, 3], translation [N, 3],
    has_head_pose [], has_emotion [], has_neutral [], emotional [], num_frames []
    context [N, hidden]   only with a context encoder: frozen wav2vec 2.0 states aligned by Eq. 1

Missing annotations are filled with neutral values (identity rotation, zero translation, uniform
emotion) and flagged, so every loss can mask what a clip does not have.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from sdetalk_jax import audio
from sdetalk_jax.data import batching, biwi, clip_files


class ContextFeatures(Protocol):
    """Anything that turns an audio file into per-audio-frame features (a `ContextEncoder`)."""

    def encode_file(self, path: str) -> np.ndarray: ...


@dataclasses.dataclass
class ClipDataset:
    """The usable clips of one split, with audio features computed once and kept in memory.

    With a `context_encoder` (frozen wav2vec 2.0, usually with an on-disk cache) each example also
    carries `context`, the encoder's states interpolated to the face frames (Eq. 1).
    """

    corpus: biwi.Corpus
    clips: list[biwi.Clip]
    identity_subjects: tuple[str, ...]
    context_encoder: ContextFeatures | None = None

    def __post_init__(self):
        self._audio_cache: dict[str, tuple[np.ndarray, ...]] = {}

    @classmethod
    def from_corpus(
        cls,
        corpus: biwi.Corpus,
        split: str,
        identity_subjects: Sequence[str],
        context_encoder: ContextFeatures | None = None,
    ) -> ClipDataset:
        clips = corpus.split(split)
        if not clips:
            raise biwi.DataError(f"{corpus.root}: split '{split}' has no usable clips")
        return cls(corpus, clips, tuple(identity_subjects), context_encoder)

    @property
    def samples_per_frame(self) -> int:
        return audio.samples_per_frame(self.corpus.fps)

    @property
    def time_scale(self) -> dict[str, int]:
        frame_keys = ("vertices", "neutral_vertices", "mel", "rotation", "translation", "context")
        return {**dict.fromkeys(frame_keys, 1), "audio": self.samples_per_frame}

    @property
    def lengths(self) -> list[int]:
        return [clip.num_frames for clip in self.clips]

    def subject_index(self, subject: str) -> int:
        """One-hot identity index, or -1 for a speaker unseen in training (test-B)."""
        return self.identity_subjects.index(subject) if subject in self.identity_subjects else -1

    def compute_audio_features(self, between_clips=None, progress: bool = False) -> None:
        """Computes every clip's audio features now (through the encoder's on-disk cache, where it
        has them) and lets go of the context encoder, which nothing asks for again: otherwise
        training would hold its weights throughout (wav2vec2-base: 380 MB). `between_clips()` is
        called after each clip (a check for a stop request)."""
        from tqdm import tqdm

        for clip in tqdm(self.clips, desc="audio features", unit="clip", disable=not progress):
            self._audio_features(clip)
            if between_clips is not None:
                between_clips()
        self.context_encoder = None

    def _audio_features(self, clip: biwi.Clip) -> tuple[np.ndarray, ...]:
        """(waveform, mel[, context]) of a clip, computed once."""
        if clip.name not in self._audio_cache:
            span = clip.num_frames * self.samples_per_frame
            waveform = audio.load_audio(clip.audio_path, allow_silence=True)
            waveform = batching.pad_along_time(waveform, span)
            features = (waveform, audio.frame_aligned_log_mel(waveform, clip.num_frames))
            if self.context_encoder is not None:
                # The same span of audio as the mel, as at inference: not the whole file
                # stretched over the track.
                hidden = self.context_encoder.encode_file(clip.audio_path, num_samples=span)
                features += (audio.interpolate_frames(hidden, clip.num_frames),)
            self._audio_cache[clip.name] = features
        return self._audio_cache[clip.name]

    def log_mel(self, index: int) -> np.ndarray:
        """The frame-aligned 128-bin log-mel spectrogram [N, bins] of clip `index`."""
        return self._audio_features(self.clips[index])[1]

    def example(self, index: int) -> dict[str, np.ndarray]:
        clip = self.clips[index]
        n = clip.num_frames
        vertices = clip_files.load_vertices(clip.vertices_path)
        waveform, mel, *context = self._audio_features(clip)
        if clip.head_pose_path is not None:
            rotation, translation = clip_files.load_head_pose(clip.head_pose_path)
        else:
            rotation = np.broadcast_to(np.eye(3, dtype=np.float32), (n, 3, 3)).copy()
            translation = np.zeros((n, 3), np.float32)
        num_categories = max(len(self.corpus.emotion_categories), 1)
        if clip.emotion is not None:
            emotion = clip.emotion / clip.emotion.sum()
        else:
            emotion = np.full((num_categories,), 1.0 / num_categories, np.float32)
        if clip.neutral_vertices_path is not None:
            neutral = clip_files.load_vertices(clip.neutral_vertices_path)
        else:
            neutral = vertices
        example = {
            "vertices": vertices,
            "neutral_vertices": neutral,
            "template": self.corpus.templates[clip.subject].reshape(-1),
            "subject": np.int32(self.subject_index(clip.subject)),
            "mel": mel,
            "audio": waveform,
            "emotion": emotion.astype(np.float32),
            "rotation": rotation,
            "translation": translation,
            "has_head_pose": np.bool_(clip.head_pose_path is not None),
            "has_emotion": np.bool_(clip.emotion is not None),
            # A neutral recording is its own neutral target; an emotional one needs its aligned track.
            "has_neutral": np.bool_(clip.neutral_vertices_path is not None or not clip.emotional),
            "emotional": np.bool_(clip.emotional),  # spoken with emotion (not the neutral take)
            "num_frames": np.int32(n),
        }
        if context:
            example["context"] = context[0]
        return example

    def batches(
        self,
        *,
        global_batch: int,
        buckets: Sequence[int],
        seed: int,
        epoch: int,
        shuffle: bool = True,
        process_index: int = 0,
        process_count: int = 1,
        start_batch: int = 0,
    ):
        """(batch_index, batch) pairs of one epoch for this process; see `batching.epoch_plan`."""
        plans = batching.epoch_plan(
            self.lengths,
            global_batch=global_batch,
            buckets=buckets,
            seed=seed,
            epoch=epoch,
            shuffle=shuffle,
        )
        return batching.iterate_batches(
            plans,
            self.example,
            time_scale=self.time_scale,
            process_index=process_index,
            process_count=process_count,
            start_batch=start_batch,
        )


# What the networks read of a batch: their inputs, and the targets that training and validation
# compare with. Everything else (raw audio, frame counts) stays on the host.
INPUT_KEYS = ("context", "mel", "template", "frame_mask")
TARGET_KEYS = (
    "vertices", "neutral_vertices", "rotation", "translation", "emotion", "subject",
    "has_head_pose", "has_emotion", "has_neutral", "emotional", "clip_mask",
)  # fmt: skip


def identity_onehot(subjects, num_subjects: int) -> np.ndarray:
    """One-hot identities [B, num_subjects] of subject indices [B]; an unseen speaker (-1) gets
    zeros."""
    subjects = np.asarray(subjects)
    return (subjects[:, None] == np.arange(num_subjects)[None]).astype(np.float32)


def model_batch(features, subjects, num_subjects: int, *, targets: bool = True) -> dict:
    """The one way a model batch is made, in training, evaluation and inference: from per-clip
    features already computed and stacked ([B, N, ...]: context, mel, frame_mask; template
    [B, V*3]; with `targets`, the TARGET_KEYS of a batch from `ClipDataset.batches`) and the
    identity whose speaking style to use for each row (`subjects` [B], -1 for none), as numpy."""
    keys = INPUT_KEYS + (TARGET_KEYS if targets else ())
    batch = {key: np.asarray(features[key]) for key in keys}
    batch["subject_onehot"] = identity_onehot(subjects, num_subjects)
    return batch


def mean_emotion_mixture(clips) -> np.ndarray | None:
    """The mean of the clips' emotion labels, each normalised to sum to one (float64), or None when
    none is labelled: the 'training mean' baseline of the emotion error."""
    labelled = [clip.emotion / clip.emotion.sum() for clip in clips if clip.emotion is not None]
    return np.mean(labelled, 0) if labelled else None
