"""How well can emotion be told from one clip of a voice never heard? A ceiling for test-b.

    python -m studies.unseen_emotion_ceiling [--config configs/synthetic.py] [--prosody]

Probes, not SDETalk: a ridge regression from one clip's audio summary to its emotion mixture,
fitted on the training split's clips (the six training speakers) and scored on test-a (those
speakers, other sentences) and test-b (speakers never heard) by the emotion error of
`sdetalk_jax.evaluate` (squared L2 to the label, the prediction projected onto the simplex), beside
the training mean mixture, the baseline every emotion error in docs/training.md is judged against.
The ridge strength is chosen by leave-one-speaker-out cross-validation on the training split, so
the choice itself is made for voices the fit has not heard.

The audio summary is the model's own input, the 128-bin log-mel spectrogram: per bin, the clip's
mean over frames, its standard deviation and the mean absolute frame-to-frame change (and, with
`--prosody`, studies/synthetic_relations.py's duration, log-f0 median and spread, loudness).
Each row normalises it another way:

* `raw`: as it is; a speaker's own level (pitch, loudness, timbre) is mixed into every feature;
* `per utterance`: each clip's own mean removed (the per-bin means and the log-f0 median and
  loudness dropped): only how the voice moves within the clip is left, which needs nothing but the
  clip itself and so holds for any voice;
* `per speaker (oracle)`: each speaker's mean over all of its clips in its split removed, test-b's
  speakers' included: what a perfect speaker baseline would give. An unseen speaker's mean is not
  known from one clip; this row bounds what a lookup by speaker (a per-speaker baseline of the
  emotion network's input) could do if the speaker were known.

A last row is the model's own readout (`model.emotion_statistics`, docs/training.md): the same
summary computed as the model computes it (`models.ops.clip_statistics` on the frame-aligned
log-mel), standardised, a softmax of one linear layer trained as a run trains it (L_cls's squared
error plus `loss.lambda_statistics` ||W||^2, Adam at the config's rate, schedule, batch and epochs),
for each penalty weight of READOUT_GRID, with its leave-one-speaker-out error on the training
split: the figures behind the weight in the configs.

It prints one table: emotion error per split and normalisation, and the relative margin over the
mean mixture (positive: better than always answering the training mean).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from sdetalk_jax import audio
from sdetalk_jax.config_files import load_module
from sdetalk_jax.data.corpus import open_corpus
from sdetalk_jax.data.pipeline import mean_emotion_mixture

SPLITS = ("train", "test-a", "test-b")
RIDGE_GRID = (1.0, 10.0, 100.0, 1e3, 1e4, 1e5)
READOUT_GRID = (0.01, 0.03, 0.1, 0.3)


def mel_summary(waveform: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(level [128], movement [256]): per mel bin, the clip's mean log-mel, and its standard
    deviation over frames with the mean absolute change from frame to frame."""
    mel = audio.log_mel_spectrogram(waveform).astype(np.float64)
    movement = np.concatenate([mel.std(0), np.abs(np.diff(mel, axis=0)).mean(0)])
    return mel.mean(0), movement


def clip_features(clips, prosody: bool, progress: bool = True):
    """(level [n, L], movement [n, M]) of every clip: the features that depend on the voice's
    level, and those that describe only how it moves within the clip."""
    from tqdm import tqdm

    levels, movements = [], []
    for clip in tqdm(clips, desc="audio features", disable=not progress):
        waveform = audio.load_audio(clip.audio_path)
        level, movement = mel_summary(waveform)
        if prosody:
            from sdetalk_jax.data.synthetic import analysis

            duration, median, spread, loudness = analysis.prosody_features(
                waveform, audio.SAMPLE_RATE
            )
            level = np.r_[level, median, loudness]
            movement = np.r_[movement, np.log(duration), spread]
        levels.append(level)
        movements.append(movement)
    return np.array(levels), np.array(movements)


def project_to_simplex(values: np.ndarray) -> np.ndarray:
    """Each row onto the probability simplex (Euclidean projection), as a mixture must lie."""
    ordered = -np.sort(-values, axis=1)
    cumulative = np.cumsum(ordered, axis=1) - 1.0
    index = np.arange(1, values.shape[1] + 1)
    support = ordered - cumulative / index > 0
    count = support.sum(axis=1, keepdims=True)
    threshold = np.take_along_axis(cumulative, count - 1, axis=1) / count
    return np.maximum(values - threshold, 0.0)


def fit_ridge(x: np.ndarray, y: np.ndarray, strength: float):
    """(mean, scale, weights, intercept) of a ridge regression on standardised features."""
    mean, scale = x.mean(0), x.std(0) + 1e-9
    z = (x - mean) / scale
    intercept = y.mean(0)
    gram = z.T @ z + strength * np.eye(z.shape[1])
    weights = np.linalg.solve(gram, z.T @ (y - intercept))
    return mean, scale, weights, intercept


def predict(model, x: np.ndarray) -> np.ndarray:
    mean, scale, weights, intercept = model
    return project_to_simplex((x - mean) / scale @ weights + intercept)


def emotion_error(prediction: np.ndarray, labels: np.ndarray) -> float:
    """`metrics.emotion_error` averaged over clips: squared L2 between mixtures."""
    return float(np.mean(np.sum(np.square(prediction - labels), axis=1)))


def choose_strength(x: np.ndarray, y: np.ndarray, speakers: np.ndarray) -> float:
    """The ridge strength of RIDGE_GRID with the lowest leave-one-speaker-out error."""
    errors = []
    for strength in RIDGE_GRID:
        held_out = []
        for speaker in np.unique(speakers):
            out = speakers == speaker
            model = fit_ridge(x[~out], y[~out], strength)
            held_out.append(emotion_error(predict(model, x[out]), y[out]) * out.sum())
        errors.append(sum(held_out) / len(x))
    return RIDGE_GRID[int(np.argmin(errors))]


def model_statistics(corpus, split: str, progress: bool = True) -> np.ndarray:
    """[n, 3 bins]: `clip_statistics` of the split's labelled clips, as the model reads them."""
    from tqdm import tqdm

    from sdetalk_jax.data.pipeline import ClipDataset
    from sdetalk_jax.models import ops

    dataset = ClipDataset.from_corpus(corpus, split, ())
    rows = []
    for index in tqdm(range(len(dataset.clips)), desc="model statistics", disable=not progress):
        if dataset.clips[index].emotion is None:
            continue
        mel = dataset.log_mel(index)[None]
        rows.append(np.asarray(ops.clip_statistics(mel, np.ones(mel.shape[:2], bool)))[0])
    return np.array(rows)


def fit_readout(x, y, strength: float, train_config, seed: int = 0):
    """`model.emotion_statistics`' readout fitted alone, as a run fits it: (centre, scale, W, b)."""
    import jax
    import jax.numpy as jnp
    import optax

    from sdetalk_jax import optim

    centre, scale = x.mean(0), x.std(0) + 1e-6
    z = jnp.asarray((x - centre) / scale, jnp.float32)
    batch = int(train_config.global_batch)
    steps_per_epoch = len(x) // batch
    total = steps_per_epoch * int(train_config.epochs)
    tx = optax.adam(optim.learning_rate(train_config, total))
    params = (jnp.zeros((x.shape[1], y.shape[1])), jnp.zeros(y.shape[1]))

    def loss(params, z, y):
        mixture = jax.nn.softmax(z @ params[0] + params[1])
        return jnp.mean(jnp.sum(jnp.square(mixture - y), 1)) + strength * jnp.sum(
            jnp.square(params[0])
        )

    @jax.jit
    def epoch(carry, order):
        def step(carry, rows):
            params, state = carry
            updates, state = tx.update(jax.grad(loss)(params, z[rows], y[rows]), state, params)
            return (optax.apply_updates(params, updates), state), None

        return jax.lax.scan(step, carry, order.reshape(steps_per_epoch, batch))[0]

    y = jnp.asarray(y, jnp.float32)
    carry = (params, tx.init(params))
    rng = np.random.default_rng(seed)
    for _ in range(int(train_config.epochs)):
        carry = epoch(carry, jnp.asarray(rng.permutation(len(x))[: steps_per_epoch * batch]))
    weights, bias = carry[0]
    return centre, scale, np.asarray(weights), np.asarray(bias)


def readout_predict(readout, x) -> np.ndarray:
    centre, scale, weights, bias = readout
    logits = (x - centre) / scale @ weights + bias
    logits = logits - logits.max(1, keepdims=True)
    return np.exp(logits) / np.exp(logits).sum(1, keepdims=True)


def leave_one_speaker_out_error(x, y, speakers, strength: float, train_config) -> float:
    """The readout's emotion error on each training speaker when fitted on the others."""
    held_out = 0.0
    for speaker in np.unique(speakers):
        out = speakers == speaker
        readout = fit_readout(x[~out], y[~out], strength, train_config)
        held_out += emotion_error(readout_predict(readout, x[out]), y[out]) * out.sum()
    return held_out / len(x)


def normalised(level, movement, speakers, kind: str) -> np.ndarray:
    if kind == "raw":
        return np.c_[level, movement]
    if kind == "per utterance":
        return movement
    if kind == "per speaker (oracle)":
        features = np.c_[level, movement]
        centred = features.copy()
        for speaker in np.unique(speakers):
            centred[speakers == speaker] -= features[speakers == speaker].mean(0)
        return centred
    raise ValueError(kind)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/synthetic.py")
    parser.add_argument("--prosody", action="store_true", help="add pYIN prosody (slow)")
    args = parser.parse_args(argv)
    config = load_module(args.config).get_config()
    corpus = open_corpus(config)
    data = {}
    for split in SPLITS:
        clips = [clip for clip in corpus.split(split) if clip.emotion is not None]
        labels = np.array([clip.emotion / clip.emotion.sum() for clip in clips])
        speakers = np.array([clip.subject for clip in clips])
        data[split] = (*clip_features(clips, args.prosody), speakers, labels)
    mean_mixture = mean_emotion_mixture(corpus.split("train"))
    print(f"\ncorpus {corpus.root}: " + ", ".join(
        f"{split} {len(data[split][3])} labelled clips of {len(np.unique(data[split][2]))} speakers"
        for split in SPLITS
    ))  # fmt: skip
    print("\n| features | ridge | test-a error | margin | test-b error | margin |")
    print("|---|---:|---:|---:|---:|---:|")
    baseline = {
        split: emotion_error(np.broadcast_to(mean_mixture, data[split][3].shape), data[split][3])
        for split in SPLITS[1:]
    }
    print(
        f"| training mean mixture | | {baseline['test-a']:.4f} | 0 % | "
        f"{baseline['test-b']:.4f} | 0 % |"
    )
    for kind in ("raw", "per utterance", "per speaker (oracle)"):
        level, movement, speakers, labels = data["train"]
        x = normalised(level, movement, speakers, kind)
        strength = choose_strength(x, labels, speakers)
        model = fit_ridge(x, labels, strength)
        cells = []
        for split in SPLITS[1:]:
            level, movement, speakers, labels = data[split]
            error = emotion_error(
                predict(model, normalised(level, movement, speakers, kind)), labels
            )
            cells.append(f"{error:.4f} | {1 - error / baseline[split]:+.0%}")
        print(f"| {kind} | {strength:g} | " + " | ".join(cells) + " |")
    statistics = {split: model_statistics(corpus, split, progress=False) for split in SPLITS}
    _, _, speakers, labels = data["train"]
    print(
        "\nmodel.emotion_statistics' readout alone, by loss.lambda_statistics "
        f"(as {args.config} trains)\n"
    )
    print("| lambda_statistics | leave-one-speaker-out error | test-a error | margin "
          "| test-b error | margin |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|")
    for strength in READOUT_GRID:
        held_out = leave_one_speaker_out_error(
            statistics["train"], labels, speakers, strength, config.train
        )
        readout = fit_readout(statistics["train"], labels, strength, config.train)
        cells = []
        for split in SPLITS[1:]:
            error = emotion_error(readout_predict(readout, statistics[split]), data[split][3])
            cells.append(f"{error:.4f} | {1 - error / baseline[split]:+.1%}")
        print(f"| {strength:g} | {held_out:.4f} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
