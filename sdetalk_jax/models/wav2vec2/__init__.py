"""wav2vec 2.0 in Flax: the model, Hugging Face checkpoint conversion, and the feature cache."""

from sdetalk_jax.models.wav2vec2.convert import CheckpointError, load_pretrained
from sdetalk_jax.models.wav2vec2.model import (
    Wav2Vec2Config,
    Wav2Vec2Model,
    normalize_waveform,
    pad_batch,
)

__all__ = [
    "CheckpointError",
    "Wav2Vec2Config",
    "Wav2Vec2Model",
    "load_pretrained",
    "normalize_waveform",
    "pad_batch",
]
