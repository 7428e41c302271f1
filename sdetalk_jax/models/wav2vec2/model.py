"""wav2vec 2.0 (Baevski et al., 2020) in Flax linen: SDETalk's frozen context encoder E_c (Eq. 1).

Both variants of the Hugging Face architecture:
  * post-LayerNorm (`do_stable_layer_norm=False`, group norm in the first convolution): base-960h,
    the checkpoint the field's BIWI work uses;
  * stable / pre-LayerNorm (`do_stable_layer_norm=True`, layer norm in every convolution):
    large-lv60, xlsr-53.

Padded batches: `attention_mask [B, samples]` marks real audio. Every operation that mixes time steps
sees only the real ones: the first convolution's group norm takes its statistics over real frames
only, padded frames are zeroed before the positional convolution, and attention ignores padded keys.
So a clip in a padded batch gives the same hidden states as the clip alone. (PyTorch's group-norm
variant normalises over the padding too, which is why its processor refuses attention masks for
base-960h; ours needs no such rule.)

Parameter names follow the PyTorch module tree, so `convert.py` maps checkpoints one to one.

Matmul operands: float32 (what every run is trained with), or bfloat16 with float32 accumulation
and float32 everywhere else (`matmul_operands="bfloat16"`, for faster inference; see
`operand_matmul`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Wav2Vec2Config:
    """The fields of a Hugging Face `Wav2Vec2Config` that inference needs."""

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    conv_dim: tuple[int, ...] = (512,) * 7
    conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
    conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
    conv_bias: bool = False
    feat_extract_norm: str = "group"  # "group" (base) or "layer" (large-lv60, xlsr)
    do_stable_layer_norm: bool = False
    num_conv_pos_embeddings: int = 128
    num_conv_pos_embedding_groups: int = 16
    layer_norm_eps: float = 1e-5
    hidden_act: str = "gelu"
    feat_extract_activation: str = "gelu"

    @classmethod
    def from_dict(cls, values: dict) -> Wav2Vec2Config:
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {
            k: (tuple(v) if isinstance(v, list) else v) for k, v in values.items() if k in known
        }
        config = cls(**kwargs)
        config.validate()
        return config

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> Wav2Vec2Config:
        with open(path) as handle:
            return cls.from_dict(json.load(handle))

    def validate(self) -> None:
        if not len(self.conv_dim) == len(self.conv_kernel) == len(self.conv_stride):
            raise ValueError("conv_dim, conv_kernel and conv_stride must have the same length")
        if self.feat_extract_norm not in ("group", "layer"):
            raise ValueError(
                f"feat_extract_norm must be 'group' or 'layer', got {self.feat_extract_norm!r}"
            )
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("hidden_size must be divisible by num_attention_heads")
        for name in ("hidden_act", "feat_extract_activation"):
            if getattr(self, name) not in _ACTIVATIONS:
                raise ValueError(
                    f"{name}={getattr(self, name)!r} is not supported ({sorted(_ACTIVATIONS)})"
                )

    def frames_for(self, num_samples):
        """Number of encoder frames for `num_samples` audio samples (valid convolutions)."""
        length = num_samples
        for kernel, stride in zip(self.conv_kernel, self.conv_stride, strict=True):
            length = (length - kernel) // stride + 1
        return length

    @property
    def receptive_field(self) -> int:
        return self.conv_kernel[0] + sum(
            (k - 1) * math.prod(self.conv_stride[:i]) for i, k in enumerate(self.conv_kernel) if i
        )


_ACTIVATIONS = {
    # PyTorch's nn.GELU / transformers' "gelu" is the exact erf form.
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
}


# The precisions a model's matmul operands can take; products are accumulated in float32 either way.
MATMUL_OPERANDS = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def check_matmul_operands(operands: str) -> None:
    if operands not in MATMUL_OPERANDS:
        raise ValueError(
            f"unknown encoder precision {operands!r}: choose from {', '.join(MATMUL_OPERANDS)}"
        )


def operand_matmul(x: jax.Array, weight: jax.Array, operands: str) -> jax.Array:
    """x @ weight, with both operands in `operands` precision and the result in float32.

    bfloat16 operands accumulated in float32 run about twice as fast as float32 on CPUs with
    avx512_bf16 (and use the tensor cores on GPUs); a bfloat16 result does not gain on the CPU,
    and would round every activation (python benchmarks/encoder_precision.py)."""
    if operands == "float32":
        return x @ weight
    dtype = MATMUL_OPERANDS[operands]
    return jnp.matmul(x.astype(dtype), weight.astype(dtype), preferred_element_type=jnp.float32)


def operand_einsum(subscripts: str, x: jax.Array, y: jax.Array, operands: str) -> jax.Array:
    """jnp.einsum of two operands, as `operand_matmul` multiplies them."""
    if operands == "float32":
        return jnp.einsum(subscripts, x, y)
    dtype = MATMUL_OPERANDS[operands]
    return jnp.einsum(
        subscripts, x.astype(dtype), y.astype(dtype), preferred_element_type=jnp.float32
    )


def strided_conv_as_matmuls(x: jax.Array, kernel_first: jax.Array, stride: int, operands: str):
    """A valid strided 1-D convolution, x [B, T, C] * kernel_first [kernel, C, out], as
    ceil(kernel / stride) matmuls over the input cut into blocks of `stride` steps (a free
    reshape): output step t is block t times the kernel's first `stride` taps, plus block t + 1
    times the next ones, and so on. Gathering each window's steps into one row instead costs
    more here than the matmul it feeds."""
    batch, steps, channels = x.shape
    kernel = kernel_first.shape[0]
    frames = (steps - kernel) // stride + 1
    reach = -(-kernel // stride)  # blocks a window touches
    covered = (frames + reach - 1) * stride
    # Steps past the input's end (zeros here) fall only on the taps a block does not use.
    blocks = (
        x[:, :covered] if covered <= steps else jnp.pad(x, ((0, 0), (0, covered - steps), (0, 0)))
    )
    blocks = blocks.reshape(batch, frames + reach - 1, stride * channels)
    taps = kernel_first.reshape(kernel * channels, -1)
    y = None
    for block in range(reach):
        used = min(stride, kernel - block * stride) * channels  # taps of this block
        first = block * stride * channels
        term = operand_matmul(
            blocks[:, block : block + frames, :used], taps[first : first + used], operands
        )
        y = term if y is None else y + term
    return y


def frame_mask_from_samples(
    config: Wav2Vec2Config, attention_mask: jax.Array, num_frames: int
) -> jax.Array:
    """[B, samples] sample mask -> [B, frames] frame mask (a prefix of each row is real)."""
    lengths = config.frames_for(attention_mask.sum(axis=-1).astype(jnp.int32))
    return jnp.arange(num_frames)[None, :] < lengths[:, None]


class MaskedGroupNorm(nn.Module):
    """GroupNorm with one group per channel, statistics over the real time steps only."""

    features: int
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:  # x [B, T, C], mask [B, T]
        weight = mask.astype(x.dtype)
        count = jnp.maximum(weight.sum(axis=1), 1.0)[:, None, None]
        # Masked sums over time as contractions: XLA's CPU reduction of a masked [B, T, C] product
        # over T is ~15x slower than the same sum as a matrix-vector product.
        mean = jnp.einsum("bt,btc->bc", weight, x)[:, None, :] / count
        centred = x - mean
        variance = jnp.einsum("bt,btc->bc", weight, jnp.square(centred))[:, None, :] / count
        scale = self.param("weight", nn.initializers.ones, (self.features,))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        return centred * jax.lax.rsqrt(variance + self.epsilon) * scale + bias


class LayerNorm(nn.Module):
    """LayerNorm with PyTorch's parameter names (weight, bias)."""

    features: int
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        mean = x.mean(axis=-1, keepdims=True)
        variance = jnp.square(x - mean).mean(axis=-1, keepdims=True)
        scale = self.param("weight", nn.initializers.ones, (self.features,))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        return (x - mean) * jax.lax.rsqrt(variance + self.epsilon) * scale + bias


class Linear(nn.Module):
    """Dense layer storing PyTorch's layout (weight [out, in]) so checkpoints map without copies."""

    in_features: int
    out_features: int
    matmul_operands: str = "float32"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        weight = self.param(
            "weight",
            nn.initializers.lecun_normal(in_axis=1, out_axis=0),
            (self.out_features, self.in_features),
        )
        bias = self.param("bias", nn.initializers.zeros, (self.out_features,))
        return operand_matmul(x, weight.T, self.matmul_operands) + bias


class FeatureConv(nn.Module):
    """A strided 1-D convolution with valid padding and PyTorch's weight layout [out, in, kernel]."""

    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    use_bias: bool
    matmul_operands: str = "float32"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:  # [B, T, C_in] -> [B, T_out, C_out]
        weight = self.param(
            "weight",
            nn.initializers.he_normal(in_axis=(1, 2), out_axis=0),
            (self.out_channels, self.in_channels, self.kernel),
        )
        kernel_first = jnp.transpose(weight, (2, 1, 0))  # [kernel, in, out]
        # float32, and the first layer (one input channel: matmuls of a few taps are slow)
        if self.matmul_operands == "float32" or self.in_channels == 1:
            y = jax.lax.conv_general_dilated(
                x,
                kernel_first,
                window_strides=(self.stride,),
                padding="VALID",
                dimension_numbers=("NWC", "WIO", "NWC"),
            )
        else:  # XLA's CPU convolutions gain nothing from bfloat16; its matmuls do
            y = strided_conv_as_matmuls(x, kernel_first, self.stride, self.matmul_operands)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.out_channels,))
        return y


class FeatureEncoder(nn.Module):
    """The convolutional feature encoder: raw audio [B, S] -> features [B, T, conv_dim[-1]]."""

    config: Wav2Vec2Config
    matmul_operands: str = "float32"

    @nn.compact
    def __call__(self, audio: jax.Array, attention_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
        config = self.config
        activation = _ACTIVATIONS[config.feat_extract_activation]
        x = audio[..., None]
        channels = 1
        mask = attention_mask
        for index, (dim, kernel, stride) in enumerate(
            zip(config.conv_dim, config.conv_kernel, config.conv_stride, strict=True)
        ):
            x = FeatureConv(
                channels,
                dim,
                kernel,
                stride,
                config.conv_bias,
                self.matmul_operands,
                name=f"conv_layers_{index}_conv",
            )(x)
            channels = dim
            if config.feat_extract_norm == "layer":
                x = LayerNorm(dim, name=f"conv_layers_{index}_layer_norm")(x)
            elif index == 0:
                frames = frame_mask_from_samples(
                    dataclasses.replace(
                        config,
                        conv_kernel=config.conv_kernel[:1],
                        conv_stride=config.conv_stride[:1],
                    ),
                    mask,
                    x.shape[1],
                )
                x = MaskedGroupNorm(dim, name=f"conv_layers_{index}_layer_norm")(x, frames)
            x = activation(x)
        return x, frame_mask_from_samples(config, attention_mask, x.shape[1])


class PositionalConvEmbedding(nn.Module):
    """Grouped convolution (kernel 128, 'same' length) with weight norm over the kernel axis."""

    config: Wav2Vec2Config

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        config = self.config
        hidden, kernel, groups = (
            config.hidden_size,
            config.num_conv_pos_embeddings,
            config.num_conv_pos_embedding_groups,
        )
        direction = self.param(
            "weight_v", nn.initializers.normal(0.02), (hidden, hidden // groups, kernel)
        )  # [out, in/groups, K]
        magnitude = self.param("weight_g", nn.initializers.ones, (1, 1, kernel))
        bias = self.param("bias", nn.initializers.zeros, (hidden,))
        # torch.nn.utils.weight_norm(dim=2): one norm per kernel position, over (out, in).
        norm = jnp.sqrt(jnp.sum(jnp.square(direction), axis=(0, 1), keepdims=True))
        weight = magnitude * direction / norm
        y = jax.lax.conv_general_dilated(
            x,
            jnp.transpose(weight, (2, 1, 0)),  # [K, in/groups, out]
            window_strides=(1,),
            padding=[(kernel // 2, kernel // 2)],
            dimension_numbers=("NWC", "WIO", "NWC"),
            feature_group_count=groups,
        )
        if kernel % 2 == 0:  # an even kernel with symmetric padding yields one extra step
            y = y[:, :-1]
        return _ACTIVATIONS[config.feat_extract_activation](y + bias)


class SelfAttention(nn.Module):
    config: Wav2Vec2Config
    matmul_operands: str = "float32"

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        config = self.config
        operands = self.matmul_operands
        hidden, heads = config.hidden_size, config.num_attention_heads
        head_dim = hidden // heads

        # Kept as PyTorch's three Linear layers (names, layouts) but applied as one matmul.
        weights, biases = [], []
        for name in ("q_proj", "k_proj", "v_proj"):
            module = _LinearParams(hidden, hidden, name=name)
            weight, bias = module()
            weights.append(weight)
            biases.append(bias)
        fused = operand_matmul(x, jnp.concatenate(weights).T, operands) + jnp.concatenate(biases)
        query, key, value = jnp.split(fused, 3, axis=-1)

        def split(t):
            return t.reshape(t.shape[0], t.shape[1], heads, head_dim)

        query, key, value = split(query) * head_dim**-0.5, split(key), split(value)
        logits = operand_einsum("bqhd,bkhd->bhqk", query, key, operands)
        logits = jnp.where(mask[:, None, None, :], logits, jnp.finfo(logits.dtype).min)
        weights = jax.nn.softmax(logits, axis=-1)
        context = operand_einsum("bhqk,bkhd->bqhd", weights, value, operands).reshape(x.shape)
        return Linear(hidden, hidden, operands, name="out_proj")(context)


class _LinearParams(nn.Module):
    """The parameters of a PyTorch Linear (weight [out, in], bias [out]) without applying them."""

    in_features: int
    out_features: int

    @nn.compact
    def __call__(self):
        weight = self.param(
            "weight",
            nn.initializers.lecun_normal(in_axis=1, out_axis=0),
            (self.out_features, self.in_features),
        )
        bias = self.param("bias", nn.initializers.zeros, (self.out_features,))
        return weight, bias


class FeedForward(nn.Module):
    config: Wav2Vec2Config
    matmul_operands: str = "float32"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        config, operands = self.config, self.matmul_operands
        x = Linear(
            config.hidden_size, config.intermediate_size, operands, name="intermediate_dense"
        )(x)
        x = _ACTIVATIONS[config.hidden_act](x)
        return Linear(config.intermediate_size, config.hidden_size, operands, name="output_dense")(
            x
        )


class EncoderLayer(nn.Module):
    config: Wav2Vec2Config
    matmul_operands: str = "float32"

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        config = self.config
        attention = SelfAttention(config, self.matmul_operands, name="attention")
        feed_forward = FeedForward(config, self.matmul_operands, name="feed_forward")
        layer_norm = LayerNorm(config.hidden_size, config.layer_norm_eps, name="layer_norm")
        final_layer_norm = LayerNorm(
            config.hidden_size, config.layer_norm_eps, name="final_layer_norm"
        )
        if config.do_stable_layer_norm:  # pre-LN
            x = x + attention(layer_norm(x), mask)
            return x + feed_forward(final_layer_norm(x))
        x = layer_norm(x + attention(x, mask))  # post-LN
        return final_layer_norm(x + feed_forward(x))


class Wav2Vec2Model(nn.Module):
    """Raw 16 kHz audio [B, S] (+ mask) -> last hidden states [B, T, hidden] and frame mask [B, T].

    `matmul_operands`: "float32", or "bfloat16" (float32 accumulation; the positional convolution,
    normalisations and activations stay float32)."""

    config: Wav2Vec2Config
    matmul_operands: str = "float32"

    @nn.compact
    def __call__(self, audio: jax.Array, attention_mask: jax.Array | None = None):
        config, operands = self.config, self.matmul_operands
        check_matmul_operands(operands)
        if attention_mask is None:
            attention_mask = jnp.ones(audio.shape, dtype=bool)
        attention_mask = attention_mask.astype(bool)
        features, frame_mask = FeatureEncoder(config, operands, name="feature_extractor")(
            audio, attention_mask
        )
        features = LayerNorm(
            config.conv_dim[-1], config.layer_norm_eps, name="feature_projection_layer_norm"
        )(features)
        x = Linear(
            config.conv_dim[-1], config.hidden_size, operands, name="feature_projection_projection"
        )(features)
        x = jnp.where(frame_mask[..., None], x, 0.0)
        x = x + PositionalConvEmbedding(config, name="encoder_pos_conv_embed_conv")(x)
        encoder_norm = LayerNorm(
            config.hidden_size, config.layer_norm_eps, name="encoder_layer_norm"
        )
        if not config.do_stable_layer_norm:
            x = encoder_norm(x)
        for index in range(config.num_hidden_layers):
            x = EncoderLayer(config, operands, name=f"encoder_layers_{index}")(x, frame_mask)
        if config.do_stable_layer_norm:
            x = encoder_norm(x)
        return x, frame_mask


def pad_batch(waveforms: Sequence[np.ndarray], multiple: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Right-pads 1-D waveforms into [B, S] with a boolean mask; S rounded up to `multiple`."""
    longest = max(len(w) for w in waveforms)
    length = int(math.ceil(longest / multiple) * multiple)
    audio = np.zeros((len(waveforms), length), np.float32)
    mask = np.zeros((len(waveforms), length), bool)
    for row, waveform in enumerate(waveforms):
        audio[row, : len(waveform)] = waveform
        mask[row, : len(waveform)] = True
    return audio, mask


def normalize_waveform(waveform: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance: what Wav2Vec2FeatureExtractor(do_normalize=True) feeds the model."""
    waveform = np.asarray(waveform, np.float32)
    return (waveform - waveform.mean()) / np.sqrt(waveform.var() + 1e-7)
