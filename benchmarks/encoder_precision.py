"""wav2vec2-base in float32 and in bfloat16 on one window of audio: time and feature difference.

    python benchmarks/encoder_precision.py [--seconds 10] [--repeats 3]
    python benchmarks/encoder_precision.py --workdir runs/synthetic [--split test-a]

The encoder is most of animation's arithmetic (about 140 GFLOP per 10 s of audio). This times our
Flax wav2vec 2.0 (base architecture, random weights: the cost does not depend on them) on one
`animate` window in three precisions, and prints how far each one's features are from float32's:

* float32: what every run is trained with;
* bfloat16 operands: `animate --encoder-precision bfloat16` (`ContextEncoder(matmul_operands=
  "bfloat16")`): every matmul's operands in bfloat16, accumulated and returned in float32, the
  strided feature convolutions as matmuls; the rest float32;
* bfloat16 throughout: parameters and input cast to bfloat16, every result rounded to it.

Compile time is reported apart from the steady-state median, and one matmul of the encoder's
feed-forward shape is timed in the same three precisions (why only the operands are bfloat16).

With `--workdir` (a trained run; its corpus must be where its config says), the effect of bfloat16
operands on what the run outputs instead: the split evaluated with each precision (`evaluate
--encoder-precision`), its figures side by side, and how far apart the two animations of each
clip are (posed vertices from the same noise, mm).
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from train_step import matmul_gflops  # the same timing as its reference matmul

from sdetalk_jax.models.wav2vec2.encoder import ContextEncoder
from sdetalk_jax.models.wav2vec2.model import Wav2Vec2Config, Wav2Vec2Model

PRECISIONS = (
    # (row, the encoder's matmul operands, dtype its parameters and input are cast to)
    ("float32", "float32", jnp.float32),
    ("bfloat16 operands, float32 accumulation", "bfloat16", jnp.float32),
    ("bfloat16 throughout", "float32", jnp.bfloat16),
)


def precision_gflops(rows: int = 1000, inner: int = 768, outer: int = 3072, repeats: int = 5):
    """GFLOP/s of one [rows, inner] x [inner, outer] product (the encoder's feed-forward shape):
    float32; bfloat16 operands with a float32 result; bfloat16 operands and result. Best of
    `repeats`."""
    keys = jax.random.split(jax.random.key(0))
    x, w = jax.random.normal(keys[0], (rows, inner)), jax.random.normal(keys[1], (inner, outer))
    cases = {
        "float32": (jnp.matmul, x, w),
        "bfloat16 operands, float32 result": (
            functools.partial(jnp.matmul, preferred_element_type=jnp.float32),
            x.astype(jnp.bfloat16),
            w.astype(jnp.bfloat16),
        ),
        "bfloat16 operands and result": (
            jnp.matmul,
            x.astype(jnp.bfloat16),
            w.astype(jnp.bfloat16),
        ),
    }
    return {name: matmul_gflops(a, b, product, repeats) for name, (product, a, b) in cases.items()}


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


EFFECT_METRICS = (
    "mean_vertex_error", "lve", "fdd", "emotion_error", "head_rotation_error", "head_diversity",
)  # fmt: skip


def animation_distance_mm(workdir: str, split: str) -> tuple[float, float]:
    """Mean and largest, over the split's clips, of the mean vertex distance (mm) between the
    posed faces animated with float32 and with bfloat16 encoder operands, from the same noise."""
    from sdetalk_jax import audio
    from sdetalk_jax.data import biwi
    from sdetalk_jax.data.corpus import open_corpus
    from sdetalk_jax.inference import TrainedModel

    models = {p: TrainedModel.load(workdir, encoder_precision=p) for p in ("float32", "bfloat16")}
    corpus = open_corpus(models["float32"].config)
    to_mm = 1000.0 if biwi.read_units(corpus.root) == "m" else 1.0
    distances = []
    for clip in corpus.split(split):
        waveform = audio.load_audio(clip.audio_path)
        subjects = models["float32"].assets.subjects
        subject = clip.subject if clip.subject in subjects else subjects[0]
        posed = [
            model.animate_waveform(waveform, subject=subject, key=jax.random.key(0))["vertices"]
            for model in models.values()
        ]
        distances.append(to_mm * float(np.linalg.norm(posed[0] - posed[1], axis=-1).mean()))
    return float(np.mean(distances)), float(np.max(distances))


def effect_on_a_run(workdir: str, split: str) -> None:
    """Prints the split's figures with each encoder precision, and the animations' distance."""
    import tempfile

    from sdetalk_jax.evaluate import evaluate

    reports = {}
    with tempfile.TemporaryDirectory() as out:
        for precision in ("float32", "bfloat16"):
            reports[precision] = evaluate(
                workdir, split, encoder_precision=precision, progress=False, force=True,
                out_dir=os.path.join(out, precision),
            )  # fmt: skip
    mean_mm, largest_mm = animation_distance_mm(workdir, split)
    units = reports["float32"]["units"]
    print(f"run {workdir}, split {split} ({reports['float32']['clips']} clips), SDETalk's figures")
    print()
    print("| metric | float32 encoder | bfloat16 operands |")
    print("|---|---:|---:|")
    for name in EFFECT_METRICS:
        values = [reports[p]["methods"]["SDETalk"][name] for p in ("float32", "bfloat16")]
        print(f"| {name} ({units[name]}) | {values[0]:.4g} | {values[1]:.4g} |")
    print(
        f"| posed faces, float32 to bfloat16 (mm; per clip, mean over frames and vertices) "
        f"| mean {mean_mm:.4g} | largest {largest_mm:.4g} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="animate's default window")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", help="a trained run: the effect on its outputs instead")
    parser.add_argument("--split", default="test-a", help="with --workdir: the split evaluated")
    args = parser.parse_args()
    if args.workdir:
        effect_on_a_run(args.workdir, args.split)
        return

    config = Wav2Vec2Config()  # base: 768 wide, 12 layers
    params = jax.jit(Wav2Vec2Model(config).init)(
        jax.random.key(0), np.zeros((1, config.receptive_field * 2), np.float32)
    )["params"]
    rng = np.random.default_rng(0)
    samples = (0.1 * rng.standard_normal((1, int(args.seconds * 16_000)))).astype(np.float32)
    mask = np.ones(samples.shape, bool)

    rows = []
    reference = None
    for name, operands, dtype in PRECISIONS:
        encoder = ContextEncoder(config, params, normalize=False, matmul_operands=operands)
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
    print()
    print("one [1000, 768] x [768, 3072] matmul (the feed-forward's shape), best of 5:")
    print()
    print("| operands and result | GFLOP/s |")
    print("|---|---:|")
    for name, rate in precision_gflops().items():
        print(f"| {name} | {rate:.0f} |")


if __name__ == "__main__":
    main()
