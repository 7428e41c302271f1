"""wav2vec2-base in float32 and in bfloat16 on one window of audio: time and feature difference.

    python benchmarks/encoder_precision.py [--seconds 20] [--repeats 3]

The encoder is most of animation's arithmetic (about 140 GFLOP per 10 s of audio). This times our
Flax wav2vec 2.0 (base architecture, random weights: the cost does not depend on them) on one
`animate` window, with its parameters and input in float32 (what every run is trained with) and
cast to bfloat16, and prints how far the bfloat16 features are from the float32 ones. Compile
time is reported apart from the steady-state median.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from sdetalk_jax.models.wav2vec2.encoder import ContextEncoder
from sdetalk_jax.models.wav2vec2.model import Wav2Vec2Config, Wav2Vec2Model


def timed_features(encoder: ContextEncoder, params, samples, mask, repeats: int):
    start = time.perf_counter()
    features = jax.block_until_ready(encoder._forward(params, samples, mask))
    first = time.perf_counter() - start
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        features = jax.block_until_ready(encoder._forward(params, samples, mask))
        timings.append(time.perf_counter() - start)
    return np.asarray(features, np.float32), first, statistics.median(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="animate's default window")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    config = Wav2Vec2Config()  # base: 768 wide, 12 layers
    params = jax.jit(Wav2Vec2Model(config).init)(
        jax.random.key(0), np.zeros((1, config.receptive_field * 2), np.float32)
    )["params"]
    encoder = ContextEncoder(config, params, normalize=False)
    rng = np.random.default_rng(0)
    samples = (0.1 * rng.standard_normal((1, int(args.seconds * 16_000)))).astype(np.float32)
    mask = np.ones(samples.shape, bool)

    rows = []
    reference = None
    for name, dtype in (("float32", jnp.float32), ("bfloat16", jnp.bfloat16)):
        cast = jax.tree.map(lambda x, d=dtype: x.astype(d), params)
        features, first, steady = timed_features(
            encoder, cast, jnp.asarray(samples, dtype), mask, args.repeats
        )
        if reference is None:
            reference, difference = features, "-"
        else:
            relative = np.sqrt(np.mean((features - reference) ** 2) / np.mean(reference**2))
            difference = f"{100 * relative:.2f} % RMS"
        rows.append(
            (name, f"{first:.1f}", f"{steady:.2f}", f"{args.seconds / steady:.1f}x", difference)
        )
    print(f"device: {jax.devices()[0].platform}, jax {jax.__version__}, {args.seconds:g} s window")
    print()
    print("| precision | first call, incl. compile (s) | steady (s) | real-time factor "
          "| features vs float32 |")  # fmt: skip
    print("|---|---:|---:|---:|---:|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
