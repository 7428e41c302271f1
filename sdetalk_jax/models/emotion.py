"""The emotional embedding network (Fig. 3): mel spectrogram -> e, the classifier that reads the
emotion mixture y_e from it, the voice-statistics readout (`SDETalkConfig.emotion_statistics`), and
the steering of e to a requested emotion (emotion_control.py)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from sdetalk_jax.models.config import SDETalkConfig
from sdetalk_jax.models.layers import AttentionBlock
from sdetalk_jax.models.ops import clip_statistics, masked_mean, scaled_mel, sinusoidal_positions


def steer_embedding(embedding, mask, batch):
    """e'(t) = e(t) - (1 - w) mean(e) + target: the clip's own frame-to-frame variation kept, its
    mean (what the classifier reads) replaced by a requested clip-level embedding, blended with
    the inferred one by w = emotion_inferred_weight (1 and a zero target leave e as it is)."""
    keep = batch["emotion_inferred_weight"][:, None]
    shift = batch["emotion_target"] - (1.0 - keep) * masked_mean(embedding, mask)
    return embedding + shift[:, None, :]


class FrequencyAttention(nn.Module):
    """Per frame, attention across frequency bands with a learned summary token (like a ViT class
    token): each band token sees its values over a few neighbouring frames. Tokens are `dim` wide,
    with `heads` heads."""

    config: SDETalkConfig
    dim: int
    heads: int

    @nn.compact
    def __call__(self, mel, mask, deterministic: bool = True):  # mel [B, N, bins] -> [B, N, hidden]
        config = self.config
        batch, frames, bins = mel.shape
        bands = mel.reshape(
            batch, frames, config.frequency_bands, bins // config.frequency_bands
        ).mean(-1)
        half = config.frequency_window // 2
        padded = jnp.pad(bands, ((0, 0), (half, half), (0, 0)))
        windows = jnp.stack(
            [padded[:, i : i + frames] for i in range(config.frequency_window)], axis=-1
        )
        tokens = nn.Dense(self.dim, name="band_projection")(windows)  # [B, N, bands, dim]
        tokens = tokens + self.param(
            "band_embedding", nn.initializers.normal(0.02), (config.frequency_bands, self.dim)
        )
        summary = self.param("summary_token", nn.initializers.normal(0.02), (self.dim,))
        tokens = jnp.concatenate(
            [jnp.broadcast_to(summary, (batch, frames, 1, self.dim)), tokens], 2
        )
        tokens = tokens.reshape(batch * frames, config.frequency_bands + 1, self.dim)
        all_bands = jnp.ones(tokens.shape[:2], bool)
        tokens = AttentionBlock(
            self.dim, self.heads, 2 * self.dim, dropout=config.dropout, name="block"
        )(tokens, all_bands, deterministic=deterministic)
        summary_out = tokens[:, 0].reshape(batch, frames, self.dim)
        return nn.Dense(config.hidden, name="out")(summary_out) * mask[..., None]


class EmotionEmbeddingNetwork(nn.Module):
    """Mel spectrogram -> emotional embedding e [B, N, hidden] (Fig. 3): temporal attention and
    frequency attention with a summary token, sequentially (the paper) or side by side
    (`emotion_attention`), fused."""

    config: SDETalkConfig

    @nn.compact
    def __call__(self, mel, mask, deterministic: bool = True):
        config = self.config
        # A fixed scale, not a per-frame LayerNorm: normalising each frame would erase its
        # loudness, one of the prosodic cues of emotion.
        normalised = scaled_mel(mel)
        if config.mel_centring == "utterance":
            normalised = normalised - masked_mean(normalised, mask)[:, None]
        # Padded frames become exact zeros, as beyond the ends of an unpadded clip: the frequency
        # block's time windows then read the same values either way.
        normalised = normalised * mask[..., None]
        if config.emotion_attention == "sequential":
            bins = mel.shape[-1]
            temporal = AttentionBlock(
                bins, config.heads, config.feedforward, dropout=config.dropout, name="temporal"
            )(
                normalised + sinusoidal_positions(mel.shape[1], bins),
                mask,
                deterministic=deterministic,
            )
            temporal = temporal * mask[..., None]
            frequency = FrequencyAttention(
                config, config.hidden, config.heads, name="frequency"
            )(temporal, mask, deterministic)  # fmt: skip
        else:  # "parallel"
            temporal = nn.Dense(config.hidden, name="temporal_in")(normalised)
            temporal = temporal + sinusoidal_positions(mel.shape[1], config.hidden)
            temporal = AttentionBlock(
                config.hidden, config.heads, config.feedforward, dropout=config.dropout,
                name="temporal",
            )(temporal, mask, deterministic=deterministic)  # fmt: skip
            frequency = FrequencyAttention(
                config, config.frequency_dim, 2, name="frequency"
            )(normalised, mask, deterministic)  # fmt: skip
        fused = nn.Dense(config.hidden, name="fuse")(jnp.concatenate([temporal, frequency], -1))
        return nn.LayerNorm(name="fuse_norm")(fused) * mask[..., None]


class EmotionClassifier(nn.Module):
    """Global average pooling and two linear layers with GELU -> emotion mixture y_e (softmax),
    and beside y_e the logit of "spoken with emotion" (our addition, trained only when
    `loss.lambda_emotional` > 0; docs/paper-notes.md)."""

    config: SDETalkConfig

    @nn.compact
    def __call__(self, embedding, mask):
        pooled = masked_mean(embedding, mask)
        hidden = nn.gelu(nn.Dense(self.config.hidden, name="dense_0")(pooled))
        mixture = jax.nn.softmax(nn.Dense(self.config.num_emotions, name="dense_1")(hidden), -1)
        return mixture, nn.Dense(1, name="emotional")(hidden)[:, 0]


class StatisticsReadout(nn.Module):
    """`model.emotion_statistics`: the emotion mixture as softmax of a linear function of
    `clip_statistics`, standardised. `centre` and `scale` are the training clips' mean and
    standard deviation of each statistic (set before training:
    `networks.statistics_standardisation`) and are not trained; the kernel and bias start at
    zero (a uniform mixture). Returns (mixture [B, E], the kernel's squared norm: the ridge
    penalty `loss.lambda_statistics` weighs)."""

    config: SDETalkConfig

    @nn.compact
    def __call__(self, mel, mask):
        width = 3 * self.config.mel_bins
        centre = self.param("centre", nn.initializers.zeros, (width,))
        scale = self.param("scale", nn.initializers.ones, (width,))
        kernel = self.param("kernel", nn.initializers.zeros, (width, self.config.num_emotions))
        bias = self.param("bias", nn.initializers.zeros, (self.config.num_emotions,))
        standardised = (clip_statistics(mel, mask) - jax.lax.stop_gradient(centre)) / (
            jax.lax.stop_gradient(scale)
        )
        return jax.nn.softmax(standardised @ kernel + bias, -1), jnp.sum(jnp.square(kernel))
