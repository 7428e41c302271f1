"""Optimisation: the learning rate, one Adam per network, the initial training state, the one
helper that applies an update, and the matmul precision the step is computed at."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax


def learning_rate(train_config, total_steps: int):
    """The paper's fixed rate ('constant'), or a linear warm-up to it followed by a cosine decay to
    zero at `total_steps` ('warmup_cosine'), for short runs that must end converged."""
    kind = train_config.lr_schedule
    if kind == "constant":
        return train_config.learning_rate
    if kind == "warmup_cosine":
        warmup = min(int(train_config.warmup_steps), max(total_steps - 1, 0))
        return optax.warmup_cosine_decay_schedule(
            0.0, train_config.learning_rate, warmup, max(total_steps, warmup + 1)
        )
    raise ValueError(f"unknown train.lr_schedule '{kind}' (constant, warmup_cosine)")


# `train.matmul_precision` -> what jax.default_matmul_precision is given. "bfloat16" is the dot
# algorithm preset (bfloat16 inputs, float32 accumulation), not the coarse level of that name,
# which GPUs read as their default (TF32).
MATMUL_PRECISIONS = {
    "default": None,
    "float32": "float32",
    "tensorfloat32": "tensorfloat32",
    "bfloat16": "BF16_BF16_F32",
}


def with_matmul_precision(function, precision: str):
    """`function` traced with every float32 dot and convolution at `precision`
    (`train.matmul_precision`, `MATMUL_PRECISIONS`); "default" leaves the backend's choice.
    Wrap before jitting: the precision is fixed when the function is traced."""
    if precision not in MATMUL_PRECISIONS:
        raise ValueError(
            f"train.matmul_precision is {precision!r}: one of {', '.join(MATMUL_PRECISIONS)}"
        )
    if MATMUL_PRECISIONS[precision] is None:
        return function

    @functools.wraps(function)
    def at_precision(*args, **kwargs):
        with jax.default_matmul_precision(MATMUL_PRECISIONS[precision]):
            return function(*args, **kwargs)

    return at_precision


def optimizer(config, total_steps: int = 1) -> optax.GradientTransformation:
    """Adam (one instance per network); `total_steps` is the length of a decaying schedule. The
    optimiser state's structure does not depend on it, so restoring needs no step count."""
    return optax.adam(learning_rate(config.train, total_steps))


def initial_state(networks, config, key) -> dict:
    """{step, params, opt_state} of a new run; `networks` is a `models.networks.Networks`."""
    params = jax.jit(networks.init_params)(key)  # one compilation, not one per initialiser op
    tx = optimizer(config)
    return {
        "step": jnp.zeros((), jnp.int32),
        "params": params,
        "opt_state": {name: tx.init(value) for name, value in params.items()},
    }


def apply_update(tx: optax.GradientTransformation, grads, opt_state, params):
    """One optimiser step: (new params, new optimiser state)."""
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state
