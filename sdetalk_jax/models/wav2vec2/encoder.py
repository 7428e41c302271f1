"""The frozen context encoder as a service: jitted inference on any wav, and an on-disk feature cache.

SDETalk freezes wav2vec 2.0, so each clip's hidden states are computed once and stored, keyed by the
model's content (config and every parameter, and the precision of its matmul operands when not
float32) and the audio file's content: a change of either is a different key, so a stale entry is
never served. Entries are written to a temporary file and renamed,
so an interrupted run never leaves a half-written entry under a real key; an unreadable entry is
deleted and recomputed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import warnings
from collections.abc import Callable

import jax
import numpy as np
from flax import traverse_util

from sdetalk_jax import audio
from sdetalk_jax.models.wav2vec2.model import (
    Wav2Vec2Config,
    Wav2Vec2Model,
    check_matmul_operands,
    normalize_waveform,
)

CACHE_FORMAT = 1
# Inputs are padded up to a multiple of this many samples (1 s): one compilation per second of
# length instead of one per clip; padding does not change the result (masked).
LENGTH_QUANTUM = audio.SAMPLE_RATE


def default_cache_dir() -> str:
    """$XDG_CACHE_HOME/sdetalk_jax/wav2vec2 (~/.cache/... when unset)."""
    base = os.environ.get("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache"))
    return os.path.join(base, "sdetalk_jax", "wav2vec2")


def params_fingerprint(config: Wav2Vec2Config, params, *, normalize: bool) -> str:
    """SHA-256 of the config, the input normalisation and every parameter (path, shape, bytes)."""
    digest = hashlib.sha256()
    digest.update(json.dumps(dataclasses.asdict(config), sort_keys=True).encode())
    digest.update(f"normalize={normalize};format={CACHE_FORMAT}".encode())
    for path, leaf in sorted(traverse_util.flatten_dict(params).items()):
        array = np.ascontiguousarray(np.asarray(leaf, np.float32))
        digest.update("/".join(path).encode())
        digest.update(str(array.shape).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def fingerprint_of_features(weights_fingerprint: str, matmul_operands: str) -> str:
    """What identifies the features: the weights' fingerprint, and the matmul operands' precision
    unless float32 (so float32 keys, and every cache written before, are unchanged)."""
    if matmul_operands == "float32":
        return weights_fingerprint
    return hashlib.sha256(f"{weights_fingerprint};operands={matmul_operands}".encode()).hexdigest()


# Where Linux lists the CPU's instruction sets (x86: a "flags" line per core).
CPUINFO = "/proc/cpuinfo"


def cpu_lacks_bfloat16_dots() -> bool:
    """True when jax runs on an x86 CPU whose flags name no bfloat16 dot instructions
    (avx512_bf16, amx_bf16): there bfloat16 operands are converted, not multiplied natively, and
    are unlikely to be faster. False on other backends and where the flags cannot be read."""
    if jax.default_backend() != "cpu":
        return False
    try:
        with open(CPUINFO) as handle:
            flags = next(
                (line.split(":", 1)[1].split() for line in handle if line.startswith("flags")), None
            )
    except OSError:
        return False
    return flags is not None and not {"avx512_bf16", "amx_bf16"} & set(flags)


def file_digest(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclasses.dataclass
class FeatureCache:
    """`directory/<model fingerprint>/<audio sha256>.npy`, hidden states [frames, hidden]."""

    directory: str
    model_fingerprint: str
    hits: int = 0
    misses: int = 0

    def path_for(self, audio_path: str, num_samples: int | None = None) -> str:
        span = "" if num_samples is None else f"-{num_samples}"
        return os.path.join(
            self.directory, self.model_fingerprint[:24], f"{file_digest(audio_path)}{span}.npy"
        )

    def get_or_compute(
        self, audio_path: str, compute: Callable[[], np.ndarray], num_samples: int | None = None
    ) -> np.ndarray:
        from sdetalk_jax.fileio import write_npy

        entry = self.path_for(audio_path, num_samples)
        if os.path.exists(entry):
            try:
                features = np.load(entry, allow_pickle=False)
                self.hits += 1
                return features
            except (ValueError, OSError, EOFError):
                os.remove(entry)  # unreadable: recompute below
        features = np.asarray(compute(), np.float32)
        write_npy(entry, features)
        self.misses += 1
        return features


class ContextEncoder:
    """Frozen wav2vec 2.0: `encode(waveform)` -> [frames, hidden] (about 50 frames per second).

    `fingerprint` identifies the weights (config, normalisation, parameters): what a run records
    as the encoder it was trained with. `matmul_operands` is "float32" (what training uses) or
    "bfloat16" (float32 accumulation: faster inference, features about 1 % RMS away;
    docs/animate.md); `features_fingerprint` adds it, and keys the feature cache."""

    def __init__(
        self,
        config: Wav2Vec2Config,
        params,
        *,
        normalize: bool = True,
        cache_dir: str | None = None,
        matmul_operands: str = "float32",
    ):
        check_matmul_operands(matmul_operands)
        if matmul_operands == "bfloat16" and cpu_lacks_bfloat16_dots():
            warnings.warn(
                "this CPU has no bfloat16 dot instructions (avx512_bf16, amx_bf16): bfloat16 "
                "encoder operands are likely no faster than float32 here; time both with "
                "benchmarks/encoder_precision.py",
                stacklevel=2,
            )
        self.config = config
        self.normalize = normalize
        self.matmul_operands = matmul_operands
        self.fingerprint = params_fingerprint(config, params, normalize=normalize)
        # On the device once: numpy parameters (as loaded) would be copied there at every call.
        self.params = jax.device_put(params)
        self.features_fingerprint = fingerprint_of_features(self.fingerprint, matmul_operands)
        self.cache = FeatureCache(cache_dir, self.features_fingerprint) if cache_dir else None
        model = Wav2Vec2Model(config, matmul_operands)

        def forward(params, samples, mask):
            hidden, _ = model.apply({"params": params}, samples, mask)
            return hidden

        self._forward = jax.jit(forward)

    @classmethod
    def from_config(
        cls, config, *, allow_download: bool = True, matmul_operands: str = "float32"
    ) -> ContextEncoder:
        """The run's frozen wav2vec 2.0: pretrained from `model.wav2vec2_checkpoint` (a folder or
        the hub cache; downloaded only when `allow_download` and online), or small and random from
        `model.wav2vec2_random` (seeded); features cached in `data.feature_cache` (default:
        `default_cache_dir()`)."""
        cache_dir = config.data.feature_cache or default_cache_dir()
        if config.model.wav2vec2_checkpoint:
            return cls.from_pretrained(
                config.model.wav2vec2_checkpoint,
                cache_dir=cache_dir,
                allow_download=allow_download,
                matmul_operands=matmul_operands,
            )
        settings = dict(config.model.wav2vec2_random)
        seed = settings.pop("seed", 0)
        encoder_config = Wav2Vec2Config.from_dict(settings)
        # Jitted: one compilation instead of one per initialiser op.
        params = jax.jit(Wav2Vec2Model(encoder_config).init)(
            jax.random.key(seed), np.zeros((1, encoder_config.receptive_field * 2), np.float32)
        )["params"]
        return cls(encoder_config, params, cache_dir=cache_dir, matmul_operands=matmul_operands)

    @classmethod
    def from_pretrained(
        cls,
        checkpoint: str,
        *,
        cache_dir: str | None = None,
        allow_download: bool = True,
        matmul_operands: str = "float32",
    ) -> ContextEncoder:
        from sdetalk_jax.models.wav2vec2.convert import load_pretrained, resolve_checkpoint

        folder = resolve_checkpoint(checkpoint, allow_download=allow_download)
        config, params = load_pretrained(folder)
        return cls(
            config,
            params,
            normalize=_reads_normalize(folder),
            cache_dir=cache_dir,
            matmul_operands=matmul_operands,
        )

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    def encode(self, waveform: np.ndarray) -> np.ndarray:
        """Hidden states of one 16 kHz mono waveform, [frames, hidden] float32."""
        if waveform.ndim != 1:
            raise ValueError(f"expected a mono waveform [samples], got shape {waveform.shape}")
        if len(waveform) < self.config.receptive_field:
            raise ValueError(
                f"audio of {len(waveform)} samples is shorter than the encoder's receptive field "
                f"({self.config.receptive_field} samples)"
            )
        if self.normalize:
            waveform = normalize_waveform(waveform)
        length = int(np.ceil(len(waveform) / LENGTH_QUANTUM) * LENGTH_QUANTUM)
        samples = np.zeros((1, length), np.float32)
        samples[0, : len(waveform)] = waveform
        mask = np.zeros((1, length), bool)
        mask[0, : len(waveform)] = True
        hidden = self._forward(self.params, samples, mask)
        return np.asarray(hidden[0, : self.config.frames_for(len(waveform))])

    def encode_file(self, path: str, num_samples: int | None = None) -> np.ndarray:
        """Hidden states of a wav file of any rate and channel count, through the cache if any.
        With `num_samples`, of its first num_samples (16 kHz) samples, zero-padded if shorter:
        the span of audio that a clip's face frames cover, the span the mel is taken from."""

        def compute():
            waveform = audio.load_audio(path, allow_silence=True)
            if num_samples is not None:
                waveform = np.pad(waveform[:num_samples], (0, max(num_samples - len(waveform), 0)))
            return self.encode(waveform)

        if self.cache is None:
            return compute()
        return self.cache.get_or_compute(path, compute, num_samples)


def _reads_normalize(folder: str) -> bool:
    """`do_normalize` from the checkpoint's preprocessor_config.json (True when absent)."""
    path = os.path.join(folder, "preprocessor_config.json")
    if not os.path.exists(path):
        return True
    with open(path) as handle:
        return bool(json.load(handle).get("do_normalize", True))
