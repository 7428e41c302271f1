"""Our Flax wav2vec 2.0 against transformers' PyTorch model, side by side on this machine.

    python benchmarks/wav2vec2_speed.py [--seconds 10] [--repeats 5]

Both use the base-960h architecture with the same random weights (converted through our loader), on
the same audio. Prints compile time separately from steady-state time, and the max difference.
Also times one pass over a synthetic corpus's training audio with a cold and a warm feature cache.
Needs the test extras (torch, transformers).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np


def time_calls(function, repeats: int) -> float:
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        timings.append(time.perf_counter() - start)
    return statistics.median(timings)


def model_speed(seconds: float, repeats: int) -> list[tuple[str, str]]:
    import jax
    import torch
    from transformers import Wav2Vec2Config as TorchConfig
    from transformers import Wav2Vec2Model as TorchModel

    from sdetalk_jax.models.wav2vec2.convert import load_pretrained
    from sdetalk_jax.models.wav2vec2.encoder import ContextEncoder

    torch.manual_seed(0)
    reference = TorchModel(TorchConfig()).eval()  # base architecture: post-LN, group norm
    folder = tempfile.mkdtemp(prefix="w2v-bench-")
    reference.save_pretrained(folder)
    config, params = load_pretrained(folder)
    encoder = ContextEncoder(config, params, normalize=False)
    waveform = (
        np.random.default_rng(0).standard_normal(int(seconds * 16_000)).astype(np.float32) * 0.1
    )

    start = time.perf_counter()
    ours = encoder.encode(waveform)
    compile_and_first = time.perf_counter() - start
    ours_time = time_calls(lambda: encoder.encode(waveform), repeats)
    with torch.inference_mode():
        tensor = torch.from_numpy(waveform)[None]
        expected = reference(tensor).last_hidden_state[0].numpy()
        torch_time = time_calls(lambda: reference(tensor), repeats)
    return [
        ("audio", f"{seconds:g} s, base-960h architecture, random weights"),
        (
            "devices",
            f"jax {jax.__version__} {jax.devices()[0].platform}, torch {torch.__version__} ({torch.get_num_threads()} threads)",
        ),
        ("ours: compile + first call (s)", f"{compile_and_first:.2f}"),
        ("ours: steady state (s)", f"{ours_time:.3f}"),
        ("PyTorch: steady state (s)", f"{torch_time:.3f}"),
        ("ratio ours / PyTorch", f"{ours_time / torch_time:.2f}"),
        ("max |difference|", f"{np.abs(ours - expected).max():.2e}"),
    ]


def cache_effect() -> list[tuple[str, str]]:
    """One pass over a small corpus's training audio through the encoder: cold vs warm cache."""
    import jax

    from sdetalk_jax.data import biwi, synthetic
    from sdetalk_jax.models.wav2vec2.encoder import ContextEncoder
    from sdetalk_jax.models.wav2vec2.model import Wav2Vec2Config, Wav2Vec2Model

    scratch = tempfile.mkdtemp(prefix="w2v-cache-")
    root = synthetic.generate_corpus(
        os.path.join(scratch, "corpus"), subjects=6, sentences=8, vertices=200, progress=False
    )
    clips = biwi.scan_corpus(root).split("train")
    config = Wav2Vec2Config()
    params = Wav2Vec2Model(config).init(jax.random.key(0), np.zeros((1, 16_000), np.float32))[
        "params"
    ]
    rows = []
    # Each pass builds a new encoder, as a restarted run would; only the cache folder persists.
    for label in ("cold cache", "warm cache (restarted run)"):
        encoder = ContextEncoder(config, params, cache_dir=os.path.join(scratch, "cache"))
        encoder.encode(np.zeros(16_000 * 4, np.float32))  # compile outside the timing
        start = time.perf_counter()
        for clip in clips:
            encoder.encode_file(clip.audio_path)
        elapsed = time.perf_counter() - start
        rows.append(
            (
                f"epoch of encoder features, {label} ({len(clips)} clips)",
                f"{elapsed:.2f} s (hits {encoder.cache.hits}, misses {encoder.cache.misses})",
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-cache", action="store_true")
    args = parser.parse_args()
    rows = model_speed(args.seconds, args.repeats)
    if not args.skip_cache:
        rows += cache_effect()
    print("| measure | value |")
    print("|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
