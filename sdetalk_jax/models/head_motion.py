"""The head noise path (`SDETalkConfig.head_noise_path`, ours; docs/paper-notes.md): a sample's head
turns with angular velocity gain(t) * n(t) per axis, integrated over time, where n comes from the
sample's noise and the gain is predicted by G from the speech. How fast the head moves, and how it
splits between nodding and shaking, is G's to predict; the direction of each movement is the
noise's."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from sdetalk_jax.models.config import HEAD_NOISE_KINDS, SDETalkConfig
from sdetalk_jax.models.ops import (
    gaussian_smooth,
    loudness_window,
    masked_mean,
    rotation_from_vector,
)


def head_noise(noise, mask, kind: str) -> jax.Array:
    """The head noise path's n [B, N, 3] from the (smoothed) noise z [B, N, D] (mask [B, N]):
    "gaussian": its first three channels;
    "signed": each channel over its own root mean square within a Gaussian of 1 frame, about +-1
      but for a short passage through 0 where the channel changes sign, then rescaled to a mean
      |n_k| of 1 over the clip's real frames: every axis turns at the gain's speed at every moment,
      and the noise only chooses which way and when it reverses."""
    if kind not in HEAD_NOISE_KINDS:
        raise ValueError(f"model.head_noise must be one of {HEAD_NOISE_KINDS}, not {kind!r}")
    channels = noise[..., :3]
    if kind == "gaussian":
        return channels
    local = gaussian_smooth(jnp.square(channels), mask, 1.0)
    signed = channels / jnp.sqrt(local + 1e-6)
    return signed / (masked_mean(jnp.abs(signed), mask) + 1e-6)[:, None]


def head_noise_mean_abs(kind: str) -> float:
    """E|n_k| per axis of `head_noise`: sqrt(2 / pi) for a unit Gaussian, 1 for "signed", which is
    scaled to it."""
    if kind not in HEAD_NOISE_KINDS:
        raise ValueError(f"model.head_noise must be one of {HEAD_NOISE_KINDS}, not {kind!r}")
    return math.sqrt(2 / math.pi) if kind == "gaussian" else 1.0


def head_gain_cues(mel, mask, embedding, config: SDETalkConfig):
    """[B, N, K] or None: what the head noise path's gain reads beside G's features, by config:
    the loudness window (`head_gain_loudness_frames`) and the clip's emotion (`head_gain_emotion`:
    e averaged over the clip's real frames)."""
    if not config.head_noise_path:
        return None
    cues = []
    if config.head_gain_loudness_frames > 0:
        cues.append(loudness_window(mel, mask, config.head_gain_loudness_frames))
    if config.head_gain_emotion == "embedding":
        per_clip = masked_mean(embedding, mask)
        cues.append(jnp.broadcast_to(per_clip[:, None], mask.shape + per_clip.shape[-1:]))
    return jnp.concatenate(cues, -1) if cues else None


def integrate_velocity(velocity, mask, drift_frames: float):
    """Angles [B, N, 3] from angular velocities per frame [B, N, 3]: their running sum over real
    frames, less its Gaussian-smoothed drift (`drift_frames`), so the angle stays near its mean."""
    angle = jnp.cumsum(velocity * mask[..., None].astype(velocity.dtype), axis=1)
    return angle - gaussian_smooth(angle, mask, drift_frames)


def head_gain(features, speech_cues, config: SDETalkConfig, dense):
    """The gain [B, N, 3] >= 0: angular speed per noise unit, from G's output features [B, N, H]
    and `head_gain_cues` (or None), through the layers `dense(name, use_bias)`. It starts at
    0.003 rad (0.17 deg) per frame, in log units of `head_gain_log_scale` per output unit, so that
    an optimiser step of lr changes it by about head_gain_log_scale * lr relative (as
    motion_unit does for vertices) and it can follow the speech within a short run."""
    if config.head_gain_detached:
        features = jax.lax.stop_gradient(features)
    log_gain = dense("head_gain", True)(features)
    if speech_cues is not None:
        log_gain = log_gain + dense("head_gain_cues", False)(speech_cues)
    log_gain = config.head_gain_log_scale * log_gain
    return 0.003 * jnp.exp(jnp.clip(log_gain, -10.0, 5.0))


def sample_head(mean_rotation, mean_translation, gain, turn_noise, mask, config: SDETalkConfig):
    """(the sample's rotation, its translation, the mean head's rotation and translation, the
    turn [B, N, 3, 3]) of the head noise path: the mean head is G's pose at z = 0 or the rest pose
    (`head_mean_pose`), and the sample's head is the mean head turned by the integral of
    gain * n. The mean head carries no noise, so nothing but this path moves it from sample to
    sample."""
    if config.head_mean_pose == "rest":
        mean_rotation = jnp.broadcast_to(jnp.eye(3), mean_rotation.shape)
        mean_translation = jnp.zeros_like(mean_translation)
    angle = integrate_velocity(gain * turn_noise, mask, config.head_drift_frames)
    turn = rotation_from_vector(angle)
    return turn @ mean_rotation, mean_translation, mean_rotation, mean_translation, turn
