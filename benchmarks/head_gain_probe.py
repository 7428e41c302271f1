"""What a trained run's head noise path has learnt: its gain against the speech and the speaker.

    python benchmarks/head_gain_probe.py --workdir runs/synthetic [--split test-a]

For each clip of the split (in its own speaker's style, noise seed = clip index) it reads the gain
[N, 3] of the head noise path (`model.head_noise_path`) and prints, averaged over clips: the
correlation over time of the summed gain with the audio's envelope 3 frames earlier (SynthBIWI's
head lags the speech by 0.12 s), and with the speaker's angular speed (smoothed over 4 frames); the
correlation across clips of the gain's nodding share with the speaker's; and how much the gain
varies over time (coefficient of variation per axis). A gain that does not follow the speech has
correlations near 0 and little variation.
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sdetalk_jax import audio, losses, metrics  # noqa: E402
from sdetalk_jax import evaluate as evaluation  # noqa: E402
from sdetalk_jax.data import batching  # noqa: E402
from sdetalk_jax.inference import TrainedModel  # noqa: E402

LAG_FRAMES = 3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--split", default="test-a")
    args = parser.parse_args()
    model = TrainedModel.load(args.workdir)
    if not model.networks.config.head_noise_path:
        raise SystemExit(f"{args.workdir}: this run has no head noise path (model.head_noise_path)")
    corpus = evaluation.open_corpus(model.config)
    dataset = evaluation.ClipDataset.from_corpus(
        corpus, args.split, model.assets.subjects, context_encoder=model.encoder
    )
    buckets = batching.bucket_lengths(max(dataset.lengths), min_length=model.config.data.bucket_min)
    generate = model.generate_fn()
    with_envelope, with_speed, nod_shares, gains = [], [], [], []
    for index, clip in enumerate(dataset.clips):
        if clip.subject not in model.assets.subjects:
            continue
        example = dataset.example(index)
        n = int(example["num_frames"])
        features = evaluation._padded_features(
            example, batching.bucket_for(n, buckets), example["template"]
        )
        subject = np.array([model.assets.subjects.index(clip.subject)])
        batch = evaluation.model_batch(features, subject, len(model.assets.subjects), targets=False)
        noise = jax.random.normal(
            jax.random.key(index), batch["frame_mask"].shape + (model.networks.config.hidden,)
        )
        gain = np.asarray(generate(model.params, batch, noise)["head_gain"][0, :n])
        envelope = metrics.frame_envelope(example["audio"], audio.SAMPLE_RATE, n, corpus.fps)
        total = gain.sum(-1)
        with_envelope.append(np.corrcoef(envelope[:-LAG_FRAMES], total[LAG_FRAMES:])[0, 1])
        rotation = jnp.asarray(example["rotation"][None, :n])
        speed, _, _ = losses.head_motion_envelopes(rotation, jnp.ones((1, n)), 4.0, 4.0)
        speed = np.asarray(speed[0])
        with_speed.append(np.corrcoef(speed.sum(-1), total[1:])[0, 1])
        nod_shares.append(
            (
                gain[:, 0].mean() / gain[:, :2].sum(-1).mean(),
                speed[:, 0].mean() / speed[:, :2].sum(-1).mean(),
            )
        )
        gains.append(gain)
    shares = np.array(nod_shares)
    variation = np.mean([g.std(0) / g.mean(0) for g in gains], axis=0)
    rows = [
        ("clips", f"{len(gains)} of {args.split}"),
        (
            f"gain vs envelope {LAG_FRAMES} frames earlier: mean r",
            f"{np.nanmean(with_envelope):.3f}",
        ),
        ("gain vs the speaker's angular speed: mean r", f"{np.nanmean(with_speed):.3f}"),
        (
            "nodding share of the gain vs the speaker's, across clips: r",
            f"{np.corrcoef(shares.T)[0, 1]:.3f}",
        ),
        (
            "gain over time, coefficient of variation (nod, shake, tilt)",
            ", ".join(f"{v:.2f}" for v in variation),
        ),
        (
            "mean gain (rad per noise unit per frame)",
            ", ".join(f"{v:.4f}" for v in np.concatenate(gains).mean(0)),
        ),
    ]
    print("| measure | value |")
    print("|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
