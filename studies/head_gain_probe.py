"""What a trained run's head noise path has learnt: its gain against the speech and the speaker.

    python -m studies.head_gain_probe --workdir runs/synthetic [--split test-a]

For each clip of the split (in its own speaker's style, noise seed = clip index) it reads the gain
[N, 3] of the head noise path (`model.head_noise_path`) and prints, averaged over clips: the
correlation over time of the summed gain with the audio's envelope 3 frames earlier (SynthBIWI's
head lags the speech by 0.12 s), and with the speaker's angular speed (smoothed over 4 frames); the
correlation across clips of the gain's nodding share with the speaker's; and how much the gain
varies over time (coefficient of variation per axis). A gain that does not follow the speech has
correlations near 0 and little variation.

Then, with the run's gain and the noise re-drawn (4 keys per clip) through each kind of
`model.head_noise`: how closely a sample's nodding share (`metrics.nod_share`) follows the gain's
and the speaker's across clips, and its speech/head consistency: what the noise makes of the gain.
"""

from __future__ import annotations

import argparse
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from sdetalk_jax import audio, losses, metrics
from sdetalk_jax import evaluate as evaluation
from sdetalk_jax.data import batching
from sdetalk_jax.inference import TrainedModel
from sdetalk_jax.models.config import HEAD_NOISE_KINDS
from sdetalk_jax.models.networks import Networks

LAG_FRAMES = 3
KEYS = 4


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
    with_envelope, with_speed, nod_shares, gains, inputs = [], [], [], [], []
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
        gain = np.asarray(generate(model.params, batch, noise).head_gain[0, :n])
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
        inputs.append((index, batch, example))
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
    print()
    noise_table(model, inputs, shares[:, 0], corpus.fps)


def noise_table(model, inputs, gain_shares, fps) -> None:
    """The run's gain through each kind of head noise: how a sample's nodding share and speed come
    out (mean and spread over the KEYS noise keys of the correlations across clips)."""
    print(f"| head_noise (noise re-drawn, {KEYS} keys) | sample nod share vs gain's, r "
          "| sample nod share vs speaker's, r | speech/head r |")  # fmt: skip
    print("|---|---:|---:|---:|")
    truth = np.array(
        [metrics.nod_share(e["rotation"][: int(e["num_frames"])]) for _, _, e in inputs]
    )
    for kind in HEAD_NOISE_KINDS:
        config = dataclasses.replace(model.networks.config, head_noise=kind)
        generator = Networks.build(config).generator
        generate = jax.jit(lambda p, b, z, g=generator: g.apply({"params": p}, b, z).rotation)
        shares, consistency = np.zeros((KEYS, len(inputs))), np.zeros((KEYS, len(inputs)))
        for row, (index, batch, example) in enumerate(inputs):
            n = int(example["num_frames"])
            for key in range(KEYS):
                noise = jax.random.normal(
                    jax.random.fold_in(jax.random.key(index), key),
                    batch["frame_mask"].shape + (config.hidden,),
                )
                rotation = np.asarray(generate(model.params, batch, noise)[0, :n])
                shares[key, row] = metrics.nod_share(rotation)
                consistency[key, row] = metrics.speech_head_consistency(
                    example["audio"], audio.SAMPLE_RATE, rotation, fps
                )
        with_gain = [np.corrcoef(gain_shares, s)[0, 1] for s in shares]
        with_truth = [np.corrcoef(truth, s)[0, 1] for s in shares]
        print(
            f"| {kind} | {np.mean(with_gain):.2f} +- {np.std(with_gain):.2f} "
            f"| {np.mean(with_truth):.2f} +- {np.std(with_truth):.2f} "
            f"| {consistency.mean():.2f} |"
        )


if __name__ == "__main__":
    main()
