"""The SDETalk networks (paper Sec. 2.1) in Flax linen.

    Generator      identity p, neutral face f^n (Eq. 2), emotional embedding e, emotion mixture y_e,
                   diversified embedding e~, emotional face f^e, head pose R, T (Eq. 3), f (Eq. 4)
    Discriminator  consistency discriminator D on (e, f): real/fake, identity, emotion mixture
    MIEstimators   vCLUB variational networks q(y|x) for (p, c), (p, e), (c, e) (Eq. 6)

The frozen context encoder (wav2vec 2.0) runs outside: the generator takes its states already
aligned to the face frames (Eq. 1), which is what lets them be cached. Interpretations of what the
paper leaves open are in docs/paper-notes.md.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero


@dataclasses.dataclass(frozen=True)
class SDETalkConfig:
    num_vertices: int
    context_dim: int
    num_subjects: int
    num_emotions: int
    mel_bins: int = 128
    hidden: int = 128  # "128 hidden nodes" (Sec. 3)
    heads: int = 4  # "4 attention heads"
    decoder_blocks: int = 2  # N_d = 2
    feedforward: int = 256
    identity_dim: int = 32
    frequency_bands: int = 32  # mel bins are pooled into bands, one token each
    frequency_dim: int = 32
    frequency_window: int = 5  # frames of context per band token
    # How the emotion network joins its two attention blocks. "sequential", the paper's (Sec. 2.1,
    # configs/biwi.py): the temporal block works on the mel's own bins (so each channel of its
    # output is still a mel bin, through the residual path; 128 bins = `hidden` in the paper),
    # the frequency block attends across the bands of that output at `heads` and `hidden`, and the
    # two outputs are fused. "parallel", ours (docs/training.md has the ablation): both read the
    # mel, the frequency block at 2 heads and `frequency_dim`; the default, so that runs saved
    # before the option existed are rebuilt as they were trained.
    emotion_attention: str = "parallel"
    discriminator_blocks: int = 2
    # Residual dropout in the generator's attention blocks during training (the paper is silent;
    # 0.1 is PyTorch's transformer default). Evaluation and inference are deterministic.
    dropout: float = 0.0
    # A learned log-mel baseline per training speaker, subtracted from the emotion network's input
    # (our addition, docs/paper-notes.md): emotion is heard as a deviation from a speaker's own voice.
    speaker_baseline: bool = False
    # "utterance", ours (docs/paper-notes.md): the emotion network's input minus its own mean over
    # the clip's frames, per mel bin, so that it hears how the voice moves within the utterance and
    # no speaker's level (for any voice, no lookup by speaker); it makes `speaker_baseline`, a
    # constant over the clip, a no-op. "none": the mel as it is (the paper).
    mel_centring: str = "none"
    # Our addition (issue 15, docs/paper-notes.md): y_e is read from the clip's log-mel summary
    # (`clip_statistics`, standardised by the training clips' spread) by one linear layer kept
    # small by `loss.lambda_statistics` (a ridge), which holds for voices never heard where a
    # classifier on e learns the training voices. e's classifier is still trained by L_cls, so e
    # stays emotional for G. False: y_e is the classifier on e (the paper).
    emotion_statistics: bool = False
    # Standard deviation, in frames, of a Gaussian that smooths the noise z over time before the
    # diversity mapping (0: the paper's independent noise per frame). Our addition
    # (docs/paper-notes.md): smooth noise gives each sample head motion with a direction of its
    # own that still moves at a head's pace, where per-frame noise can only make jitter.
    noise_smoothing_frames: float = 0.0
    # G's cross-attention sees e~ only within this many frames of the query's frame (0: all
    # frames, the paper). Our addition (docs/paper-notes.md), like FaceFormer's alignment bias:
    # without it the keys carry no position, attention averages the noise of many frames, and a
    # sample's motion cannot follow its own noise.
    cross_attention_window: int = 0
    # Our addition (docs/paper-notes.md): the head also turns with angular velocity gain(t) * n(t)
    # per axis, integrated over time, with n three channels of the (smoothed) noise and gain >= 0
    # read from G's output features: how fast the head moves at each moment, and how it splits
    # between nodding and shaking, is G's to predict from the speech; the direction of each
    # movement is the noise's. At z = 0 it adds nothing.
    head_noise_path: bool = False
    # What n is in the head noise path (`head_noise`). "gaussian": three channels of the smoothed
    # noise, N(0, 1) per axis and frame, so a sample's speed is gain * |n| and varies from frame to
    # frame as much as the gain does. Our options (docs/paper-notes.md): "direction", "balanced"
    # and "signed", in which the gain alone sets how fast the head turns at each moment and, for
    # the last two, how it splits between nodding and shaking, and the noise only which way.
    head_noise: str = "gaussian"
    # The integrated angle forgets its slow drift over about this many frames (a Gaussian
    # high-pass), so that the head returns towards its mean pose as a speaker's does.
    head_drift_frames: float = 50.0
    # Log-gain per output unit of the head noise path's gain layer (see EmotionalFaceGenerator).
    head_gain_log_scale: float = 10.0
    # Our option (docs/paper-notes.md): the gain also reads the speech's loudness (`loudness_window`)
    # over this many frames up to its own, a direct path for "the head moves with the stressed
    # syllables" beside G's features. 0: G's features only.
    head_gain_loudness_frames: int = 0
    # Our option: the gain also reads the clip's emotion, the same at every frame: how far and how
    # the head moves is the emotion's style, "nodding for positive, shaking for negative
    # reactions" (Sec. 1). "mixture": y_e, its gradient stopped (the head does not bend the
    # classifier); "embedding": e averaged over the clip, so that the head terms also teach the
    # emotion network what in the voice sets the head's style; "none".
    head_gain_emotion: str = "none"
    # Our option: G's features enter the gain with their gradient stopped, so that the head
    # path's terms (style, gain, and D and L_d through the samples) do not reshape G's attention
    # blocks, which the face is read from (with head_gain_emotion = "embedding" they still teach
    # the emotion network, by design).
    head_gain_detached: bool = False
    # Our option: a sample's head is the noise path's turn of the mean head with the mean head's
    # gradient stopped, so that the mean head is learnt by L_r and L_t at z = 0 alone (with
    # loss.head_reconstruction = "mean") and the terms on samples (D, L_d, style) shape the turn.
    head_mean_detached: bool = False
    # Our option: the mean head (G's pose at z = 0, the base a sample's turn is applied to) is
    # averaged over time by a Gaussian of this many frames (`smooth_head_pose`). Per-frame L2 at
    # the paper's weight leaves it jittering at about a third of a speaker's speed, motion that
    # follows neither the speech nor the emotion and that every sample inherits. 0: as G gives it.
    head_mean_smoothing_frames: float = 0.0
    # Our option, with the head noise path: "learned", the mean head is G's pose at z = 0;
    # "rest", it is the rest pose (identity rotation, no translation), so the head moves only by
    # the noise path and stands still at z = 0. For a corpus whose head pose is high-passed around
    # the rest pose (SynthBIWI), the rest pose is the per-frame optimum that a learned mean head
    # only approaches.
    head_mean_pose: str = "learned"
    # Metres per network output unit for vertex and translation outputs: the heads predict
    # millimetres, so an optimiser step of lr moves a vertex by about lr mm, not lr metres.
    motion_unit: float = 1e-3

    def __post_init__(self):
        if self.mel_centring not in ("none", "utterance"):
            raise ValueError(
                f"model.mel_centring is {self.mel_centring!r}: 'none' (the paper) or 'utterance'"
            )
        if self.mel_centring == "utterance" and self.speaker_baseline:
            raise ValueError(
                "model.speaker_baseline does nothing under model.mel_centring = 'utterance' (a "
                "level constant over the clip is centred away): set speaker_baseline to False"
            )

    @classmethod
    def from_config(cls, config, **derived) -> SDETalkConfig:
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in dict(config).items() if k in fields}
        if values.get("head_noise_path") and "head_gain_log_scale" not in values:
            # Such a run's gain layer is softplus(Dense) with a bias near -5.8, which the log-gain
            # reading would clip to nothing: the head would silently stop turning.
            raise ValueError(
                "this run's head noise path predates the log-scaled gain (model.head_gain_log_scale)"
                " and cannot be rebuilt by this version; train it again"
            )
        values.update(derived)
        return cls(**values)

    @classmethod
    def for_run(
        cls,
        run_config,
        *,
        num_vertices: int,
        context_dim: int,
        num_subjects: int,
        num_emotions: int,
    ) -> SDETalkConfig:
        """The networks of a run: `run_config.model` with the sizes its data gives (the trainer
        reads them from the corpus, inference from the run's saved assets)."""
        return cls.from_config(
            run_config.model,
            num_vertices=num_vertices,
            context_dim=context_dim,
            num_subjects=num_subjects,
            num_emotions=max(num_emotions, 1),
            motion_unit=1.0 / run_config.loss.vertex_scale,
        )


def sinusoidal_positions(length: int, dim: int) -> jnp.ndarray:
    position = np.arange(length)[:, None]
    rate = np.exp(-np.log(10_000.0) * np.arange(0, dim, 2) / dim)
    table = np.zeros((length, dim), np.float32)
    table[:, 0::2] = np.sin(position * rate)
    table[:, 1::2] = np.cos(position * rate)
    return jnp.asarray(table)


def masked_mean(values: jax.Array, mask: jax.Array, axis: int = 1) -> jax.Array:
    """Mean over `axis` of values [B, N, ...] counting only frames where mask [B, N] is true."""
    weights = mask.astype(values.dtype).reshape(mask.shape + (1,) * (values.ndim - mask.ndim))
    total = jnp.sum(values * weights, axis=axis)
    count = jnp.maximum(jnp.sum(weights, axis=axis), 1.0)
    return total / count


def gaussian_kernel(frames: int, width: float) -> jax.Array:
    """[N, N] weights exp(-(t - s)^2 / (2 width^2)) between frames t and s."""
    positions = jnp.arange(frames, dtype=jnp.float32)
    return jnp.exp(-0.5 * jnp.square((positions[:, None] - positions[None]) / width))


def smooth_noise(noise, mask, width: float):
    """Noise z [B, N, D] smoothed over time by a Gaussian of standard deviation `width` frames,
    over real frames only (mask [B, N]), and rescaled so that each frame is again N(0, I): the
    same clip gets the same smoothed noise whatever its padding. width 0: z unchanged."""
    if width <= 0:
        return noise
    kernel = gaussian_kernel(noise.shape[1], width)
    weights = mask.astype(noise.dtype)
    smoothed = jnp.einsum("ts,bs,bsd->btd", kernel, weights, noise)
    # The sum of independent N(0, 1) with these weights has variance sum(kernel^2).
    variance = jnp.einsum("ts,bs->bt", jnp.square(kernel), weights)
    return smoothed / jnp.sqrt(jnp.maximum(variance, 1e-12))[..., None]


HEAD_NOISE_KINDS = ("gaussian", "direction", "balanced", "signed")


def head_noise(noise, mask, kind: str) -> jax.Array:
    """The head noise path's n [B, N, 3] from the (smoothed) noise z [B, N, D] (mask [B, N]):
    "gaussian": its first three channels;
    "direction": their direction times sqrt(3), so |n| = sqrt(3) at every frame and E[n_k^2] = 1
      as for the Gaussian;
    "balanced": the direction with each axis rescaled to a mean square of 1 over the clip's real
      frames, so that a sample's split between nodding and shaking is the gain's, not the luck of
      its draw (|n| stays near sqrt(3));
    "signed": each channel over its own root mean square within a Gaussian of 1 frame, about +-1
      but for a short passage through 0 where the channel changes sign, then rescaled to a mean
      |n_k| of 1 over the clip's real frames: every axis turns at the gain's speed at every moment,
      and the noise only chooses which way and when it reverses."""
    channels = noise[..., :3]
    if kind == "gaussian":
        return channels
    if kind not in HEAD_NOISE_KINDS:
        raise ValueError(f"model.head_noise must be one of {HEAD_NOISE_KINDS}, not {kind!r}")
    if kind == "signed":
        local = gaussian_smooth(jnp.square(channels), mask, 1.0)
        signed = channels / jnp.sqrt(local + 1e-6)
        return signed / (masked_mean(jnp.abs(signed), mask) + 1e-6)[:, None]
    norm = jnp.sqrt(jnp.sum(jnp.square(channels), -1, keepdims=True) + 1e-12)
    direction = math.sqrt(3.0) * channels / norm
    if kind == "direction":
        return direction
    mean_square = masked_mean(jnp.square(direction), mask)  # [B, 3]
    return direction / jnp.sqrt(mean_square + 1e-12)[:, None]


def check_head_options(config: SDETalkConfig) -> None:
    """A clear error for head options that are unknown or do nothing together."""
    if config.head_noise not in HEAD_NOISE_KINDS:
        raise ValueError(
            f"model.head_noise must be one of {HEAD_NOISE_KINDS}, not {config.head_noise!r}"
        )
    if config.head_mean_pose not in ("learned", "rest"):
        raise ValueError(
            f'model.head_mean_pose must be "learned" or "rest", not {config.head_mean_pose!r}'
        )
    if config.head_mean_pose == "rest" and not config.head_noise_path:
        raise ValueError(
            'model.head_mean_pose = "rest" needs model.head_noise_path: the head would never move'
        )


def head_noise_mean_abs(kind: str) -> float:
    """E|n_k| per axis of `head_noise`: sqrt(2 / pi) for a unit Gaussian; sqrt(3) / 2 for the
    direction, whose components are uniform on [-1, 1] (Archimedes) before the sqrt(3); 1 for
    "signed", which is scaled to it."""
    if kind == "gaussian":
        return math.sqrt(2 / math.pi)
    if kind in ("direction", "balanced"):
        return math.sqrt(3.0) / 2
    if kind == "signed":
        return 1.0
    raise ValueError(f"model.head_noise must be one of {HEAD_NOISE_KINDS}, not {kind!r}")


def scaled_mel(mel):
    """The emotion network's input scale: log-mel values lie in about [-14, 6]."""
    return (mel + 4.0) / 5.0


def clip_statistics(mel, mask) -> jax.Array:
    """[B, 3 bins]: per bin of the scaled log-mel [B, N, bins], the clip's mean over its real
    frames (mask [B, N]), its standard deviation and its mean absolute change from one real frame
    to the next: the summary from which benchmarks/unseen_emotion_ceiling.py's probes tell emotion
    for voices never heard. Padding changes nothing."""
    values = scaled_mel(mel)
    mean = masked_mean(values, mask)
    spread = jnp.sqrt(masked_mean(jnp.square(values - mean[:, None]), mask) + 1e-6)
    step_mask = mask[:, 1:] & mask[:, :-1]
    change = masked_mean(jnp.abs(jnp.diff(values, axis=1)), step_mask)
    return jnp.concatenate([mean, spread, change], -1)


def loudness_window(mel, mask, frames: int) -> jax.Array:
    """[B, N, frames]: each frame's loudness (mean log-mel, standardised over the clip's real
    frames: louder or softer than this clip usually is) and that of the `frames - 1` frames before
    it; zero before the clip and on padding, so that padding changes nothing."""
    level = mel.mean(-1)[..., None]
    centred = level - masked_mean(level, mask)[:, None]
    spread = jnp.sqrt(masked_mean(jnp.square(centred), mask) + 1e-6)[:, None]
    level = (centred / spread)[..., 0] * mask.astype(mel.dtype)
    padded = jnp.pad(level, ((0, 0), (frames - 1, 0)))
    length = level.shape[1]
    window = jnp.stack(
        [padded[:, frames - 1 - k : frames - 1 - k + length] for k in range(frames)], -1
    )
    return window * mask[..., None].astype(mel.dtype)


def head_gain_cues(mel, mask, mixture, embedding, config):
    """[B, N, K] or None: what the head noise path's gain reads beside G's features, by config:
    the loudness window (`head_gain_loudness_frames`) and the clip's emotion (`head_gain_emotion`:
    the mixture y_e with its gradient stopped, or e averaged over the clip's real frames)."""
    if not config.head_noise_path:
        return None
    cues = []
    if config.head_gain_loudness_frames > 0:
        cues.append(loudness_window(mel, mask, config.head_gain_loudness_frames))
    emotion = {
        "none": None,
        "mixture": lambda: jax.lax.stop_gradient(mixture),
        "embedding": lambda: masked_mean(embedding, mask),
    }
    if config.head_gain_emotion not in emotion:
        raise ValueError(
            f"model.head_gain_emotion is {config.head_gain_emotion!r}: one of {', '.join(emotion)}"
        )
    if emotion[config.head_gain_emotion] is not None:
        per_clip = emotion[config.head_gain_emotion]()
        cues.append(jnp.broadcast_to(per_clip[:, None], mask.shape + per_clip.shape[-1:]))
    return jnp.concatenate(cues, -1) if cues else None


def steer_embedding(embedding, mask, batch):
    """e'(t) = e(t) - (1 - w) mean(e) + target: the clip's own frame-to-frame variation kept, its
    mean (what the classifier reads) replaced by a requested clip-level embedding, blended with
    the inferred one by w = emotion_inferred_weight (1 and a zero target leave e as it is)."""
    keep = batch["emotion_inferred_weight"][:, None]
    shift = batch["emotion_target"] - (1.0 - keep) * masked_mean(embedding, mask)
    return embedding + shift[:, None, :]


def coordinate_rows(faces):
    """[..., V*3] (x, y, z of each vertex in turn) -> [..., 3, V]: one row per coordinate axis."""
    return jnp.swapaxes(faces.reshape(faces.shape[:-1] + (-1, 3)), -1, -2)


def pose_rows(rows, rotation, translation):
    """Eq. 4 on coordinate rows: rows [B, N, 3, V] (`coordinate_rows`), rotation [B, N, 3, 3]
    (row vectors times R), translation [B, N, 3] -> posed rows [B, N, 3, V] (R^T times the rows,
    plus T). XLA's CPU backend runs this, forward and backward, 3x faster than a batch of
    [V, 3] x [3, 3] products on the vertices (benchmarks/vertex_layers.py). Always in float32,
    whatever `train.matmul_precision` asks: the rows are positions (0.1 m) whose motion is
    a thousandth of that, which TF32 or bfloat16 inputs would round away."""
    return (
        jnp.einsum("bnij,bniv->bnjv", rotation, rows, precision=jax.lax.Precision.HIGHEST)
        + translation[..., None]
    )


def pose_faces(faces, rotation, translation):
    """f = f^e R + T (Eq. 4): faces [B, N, V*3], rotation [B, N, 3, 3] (row vectors times R),
    translation [B, N, 3] -> posed faces [B, N, V*3]."""
    posed = pose_rows(coordinate_rows(faces), rotation, translation)
    return jnp.swapaxes(posed, -1, -2).reshape(faces.shape)


def rotation_from_6d(raw: jax.Array) -> jax.Array:
    """Continuous 6-D rotation parameters [..., 6] -> rotation matrices [..., 3, 3] (Gram-Schmidt,
    Zhou et al. 2019). Rows are the orthonormal basis; used as f^e @ R (Eq. 4)."""
    a1, a2 = raw[..., :3], raw[..., 3:]
    b1 = a1 / (jnp.linalg.norm(a1, axis=-1, keepdims=True) + 1e-8)
    a2 = a2 - jnp.sum(b1 * a2, axis=-1, keepdims=True) * b1
    b2 = a2 / (jnp.linalg.norm(a2, axis=-1, keepdims=True) + 1e-8)
    b3 = jnp.cross(b1, b2)
    return jnp.stack([b1, b2, b3], axis=-2)


def gaussian_smooth(values, mask, width: float):
    """Gaussian-weighted mean over time (standard deviation `width` frames) of values [B, N, K] over
    real frames only (mask [B, N], or weights): each frame's value over its neighbourhood."""
    kernel = gaussian_kernel(values.shape[1], width)
    weights = mask.astype(values.dtype)
    total = jnp.einsum("ts,bs,bsk->btk", kernel, weights, values)
    return total / jnp.maximum(jnp.einsum("ts,bs->bt", kernel, weights), 1e-6)[..., None]


def smooth_head_pose(rotation, translation, mask, width: float):
    """The head pose [B, N, 3, 3] and [B, N, 3] averaged over time by a Gaussian of `width` frames
    over real frames: the rotation through its first two rows (its 6-D parameters) and
    Gram-Schmidt, so that the result is again a rotation."""
    batch, frames = mask.shape
    rows = rotation[..., :2, :].reshape(batch, frames, 6)
    real = mask[..., None].astype(bool)
    # Padded frames keep their own pose: far from every real frame their smoothed rows would be
    # zero, and Gram-Schmidt's gradient at zero is NaN (which a mask cannot multiply away).
    rows = jnp.where(real, gaussian_smooth(rows, mask, width), rows)
    translation = jnp.where(real, gaussian_smooth(translation, mask, width), translation)
    return rotation_from_6d(rows), translation


def integrate_velocity(velocity, mask, drift_frames: float):
    """Angles [B, N, 3] from angular velocities per frame [B, N, 3]: their running sum over real
    frames, less its Gaussian-smoothed drift (`drift_frames`), so the angle stays near its mean."""
    angle = jnp.cumsum(velocity * mask[..., None].astype(velocity.dtype), axis=1)
    return angle - gaussian_smooth(angle, mask, drift_frames)


def rotation_from_vector(vector: jax.Array) -> jax.Array:
    """Rotation matrices [..., 3, 3] from axis * angle vectors [..., 3] (Rodrigues), such that
    `metrics.head_rotation_vectors` reads the vector back: x nods, y shakes, z tilts. Written with
    sin(t)/t and (1 - cos t)/t^2 so that the gradient at the zero vector is finite."""
    x, y, z = vector[..., 0], vector[..., 1], vector[..., 2]
    zero = jnp.zeros_like(x)
    skew = jnp.stack(
        [jnp.stack([zero, -z, y], -1), jnp.stack([z, zero, -x], -1), jnp.stack([-y, x, zero], -1)],
        axis=-2,
    )
    angle = jnp.sqrt(jnp.sum(jnp.square(vector), -1) + 1e-12)[..., None, None]
    first = jnp.sin(angle) / angle
    second = (1 - jnp.cos(angle)) / jnp.square(angle)
    return jnp.eye(3) + first * skew + second * (skew @ skew)


class AttentionBlock(nn.Module):
    """Post-LayerNorm transformer block: self-attention, optional cross-attention, feed-forward,
    each branch with residual dropout (active only when not `deterministic`)."""

    hidden: int
    heads: int
    feedforward: int
    cross: bool = False
    dropout: float = 0.0

    @nn.compact
    def __call__(
        self, x, mask, memory=None, memory_mask=None, deterministic: bool = True, cross_window=0
    ):
        def drop(branch):
            return nn.Dropout(self.dropout)(branch, deterministic=deterministic)

        self_mask = nn.make_attention_mask(mask, mask)
        attended = nn.MultiHeadDotProductAttention(
            self.heads, qkv_features=self.hidden, name="self_attention"
        )(x, x, mask=self_mask)
        x = nn.LayerNorm(name="norm_self")(x + drop(attended))
        if self.cross:
            cross_mask = nn.make_attention_mask(mask, memory_mask)
            if cross_window > 0:
                frames = jnp.arange(x.shape[1])
                near = jnp.abs(frames[:, None] - jnp.arange(memory.shape[1])[None]) <= cross_window
                cross_mask = cross_mask * near[None, None]
            attended = nn.MultiHeadDotProductAttention(
                self.heads, qkv_features=self.hidden, name="cross_attention"
            )(x, memory, mask=cross_mask)
            x = nn.LayerNorm(name="norm_cross")(x + drop(attended))
        hidden = nn.Dense(self.feedforward, name="feedforward_in")(x)
        hidden = nn.Dense(self.hidden, name="feedforward_out")(drop(nn.gelu(hidden)))
        return nn.LayerNorm(name="norm_feedforward")(x + drop(hidden))


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
    def __call__(self, mel, mask, subject_onehot=None, deterministic: bool = True):
        config = self.config
        # A fixed scale, not a per-frame LayerNorm: normalising each frame would erase its
        # loudness, one of the prosodic cues of emotion.
        normalised = scaled_mel(mel)
        if config.speaker_baseline:
            # Louder, faster or higher than *this* speaker usually is: without the speaker's level
            # the same recording is calm for one voice and aroused for another. The trainer starts
            # it at each speaker's mean (networks.speaker_mel_baseline); an unknown speaker (zero
            # one-hot) gets none.
            baseline = nn.Dense(
                mel.shape[-1], use_bias=False, kernel_init=nn.initializers.zeros,
                name="speaker_baseline",
            )(subject_onehot)  # fmt: skip
            normalised = normalised - baseline[:, None]
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
        elif config.emotion_attention == "parallel":
            temporal = nn.Dense(config.hidden, name="temporal_in")(normalised)
            temporal = temporal + sinusoidal_positions(mel.shape[1], config.hidden)
            temporal = AttentionBlock(
                config.hidden, config.heads, config.feedforward, dropout=config.dropout,
                name="temporal",
            )(temporal, mask, deterministic=deterministic)  # fmt: skip
            frequency = FrequencyAttention(
                config, config.frequency_dim, 2, name="frequency"
            )(normalised, mask, deterministic)  # fmt: skip
        else:
            raise ValueError(
                f"model.emotion_attention is {config.emotion_attention!r}: "
                "'sequential' (the paper) or 'parallel'"
            )
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


class EmotionalFaceGenerator(nn.Module):
    """G (Eq. 3): transformer decoder, query f^n (+) e, key/value e~ -> f^e, R, T."""

    config: SDETalkConfig

    @nn.compact
    def __call__(
        self,
        neutral_motion,
        embedding,
        diversified,
        mask,
        deterministic: bool = True,
        speech_cues=None,
        pool_mask=None,
    ):
        """-> (f^e offset, R, T, the head gain [B, N, 3] of the head noise path or None).
        neutral_motion: G_n's motion in network units as `FrameAndClipDense`'s parts, [B, N, V*3]
        and [B, V*3] (`Generator.neutral_face`).
        speech_cues [B, N, K] or None: what the gain reads beside G's features (`head_gain_cues`).
        pool_mask [B, N] or None: if given, only the offset's mean over the masked frames [B, V*3]
        (zero for a row without frames), and None for the rest. The offset layer is affine, so
        that is the layer applied once to the mean of its input, not to every frame."""
        config = self.config
        # f^n (+) e through one linear layer, written as the sum of its two blocks so that each
        # part is initialised for its own width: e (128 wide) is not drowned by f^n (V*3 wide).
        query = PartsDense(config.hidden, name="query_face")(*neutral_motion) + nn.Dense(
            config.hidden, use_bias=False, name="query_emotion"
        )(embedding)
        query = query + sinusoidal_positions(query.shape[1], config.hidden)
        for index in range(config.decoder_blocks):
            query = AttentionBlock(
                config.hidden,
                config.heads,
                config.feedforward,
                cross=True,
                dropout=config.dropout,
                name=f"block_{index}",
            )(query, mask, diversified, mask, deterministic, config.cross_attention_window)
        # Zero-initialised heads: training starts from f^e = f^n, R = I, T = 0.
        expression_layer = OutputDense(
            config.num_vertices * 3,
            scale=config.motion_unit,
            kernel_init=nn.initializers.zeros,
            name="expression",
        )
        if pool_mask is not None:
            rows_with_frames = jnp.any(pool_mask, axis=1, keepdims=True)
            pooled = expression_layer(masked_mean(query, pool_mask))
            return jnp.where(rows_with_frames, pooled, 0.0), None, None, None
        expression = expression_layer(query)
        identity_6d = jnp.array([1.0, 0, 0, 0, 1.0, 0])
        rotation = rotation_from_6d(
            identity_6d + nn.Dense(6, kernel_init=nn.initializers.zeros, name="rotation")(query)
        )
        translation = config.motion_unit * nn.Dense(
            3, kernel_init=nn.initializers.zeros, name="translation"
        )(query)
        gain = None
        if config.head_noise_path:
            # Angular speed per noise unit, starting at 0.003 rad (0.17 deg) per frame, in log
            # units of head_gain_log_scale per output unit: an optimiser step of lr changes the
            # gain by about head_gain_log_scale * lr relative (as motion_unit does for vertices),
            # so it can follow the speech within a short run.
            features = jax.lax.stop_gradient(query) if config.head_gain_detached else query
            log_gain = nn.Dense(3, kernel_init=nn.initializers.zeros, name="head_gain")(features)
            if speech_cues is not None:
                log_gain = log_gain + nn.Dense(
                    3, use_bias=False, kernel_init=nn.initializers.zeros, name="head_gain_cues"
                )(speech_cues)
            log_gain = config.head_gain_log_scale * log_gain
            gain = 0.003 * jnp.exp(jnp.clip(log_gain, -10.0, 5.0))
        return expression, rotation, translation, gain


def _rows(values):
    return values.reshape(-1, values.shape[-1])


def _transposed_small_operand(rows):
    """rows.T, kept apart from the product it feeds: folded into the dot, XLA's CPU backend would
    transpose the other operand, the [frames, V*3] gradient, instead of this narrow one."""
    return jax.lax.optimization_barrier(rows.T)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def scaled_affine(inputs, kernel, bias, scale: float):
    """scale * (inputs @ kernel + bias), with a gradient written for a layer onto every vertex
    coordinate (kernel [D, V*3]): the weight and bias gradients are one product of the narrow
    inputs (with a column of ones) and the output gradient, which is read once. What autodiff
    gives instead reduces that gradient over its frames apart (the bias) and transposes it for the
    weights: 2.4x slower on a CPU at BIWI's 70110 outputs (benchmarks/vertex_layers.py)."""
    return scale * (inputs @ kernel + bias)


def _scaled_affine_forward(inputs, kernel, bias, scale):
    return scaled_affine(inputs, kernel, bias, scale), (inputs, kernel)


def _scaled_affine_backward(scale, residuals, grad):
    inputs, kernel = residuals
    rows = _rows(inputs)
    with_ones = scale * jnp.concatenate([rows, jnp.ones((rows.shape[0], 1), rows.dtype)], axis=1)
    kernel_and_bias = _transposed_small_operand(with_ones) @ _rows(grad)
    inputs_grad = scale * (grad @ kernel.T)
    return inputs_grad, kernel_and_bias[:-1], kernel_and_bias[-1]


scaled_affine.defvjp(_scaled_affine_forward, _scaled_affine_backward)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def frame_and_clip_affine(frame_inputs, clip_inputs, kernel, bias, scale: float):
    """scale * ((c(t) (+) p) @ kernel + bias) for every frame t of each clip, with p [B, Dp] the
    same for the whole clip (`FrameAndClipDense`), and its two parts: c(t)'s product [B, N, F]
    and p's with the bias [B, F]. The parts are for readers that take no gradient through them
    (G's query reads G_n's motion as its parts, so that the sum, as large as the faces, is not
    kept as well): differentiating through them raises. The gradient of the sum is written as
    `scaled_affine`'s, and that of p as the clip's sum over its frames. The gradient with
    respect to every frame's c(t), a product as large as the layer itself, is left to XLA to
    drop where nothing uses it (training: c is the frozen encoder's)."""
    return _frame_and_clip_parts(frame_inputs, clip_inputs, kernel, bias, scale)[0]


def _frame_and_clip_parts(frame_inputs, clip_inputs, kernel, bias, scale):
    # c(t) through the whole kernel with zeros in p's columns, p through its own rows once per
    # clip. Those rows are then taken in the forward pass, before the optimiser overwrites the
    # kernel in place: read by the backward pass alone, the kernel would be copied whole first
    # (224 MB at BIWI size); sliced for c(t)'s product, its other rows would be (215 MB).
    frame_dim = frame_inputs.shape[-1]
    clip_kernel = kernel[frame_dim:]
    padding = jnp.zeros(frame_inputs.shape[:-1] + clip_kernel.shape[:1], frame_inputs.dtype)
    frame_part = jnp.concatenate([frame_inputs, padding], axis=-1) @ kernel
    clip_part = clip_inputs @ clip_kernel + bias
    outputs = scale * (frame_part + clip_part[:, None])
    return (outputs, frame_part, clip_part), clip_kernel


def _frame_and_clip_forward(frame_inputs, clip_inputs, kernel, bias, scale):
    frame_inputs, clip_inputs, kernel, bias = (
        primal.value for primal in (frame_inputs, clip_inputs, kernel, bias)
    )
    results, clip_kernel = _frame_and_clip_parts(frame_inputs, clip_inputs, kernel, bias, scale)
    return results, (frame_inputs, clip_inputs, kernel, clip_kernel)


def _frame_and_clip_backward(scale, residuals, cotangents):
    grad, *part_grads = cotangents
    if not all(isinstance(g, SymbolicZero) for g in part_grads):
        raise NotImplementedError(
            "frame_and_clip_affine: no gradient is written through the parts; stop_gradient them"
        )
    frame_inputs, clip_inputs, kernel, clip_kernel = residuals
    if isinstance(grad, SymbolicZero):
        grad = jnp.zeros(grad.shape, grad.dtype)
    frames, frame_dim = frame_inputs.shape[1], frame_inputs.shape[-1]
    clip_rows = jnp.repeat(clip_inputs, frames, axis=0)
    ones = jnp.ones((len(clip_rows), 1), clip_rows.dtype)
    rows = scale * jnp.concatenate([_rows(frame_inputs), clip_rows, ones], axis=1)
    kernel_and_bias = _transposed_small_operand(rows) @ _rows(grad)
    clip_inputs_grad = scale * jnp.sum(grad @ clip_kernel.T, axis=1)
    frame_inputs_grad = scale * (grad @ kernel[:frame_dim].T)
    return frame_inputs_grad, clip_inputs_grad, kernel_and_bias[:-1], kernel_and_bias[-1]


frame_and_clip_affine.defvjp(_frame_and_clip_forward, _frame_and_clip_backward, symbolic_zeros=True)


class OutputDense(nn.Module):
    """An nn.Dense (the same parameters, `kernel` [D, F] and `bias` [F]) times `scale`, for the
    layers onto every vertex coordinate: see `scaled_affine` for its gradient."""

    features: int
    scale: float = 1.0
    kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, inputs):
        kernel = self.param("kernel", self.kernel_init, (inputs.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        return scaled_affine(inputs, kernel, bias, self.scale)


class FrameAndClipDense(nn.Module):
    """Dense on (c(t) (+) p) for every frame, with p the same for the whole clip. The parameters
    are those of an nn.Dense on the concatenation (`kernel` [Dc + Dp, F], `bias` [F]), and so is
    the result, up to rounding; its gradient is `frame_and_clip_affine`'s, which gives p's once
    per clip and leaves out every frame's c, which nothing trains. Returns (the result [B, N, F],
    its parts without gradient: c(t)'s product [B, N, F], p's with the bias [B, F], whose sum is
    the result)."""

    features: int
    kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, frame_inputs, clip_inputs):  # [B, N, Dc], [B, Dp]
        frame_dim = frame_inputs.shape[-1]
        kernel = self.param(
            "kernel", self.kernel_init, (frame_dim + clip_inputs.shape[-1], self.features)
        )
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        outputs, *parts = frame_and_clip_affine(frame_inputs, clip_inputs, kernel, bias, 1.0)
        return outputs, jax.lax.stop_gradient(tuple(parts))


class PartsDense(nn.Module):
    """An nn.Dense (the same parameters, `kernel` [D, F] and `bias` [F]) on inputs given as
    `FrameAndClipDense`'s parts, a per-frame part [B, N, D] and a per-clip part [B, D]: the sum
    of their products, so that the inputs' sum, as large as the faces, is not needed."""

    features: int

    @nn.compact
    def __call__(self, frame_part, clip_part):
        kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (frame_part.shape[-1], self.features)
        )
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        return frame_part @ kernel + (clip_part @ kernel + bias)[:, None]


def scaled_offset(offset, batch):
    """G's expression offset [B, N, V*3] times the requested intensity, `expression_scale` [B],
    if the batch has one (0 is f^n)."""
    if "expression_scale" in batch:
        return batch["expression_scale"][:, None, None] * offset
    return offset


class Generator(nn.Module):
    """Everything trained by the generator loss; see the module docstring."""

    config: SDETalkConfig

    def setup(self):
        config = self.config
        self.identity = nn.Dense(config.identity_dim, use_bias=False, name="identity")
        # G_n's motion in network units (motion_unit, mm for data in metres): G's query reads it
        # as it is, and f^n scales it back to data units on the way.
        self.neutral_generator = FrameAndClipDense(
            config.num_vertices * 3, kernel_init=nn.initializers.zeros, name="neutral"
        )
        self.emotion_network = EmotionEmbeddingNetwork(config, name="emotion")
        self.classifier = EmotionClassifier(config, name="classifier")
        if config.emotion_statistics:
            self.statistics = StatisticsReadout(config, name="statistics")
        self.diversity = nn.Dense(2 * config.hidden, name="diversity")
        self.face_generator = EmotionalFaceGenerator(config, name="face")

    def neutral_face(self, batch):
        """(p, G_n's motion in network units as its two parts without gradient (see
        `FrameAndClipDense`), f^n = G_n(c (+) p) + f_0^n) of Eq. 2."""
        identity = self.identity(batch["subject_onehot"])
        neutral_motion, motion_parts = self.neutral_generator(batch["context"], identity)
        neutral = self.config.motion_unit * neutral_motion + batch["template"][:, None]
        return identity, motion_parts, neutral

    def clip_embedding(self, mel, mask, subject_onehot):
        """The clip's emotional embedding e averaged over its frames [B, hidden]: what the
        classifier pools, and what emotion prototypes are fitted to."""
        return masked_mean(self.emotion_network(mel, mask, subject_onehot), mask)

    def read_emotion(self, batch, deterministic: bool = True):
        """(e, y_e, the "spoken with emotion" logit, extra outputs). e is steered to a requested
        emotion if the batch asks for one (emotion_control.py). With `model.emotion_statistics`
        y_e is the voice statistics' readout (for a request, only where it names no category:
        the voice's own emotion at another intensity), and in training `extra` holds e's
        classifier's own mixture (`embedding_mixture`) and the readout's penalty."""
        mask = batch["frame_mask"]
        embedding = self.emotion_network(
            batch["mel"], mask, batch["subject_onehot"], deterministic
        )  # e
        requested = "emotion_target" in batch
        if requested:
            embedding = steer_embedding(embedding, mask, batch)
        mixture, emotional_logit = self.classifier(embedding, mask)  # y_e
        extra = {}
        if self.config.emotion_statistics:
            readout, penalty = self.statistics(batch["mel"], mask)
            if requested:
                # A request that names a category replaces what the voice says: y_e is then
                # read from the steered e, as in the paper.
                voice_only = batch["emotion_inferred_weight"][:, None] >= 1.0
                mixture = jnp.where(voice_only, readout, mixture)
            else:  # e's own reading is kept for L_cls, which trains e
                extra.update(embedding_mixture=mixture, statistics_penalty=penalty)
                mixture = readout
        return embedding, mixture, emotional_logit, extra

    def diversified(self, embedding, noise, mask):
        """(mu, e~ = mu + sigma z with the noise smoothed over time, the head path's noise)."""
        mean, log_variance = jnp.split(self.diversity(embedding), 2, axis=-1)
        log_variance = jnp.clip(log_variance, -8.0, 4.0)
        noise = smooth_noise(noise, mask, self.config.noise_smoothing_frames)
        diversified = mean + jnp.exp(0.5 * log_variance) * noise  # e~, reparameterised
        return mean, diversified, head_noise(noise, mask, self.config.head_noise)

    def mean_expression_offset(self, batch, noise):
        """G's expression offset f^e - f^n averaged over each row's frames [B, V*3] (zero for a
        row without frames), as `__call__` draws it with `noise`: what emotion prototypes are
        fitted to (emotion_control.py). The offset layer runs once per row, on the mean of its
        input, not on every frame: a clip's mean face for a fraction of its frames' memory."""
        mask = batch["frame_mask"]
        _, neutral_motion, _ = self.neutral_face(batch)
        embedding, mixture, _, _ = self.read_emotion(batch)
        _, diversified, _ = self.diversified(embedding, noise, mask)
        cues = head_gain_cues(batch["mel"], mask, mixture, embedding, self.config)
        offset, _, _, _ = self.face_generator(
            neutral_motion, embedding, diversified, mask, True, cues, pool_mask=mask
        )
        return scaled_offset(offset[:, None], batch)[:, 0]

    def __call__(
        self, batch, noise, deterministic: bool = True, mean_head: bool = False, neutral_parts=None
    ):
        """batch: context [B,N,Dc], mel [B,N,bins], subject_onehot [B,S], template [B,V*3],
        frame_mask [B,N]; noise: z [B,N,hidden] ~ N(0, I). Optionally a requested emotion:
        emotion_target [B,hidden] with emotion_inferred_weight [B] (`steer_embedding`), and
        expression_scale [B], the factor on G's expression offset. Returns a dict of outputs. Training
        passes deterministic=False and a 'dropout' key (used only if `dropout` > 0); with
        `mean_head`, also the head pose at z = 0 (`mean_rotation`, `mean_translation`).
        `neutral_parts`: `neutral_face(batch)` if known (training shares it between samples)."""
        check_head_options(self.config)
        mask = batch["frame_mask"]
        context = batch["context"]  # c, Eq. 1 (aligned outside)
        identity, neutral_motion, neutral = neutral_parts or self.neutral_face(batch)  # p, Eq. 2
        embedding, mixture, emotional_logit, extra = self.read_emotion(batch, deterministic)
        mean, diversified, turn_noise = self.diversified(embedding, noise, mask)
        # G_n is trained by L_n alone ("we separately estimate the neutral mouth shape and the
        # emotional expressions"): G reads f^n and adds the expression on top of it, but its losses
        # do not reach G_n, so f^n stays a neutral face and "G_n alone" is a real baseline.
        neutral_fixed = jax.lax.stop_gradient(neutral)
        cues = head_gain_cues(batch["mel"], mask, mixture, embedding, self.config)
        offset, rotation, translation, _ = self.face_generator(
            jax.lax.stop_gradient(neutral_motion), embedding, diversified, mask, deterministic,
            cues,
        )  # fmt: skip
        offset = scaled_offset(offset, batch)
        expression = neutral_fixed + offset  # f^e
        if mean_head or self.config.head_noise_path:
            # G again at the centre of the noise (e~ = mu); only its head is used, so XLA drops
            # the expression layer of this pass.
            _, mean_rotation, mean_translation, gain = self.face_generator(
                jax.lax.stop_gradient(neutral_motion), embedding, mean, mask, deterministic,
                cues,
            )  # fmt: skip
            if self.config.head_mean_pose == "rest":
                mean_rotation = jnp.broadcast_to(jnp.eye(3), mean_rotation.shape)
                mean_translation = jnp.zeros_like(mean_translation)
            elif self.config.head_mean_smoothing_frames > 0:
                mean_rotation, mean_translation = smooth_head_pose(
                    mean_rotation, mean_translation, mask, self.config.head_mean_smoothing_frames
                )
            extra.update(mean_rotation=mean_rotation, mean_translation=mean_translation)
            if gain is not None:
                # A sample's head is the mean head turned by the noise path: angular velocity
                # gain * n per axis, integrated. The mean head carries no noise, so nothing but
                # this path moves it from sample to sample.
                angle = integrate_velocity(gain * turn_noise, mask, self.config.head_drift_frames)
                extra["head_turn"] = rotation_from_vector(angle)
                extra["head_gain"] = gain
                base_rotation, translation = mean_rotation, mean_translation
                if self.config.head_mean_detached:
                    base_rotation = jax.lax.stop_gradient(mean_rotation)
                    translation = jax.lax.stop_gradient(mean_translation)
                rotation = extra["head_turn"] @ base_rotation
        return {
            **extra,
            "identity": identity,
            # every training speaker's p, the marginal of p for the vCLUB bound (Eq. 6)
            "identity_table": self.identity(jnp.eye(self.config.num_subjects)),
            "context": context,
            "embedding": embedding,
            "mixture": mixture,
            "emotional_logit": emotional_logit,
            "neutral": neutral,
            "expression": expression,
            "rotation": rotation,
            "translation": translation,
            "posed": pose_faces(expression, rotation, translation),  # Eq. 4
        }


class CoordinateRowsDense(nn.Module):
    """An nn.Dense on faces [..., V*3] (the same parameters, `kernel` [V*3, F] and `bias` [F])
    that reads them as coordinate rows [..., 3, V]: the kernel's rows are put in that order, a
    copy of the kernel, so that neither the faces nor their gradient are transposed back."""

    features: int

    @nn.compact
    def __call__(self, rows):
        vertices = rows.shape[-1]
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (3 * vertices, self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        kernel_rows = jnp.swapaxes(kernel.reshape(vertices, 3, self.features), 0, 1)
        flat = rows.reshape(rows.shape[:-2] + (3 * vertices,))
        return flat @ kernel_rows.reshape(3 * vertices, self.features) + bias


class Discriminator(nn.Module):
    """Consistency discriminator D: transformer encoder on (e, f) -> real/fake logit, identity logits,
    emotion mixture."""

    config: SDETalkConfig

    @nn.compact
    def __call__(self, embedding, face_rows, template, mask):
        """face_rows: the faces [B, N, V*3] as coordinate rows [B, N, 3, V] (`coordinate_rows`,
        as `pose_rows` poses them); template [B, V*3]."""
        config = self.config
        # Identity-free input: displacement from the template, in network units (mm).
        motion = (face_rows - coordinate_rows(template)[:, None]) / config.motion_unit
        x = CoordinateRowsDense(config.hidden, name="face_in")(motion) + nn.Dense(
            config.hidden, name="emotion_in"
        )(embedding)
        x = x + sinusoidal_positions(x.shape[1], config.hidden)
        for index in range(config.discriminator_blocks):
            x = AttentionBlock(
                config.hidden, config.heads, config.feedforward, name=f"block_{index}"
            )(x, mask)
        pooled = masked_mean(x, mask)
        real_fake = nn.Dense(1, name="real_fake")(pooled)[:, 0]
        identity_logits = nn.Dense(config.num_subjects, name="identity")(pooled)
        mixture = jax.nn.softmax(nn.Dense(config.num_emotions, name="emotion")(pooled), axis=-1)
        return real_fake, identity_logits, mixture


class GaussianEstimator(nn.Module):
    """q(y|x) = N(mu(x), diag sigma^2(x)), the variational net of vCLUB (Cheng et al., 2020)."""

    out_dim: int
    hidden: int = 128

    @nn.compact
    def __call__(self, x):
        h = nn.gelu(nn.Dense(self.hidden, name="hidden")(x))
        mean = nn.Dense(self.out_dim, name="mean")(h)
        log_variance = jnp.tanh(nn.Dense(self.out_dim, name="log_variance")(h)) * 4.0
        return mean, log_variance


def gaussian_log_likelihood(y, mean, log_variance):
    """log q(y|x) up to a constant, summed over the last axis."""
    return -0.5 * jnp.sum(jnp.square(y - mean) * jnp.exp(-log_variance) + log_variance, axis=-1)


MI_PAIRS = (("identity", "context"), ("identity", "embedding"), ("context", "embedding"))


def per_frame_factors(outputs):
    """The factors of Eq. 6 from the generator's outputs: identity p broadcast over frames next to
    context c and embedding e, [B, N, D] each."""
    frames = outputs["embedding"].shape[1]
    identity = outputs["identity"]
    return {
        "identity": jnp.broadcast_to(
            identity[:, None], (identity.shape[0], frames, identity.shape[-1])
        ),
        "context": outputs["context"],
        "embedding": outputs["embedding"],
    }


class MIEstimators(nn.Module):
    """The three vCLUB estimators of Eq. 6, each predicting the second factor from the first."""

    config: SDETalkConfig

    def setup(self):
        dims = {
            "identity": self.config.identity_dim,
            "context": self.config.context_dim,
            "embedding": self.config.hidden,
        }
        self.estimators = {
            f"{x}->{y}": GaussianEstimator(dims[y], name=f"{x}_to_{y}") for x, y in MI_PAIRS
        }

    def __call__(self, factors):
        return {
            pair: estimator(factors[pair.split("->")[0]])
            for pair, estimator in self.estimators.items()
        }

    def speaker_marginal(self, identity_table):
        """q(.|p_s) for every training speaker's identity p_s [S, identity_dim]: the pairs whose
        first factor is p."""
        return {
            pair: estimator(identity_table)
            for pair, estimator in self.estimators.items()
            if pair.startswith("identity->")
        }
