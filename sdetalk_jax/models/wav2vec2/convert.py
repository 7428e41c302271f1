"""Loading Hugging Face wav2vec 2.0 checkpoints into the Flax parameter tree.

Sources, in order: a local folder (`config.json` plus `model.safetensors` or `pytorch_model.bin`),
or a hub name resolved through the local Hugging Face cache (and downloaded only when the machine is
online). safetensors files are read with numpy, no torch needed; `.bin` files are pickles and are
read with `torch.load(weights_only=True)`, which cannot run code from the file.
"""

from __future__ import annotations

import os
import re

import jax
import numpy as np
from flax import traverse_util

from sdetalk_jax.models.wav2vec2.model import Wav2Vec2Config, Wav2Vec2Model

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# Heads and pre-training parts that inference does not use.
_IGNORED = re.compile(
    r"^(lm_head|quantizer|project_q|project_hid|masked_spec_embed|dropout_features|adapter|classifier|projector)"
)
_FLAX_TO_TORCH = [
    (
        r"^feature_extractor\.conv_layers_(\d+)_(conv|layer_norm)\.",
        r"feature_extractor.conv_layers.\1.\2.",
    ),
    (r"^feature_projection_(layer_norm|projection)\.", r"feature_projection.\1."),
    (r"^encoder_pos_conv_embed_conv\.", "encoder.pos_conv_embed.conv."),
    (r"^encoder_layer_norm\.", "encoder.layer_norm."),
    (r"^encoder_layers_(\d+)\.", r"encoder.layers.\1."),
]
# torch >= 2.1 saves weight norm as parametrizations; older checkpoints as weight_g / weight_v.
_TORCH_ALIASES = {
    "encoder.pos_conv_embed.conv.parametrizations.weight.original0": "encoder.pos_conv_embed.conv.weight_g",
    "encoder.pos_conv_embed.conv.parametrizations.weight.original1": "encoder.pos_conv_embed.conv.weight_v",
}


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model; the message names the tensor or file."""


class CheckpointNotFound(CheckpointError, FileNotFoundError):
    """No checkpoint where the name points: not a folder, not in the cache, no download."""


def torch_name(flax_path: tuple[str, ...]) -> str:
    name = ".".join(flax_path)
    for pattern, replacement in _FLAX_TO_TORCH:
        name = re.sub(pattern, replacement, name)
    return name


def resolve_checkpoint(checkpoint: str | os.PathLike, *, allow_download: bool = True) -> str:
    """A local folder as is; otherwise a hub name looked up in the HF cache, then (only when
    `allow_download`) online. Raises CheckpointNotFound with one clear sentence."""
    checkpoint = os.fspath(checkpoint)
    if os.path.isdir(checkpoint):
        return checkpoint
    if (
        os.path.exists(checkpoint)
        or checkpoint.startswith((".", "/", "~"))
        or checkpoint.count("/") > 1
    ):
        raise CheckpointNotFound(
            f"{checkpoint}: not a checkpoint folder (needs config.json and weights)"
        )
    from huggingface_hub import snapshot_download

    patterns = ["config.json", *WEIGHT_FILES]
    advice = (
        f"Download it on a machine with internet (huggingface-cli download {checkpoint}) and "
        "pass the folder, or copy the cache."
    )
    try:
        return snapshot_download(checkpoint, allow_patterns=patterns, local_files_only=True)
    except Exception as err:
        if not allow_download:
            raise CheckpointNotFound(
                f"{checkpoint}: not a local folder and not in the Hugging Face cache "
                f"(nothing is downloaded here). {advice}"
            ) from err
    try:
        return snapshot_download(checkpoint, allow_patterns=patterns)
    except Exception as err:
        raise CheckpointNotFound(
            f"{checkpoint}: not a local folder, not in the Hugging Face cache, and the hub cannot be "
            f"reached ({type(err).__name__}). {advice}"
        ) from err


def read_torch_state(folder: str) -> dict[str, np.ndarray]:
    """The checkpoint's tensors as float32 numpy arrays, prefix `wav2vec2.` removed."""
    safetensors_path = os.path.join(folder, "model.safetensors")
    bin_path = os.path.join(folder, "pytorch_model.bin")
    if os.path.exists(safetensors_path):
        from safetensors.numpy import load_file

        try:
            state = load_file(safetensors_path)
        except Exception as err:
            raise CheckpointError(
                f"{safetensors_path}: unreadable safetensors file ({err})"
            ) from err
    elif os.path.exists(bin_path):
        try:
            import torch
        except ImportError as err:
            raise CheckpointError(
                f"{bin_path}: reading .bin checkpoints needs torch; install it or convert the "
                "checkpoint to model.safetensors"
            ) from err
        try:
            # weights_only: the unpickler accepts tensors and plain containers only, no code.
            tensors = torch.load(bin_path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise CheckpointError(f"{bin_path}: refused or unreadable ({err})") from err
        state = {k: v.float().numpy() for k, v in tensors.items()}
    else:
        raise CheckpointError(f"{folder}: no model.safetensors or pytorch_model.bin")
    return {name.removeprefix("wav2vec2."): np.asarray(v, np.float32) for name, v in state.items()}


def convert_state(
    state: dict[str, np.ndarray], config: Wav2Vec2Config, *, source: str = "checkpoint"
):
    """Maps a PyTorch state dict onto the Flax tree; every mismatch is an error naming the tensor."""
    model = Wav2Vec2Model(config)
    abstract = jax.eval_shape(
        model.init, jax.random.key(0), np.zeros((1, config.receptive_field), np.float32)
    )["params"]
    expected = traverse_util.flatten_dict(abstract)
    state = {_TORCH_ALIASES.get(k, k): v for k, v in state.items()}
    converted, used = {}, set()
    for path, shape_dtype in expected.items():
        name = torch_name(path)
        if name not in state:
            raise CheckpointError(
                f"{source}: missing tensor '{name}' (for Flax parameter {'/'.join(path)})"
            )
        value = state[name]
        if value.shape != shape_dtype.shape:
            raise CheckpointError(
                f"{source}: tensor '{name}' has shape {tuple(value.shape)}, the model expects "
                f"{tuple(shape_dtype.shape)} (check config.json)"
            )
        converted[path] = value
        used.add(name)
    unexpected = sorted(k for k in state if k not in used and not _IGNORED.match(k))
    if unexpected:
        raise CheckpointError(
            f"{source}: unexpected tensors {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}; "
            "is this a wav2vec 2.0 checkpoint with a matching config.json?"
        )
    return traverse_util.unflatten_dict(converted)


def load_pretrained(checkpoint: str | os.PathLike) -> tuple[Wav2Vec2Config, dict]:
    """(config, params) from a local folder or a hub name (see `resolve_checkpoint`)."""
    folder = resolve_checkpoint(checkpoint)
    config_path = os.path.join(folder, "config.json")
    if not os.path.exists(config_path):
        raise CheckpointError(f"{folder}: config.json missing")
    config = Wav2Vec2Config.from_json(config_path)
    params = convert_state(read_torch_state(folder), config, source=folder)
    return config, params
