"""The networks' building blocks: the post-LayerNorm attention block, and the dense layers onto (or
from) every vertex coordinate, whose gradients are written by hand for XLA's CPU backend
(benchmarks/vertex_layers.py measures each against its plain formula)."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero


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
