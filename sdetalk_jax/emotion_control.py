"""Choosing the emotion instead of inferring it: per-category prototypes of the emotional
embedding, and a requested mixture turned into what the generator reads.

Prototypes. Every training clip's emotional embedding e (Fig. 3), averaged over its frames, is
ē_i. Over the emotional takes, whose labels y_i are mixtures of the run's categories, we fit
ē_i ≈ sum_c y_ic P_c by least squares (ridge-shrunk towards the label-weighted means): P_c is the
embedding of a take spoken purely with emotion c, which no single clip need be, since labels are
mixtures (the paper's Fig. 1). The neutral takes' mean is P_neutral. That start lands near the
average emotional face, so `refine_prototypes` then moves each P_c until G, reading it over the
training takes' speech with an animation's noise, draws the face the takes attribute to c in
shape and tells it from the other categories' (`category_offsets`: their true expression offsets
regressed on their mixtures the same way; `prototype_fit_loss`), and fits each category's gain,
the factor on G's offset that gives that face its size (`prototype_gains`). Training fits them
for its best checkpoint when it ends and saves them in `WORKDIR/emotion_prototypes/STEP.npz`; for
another checkpoint or an older run `inference.TrainedModel` fits them from the run's corpus the
first time they are asked for.

A request w (weights over categories, normalised, optionally with `inferred`: the clip's own
emotion) becomes target = sum_c w_c P_c with gain g = sum_c w_c g_c (1 for `inferred`), and G
reads e'(t) = e(t) - (1 - w_inferred) ē + target (`models.emotion.steer_embedding`): the speech's
own frame-to-frame variation with the clip-level emotion replaced. The classifier reads e' too, so
the animation's `emotion` is the run's own reading of the request. The intensity a and the gain
multiply G's expression offset, f^e = f^n + a g (f^e - f^n); `none` is intensity 0 with the
neutral prototype: the neutral generator's face, with head motion.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np

from sdetalk_jax.data.pipeline import model_batch
from sdetalk_jax.fileio import write_npz
from sdetalk_jax.models.ops import masked_mean

PROTOTYPES_DIR = "emotion_prototypes"
INFERRED = "inferred"
NONE = "none"
MAX_INTENSITY = 3.0
# A category needs this much label weight among the training takes for a prototype of its own.
MIN_CATEGORY_WEIGHT = 0.5
# Refinement steps for a run whose config does not say (`train.emotion_prototype_steps`).
DEFAULT_REFINE_STEPS = 600
# How sharply the prototypes' fit tells each category's face from the others' (`category_match_loss`).
MATCH_TEMPERATURE = 0.05
# The most a prototype's gain may enlarge (or shrink) G's expression offset (`prototype_gains`).
MAX_GAIN = 20.0


class EmotionRequestError(ValueError):
    """A request that names an unknown category, or weights that are not a mixture."""


@dataclasses.dataclass(frozen=True)
class EmotionPrototypes:
    categories: tuple[str, ...]
    prototypes: np.ndarray  # [C, hidden]; NaN rows for categories with too little training weight
    neutral: np.ndarray  # [hidden]; NaN when the corpus has no neutral take
    weights: np.ndarray  # [C], the label weight behind each prototype
    step: int  # the checkpoint step whose emotion network they come from
    # [C], the factor on G's expression offset that gives each category's face its size
    # (`prototype_gains`); None (prototypes saved before gains existed) is 1 for every category.
    gains: np.ndarray | None = None

    @staticmethod
    def path(workdir: str, step: int) -> str:
        return os.path.join(workdir, PROTOTYPES_DIR, f"{step}.npz")

    def save(self, workdir: str) -> str:
        path = self.path(workdir, self.step)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_npz(
            path,
            categories=np.array(self.categories, dtype=np.str_),
            prototypes=self.prototypes,
            neutral=self.neutral,
            weights=self.weights,
            step=np.int64(self.step),
            gains=self.category_gains(),
        )
        return path

    @classmethod
    def load(cls, path: str) -> EmotionPrototypes:
        with np.load(path, allow_pickle=False) as archive:
            return cls(
                tuple(str(name) for name in archive["categories"]),
                archive["prototypes"],
                archive["neutral"],
                archive["weights"],
                int(archive["step"]),
                archive["gains"] if "gains" in archive.files else None,
            )

    def category_gains(self) -> np.ndarray:
        if self.gains is None:
            return np.ones(len(self.categories), np.float32)
        return np.asarray(self.gains, np.float32)

    def available(self) -> tuple[str, ...]:
        usable = np.all(np.isfinite(self.prototypes), axis=1)
        return tuple(name for name, ok in zip(self.categories, usable, strict=True) if ok)


def padded_length(frames: int, multiple: int = 64) -> int:
    return -(-frames // multiple) * multiple


def clip_embeddings(generator, params, dataset, batch_size: int = 8) -> np.ndarray:
    """ē_i [clips, hidden] (float64) of every clip of a `data.pipeline.ClipDataset`: padded to a
    few lengths so that a handful of shapes are compiled (padding does not change e, whose
    blocks mask it)."""
    embed = jax.jit(
        lambda p, mel, mask: generator.apply(
            {"params": p}, mel, mask, method=type(generator).clip_embedding
        )
    )
    by_length: dict[int, list[int]] = {}
    for index, clip in enumerate(dataset.clips):
        by_length.setdefault(padded_length(clip.num_frames), []).append(index)
    means = np.zeros((len(dataset.clips), generator.config.hidden), np.float64)
    for length, indices in sorted(by_length.items()):
        for first in range(0, len(indices), batch_size):
            chunk = indices[first : first + batch_size]
            mel = np.zeros((batch_size, length, generator.config.mel_bins), np.float32)
            mask = np.zeros((batch_size, length), bool)
            for row, index in enumerate(chunk):
                clip_mel = dataset.log_mel(index)
                mel[row, : len(clip_mel)] = clip_mel
                mask[row, : len(clip_mel)] = True
            means[chunk] = np.asarray(embed(params, mel, mask))[: len(chunk)]
    return means


def fit_prototypes(
    means: np.ndarray,
    labels: np.ndarray,
    emotional: np.ndarray,
    categories,
    step: int,
    ridge: float = 1e-2,
) -> EmotionPrototypes:
    """Prototypes from clip means [n, H], labels [n, C] (NaN rows: unlabelled) and which clips are
    emotional takes [n]: least squares over the labelled emotional takes, shrunk by `ridge`
    (relative to the labels' mean square) towards each category's label-weighted mean."""
    means = np.asarray(means, np.float64)
    labelled = emotional & np.all(np.isfinite(labels), axis=1) & (np.nansum(labels, axis=1) > 0)
    y = np.asarray(labels[labelled], np.float64)
    y = y / np.maximum(y.sum(axis=1, keepdims=True), 1e-12)
    e = means[labelled]
    weights = y.sum(axis=0)
    weighted_mean = (y.T @ e) / np.maximum(weights, 1e-12)[:, None]
    gram = y.T @ y
    strength = ridge * np.trace(gram) / max(len(weights), 1)
    if strength > 0:
        prototypes = np.linalg.solve(
            gram + strength * np.eye(len(weights)), y.T @ e + strength * weighted_mean
        )
    else:  # no labelled emotional take: no category has a prototype
        prototypes = np.full((len(weights), means.shape[1]), np.nan)
    prototypes[weights < MIN_CATEGORY_WEIGHT] = np.nan
    neutral_takes = means[~emotional]
    neutral = neutral_takes.mean(axis=0) if len(neutral_takes) else np.full(means.shape[1], np.nan)
    return EmotionPrototypes(
        tuple(categories), prototypes.astype(np.float32), neutral.astype(np.float32),
        weights.astype(np.float32), int(step),
    )  # fmt: skip


def labelled_takes(dataset) -> list[int]:
    return [
        i for i, clip in enumerate(dataset.clips) if clip.emotional and clip.emotion is not None
    ]


def cropped_batch(dataset, indices, crop: int, num_subjects: int) -> dict:
    """The first `crop` frames of each take (shorter ones padded and masked) as a model batch, with
    its label mixture, true face and neutral track where it has one."""
    rows = len(indices)
    examples = [dataset.example(i) for i in indices]
    first = examples[0]
    batch = {
        key: np.zeros((rows, crop) + first[key].shape[1:], np.float32)
        for key in ("context", "mel", "vertices", "neutral_vertices")
    }
    batch["frame_mask"] = np.zeros((rows, crop), bool)
    for row, example in enumerate(examples):
        n = min(int(example["num_frames"]), crop)
        for key in ("context", "mel", "vertices", "neutral_vertices"):
            batch[key][row, :n] = example[key][:n]
        batch["frame_mask"][row, :n] = True
    batch["template"] = np.stack([e["template"] for e in examples])
    subjects = [int(e["subject"]) for e in examples]
    return {
        **model_batch(batch, subjects, num_subjects, targets=False),
        "vertices": batch["vertices"],
        "neutral_vertices": batch["neutral_vertices"],
        "has_neutral": np.array([bool(e["has_neutral"]) for e in examples]),
        "emotion": np.stack([e["emotion"] for e in examples]),
    }


def category_offsets(offsets: np.ndarray, labels: np.ndarray, ridge: float = 1e-3) -> np.ndarray:
    """What each category adds to the neutral face [C, V*3]: the takes' mean expression offsets
    [n, V*3] fitted by least squares as their label mixtures [n, C] of per-category offsets (a
    mixed emotion's face as the mixture of its parts' faces)."""
    y = labels / np.maximum(labels.sum(axis=1, keepdims=True), 1e-12)
    gram = y.T @ y
    strength = ridge * np.trace(gram) / len(gram)
    return np.linalg.solve(gram + strength * np.eye(len(gram)), y.T @ offsets)


def mean_offset(generator, params, batch, prototype, noise=None) -> jax.Array:
    """G's expression offset f^e - f^n averaged over each row's frames [B, V*3] when it reads the
    clip-level embedding `prototype` [hidden] instead of the speech's own, with `noise` z
    [B, N, hidden] (None: z = 0, the centre of the diversity mapping)."""
    rows = batch["mel"].shape[0]
    steered = {
        **batch,
        "emotion_target": jnp.broadcast_to(prototype, (rows, prototype.shape[-1])),
        "emotion_inferred_weight": jnp.zeros((rows,)),
        "expression_scale": jnp.ones((rows,)),
    }
    if noise is None:
        noise = jnp.zeros(batch["mel"].shape[:2] + (generator.config.hidden,))
    return generator.apply(
        {"params": params}, steered, noise, method=type(generator).mean_expression_offset
    )


def true_mean_offsets(generator, params, batch) -> jax.Array:
    """Each take's true expression offset averaged over its frames [B, V*3]: the face minus its
    neutral track, or minus G_n's neutral face f^n where the take has none."""
    noise = jnp.zeros(batch["mel"].shape[:2] + (generator.config.hidden,))
    neutral = generator.apply({"params": params}, batch, noise).neutral
    neutral = jnp.where(batch["has_neutral"][:, None, None], batch["neutral_vertices"], neutral)
    return masked_mean(batch["vertices"] - neutral, batch["frame_mask"])


def centred_unit_rows(offsets: jax.Array) -> jax.Array:
    """Each row of `offsets` [C, D] minus its mean over coordinates, scaled to unit length: dot
    products of such rows are Pearson correlations, how alike offsets are in shape."""
    centred = offsets - offsets.mean(-1, keepdims=True)
    return centred / jnp.maximum(jnp.linalg.norm(centred, axis=-1, keepdims=True), 1e-20)


def offset_correlation(produced: jax.Array, targets: jax.Array) -> jax.Array:
    """Pearson r between each row of `produced` [C, D] and the same row of `targets` [C, D], over
    coordinates: how alike two offsets are in shape, whatever their size."""
    return jnp.sum(centred_unit_rows(produced) * centred_unit_rows(targets), -1)


def mean_offsets_under(generator, params, prototypes, batch, noise=None) -> jax.Array:
    """G's offset under each prototype [C, V*3], averaged over the frames and takes of `batch`,
    every prototype with the same `noise` (`mean_offset`)."""
    produced = jax.vmap(lambda p: mean_offset(generator, params, batch, p, noise))(prototypes)
    rows = batch["frame_mask"].any(-1).astype(produced.dtype)
    return jnp.einsum("cbd,b->cd", produced, rows) / jnp.maximum(rows.sum(), 1.0)


def category_match_loss(produced: jax.Array, targets: jax.Array, temperature: float) -> jax.Array:
    """Cross-entropy of telling each category's face apart: G's offset under prototype c,
    `produced` [C, D], correlated with every category's offset `targets` [C, D], should match
    c's best (a softmax over the correlations at `temperature`)."""
    logits = centred_unit_rows(produced) @ centred_unit_rows(targets).T / temperature
    return jnp.mean(-jnp.diagonal(jax.nn.log_softmax(logits, axis=-1)))


def prototype_fit_loss(generator, params, prototypes, batch, targets, noise=None) -> jax.Array:
    """1 - r between G's offset under each category's prototype (over the takes of `batch`: their
    own speech, the emotion replaced, with `noise`) and that category's offset `targets` [C, V*3],
    averaged over the categories, plus `category_match_loss` (each offset must correlate best
    with its own category's, at MATCH_TEMPERATURE). Only the shape counts: the categories' faces
    are much alike (SynthBIWI's correlate at up to 0.95), and a G trained on mixtures draws a pure
    one at a fraction of its size; asked for the size as well (squared error), it drew broad shared
    patterns instead (docs/animate.md). `prototype_gains` restores the size. With the noise of an
    animation, what the noise adds to the face counts against the shape, so the fit makes the
    emotion's own part stand out from it."""
    produced = mean_offsets_under(generator, params, prototypes, batch, noise)
    shape = jnp.mean(1.0 - offset_correlation(produced, targets))
    return shape + category_match_loss(produced, targets, MATCH_TEMPERATURE)


def prototype_gains(produced: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """The factor [C] on G's expression offset that brings its offset under each prototype,
    `produced` [C, D], to the size of the category's own, `targets` [C, D] (least squares),
    within [1 / MAX_GAIN, MAX_GAIN]."""
    produced = np.asarray(produced, np.float64)
    fit = np.sum(produced * targets, -1) / np.maximum(np.sum(produced * produced, -1), 1e-30)
    return np.clip(fit, 1.0 / MAX_GAIN, MAX_GAIN)


def fit_batches(generator, params, dataset, batch_size: int, crop: int):
    """The labelled emotional training takes, cut to their first `crop` frames, as G's input
    batches, and every category's offset [C, V*3] from their true faces (`category_offsets`)."""
    takes = labelled_takes(dataset)
    num_subjects = generator.config.num_subjects
    chunks = [takes[i : i + batch_size] for i in range(0, len(takes), batch_size)]
    batches = [cropped_batch(dataset, chunk, crop, num_subjects) for chunk in chunks]
    offsets_of = jax.jit(lambda batch: true_mean_offsets(generator, params, batch))
    offsets = np.concatenate([np.asarray(offsets_of(batch)) for batch in batches])
    labels = np.concatenate([batch["emotion"] for batch in batches])
    inputs = [
        {k: v for k, v in b.items() if k not in ("vertices", "neutral_vertices")} for b in batches
    ]
    return inputs, category_offsets(offsets, labels)


def refine_prototypes(
    generator, params, dataset, prototypes: np.ndarray, *, steps: int, learning_rate: float = 0.1,
    batch_size: int = 4, crop: int = 64, seed: int = 0, progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(prototypes [C, H], gains [C]): the prototypes moved by Adam until G, reading prototype c
    over the training takes' speech, draws the face the training takes attribute to c in shape
    (`prototype_fit_loss`): the embedding of emotion c is then whatever makes G draw emotion c,
    not only where takes labelled with it happen to lie; and the factor on G's offset that gives
    that face its size (`prototype_gains`, over all takes). Adam's rate decays from
    `learning_rate` to 0 on a cosine. Takes are cut to their first `crop` frames (two compiled
    shapes at most: full batches and the last); the noise is drawn from `seed`. `steps` = 0
    returns the prototypes as they are, with gains of 1."""
    import optax
    from tqdm import tqdm

    usable = np.all(np.isfinite(prototypes), axis=1)
    gains = np.ones(len(prototypes), np.float32)
    if steps <= 0 or not usable.any() or not labelled_takes(dataset):
        return prototypes, gains
    inputs, targets = fit_batches(generator, params, dataset, batch_size, crop)
    targets = jnp.asarray(targets[usable], jnp.float32)
    hidden = generator.config.hidden
    key = jax.random.key(seed)

    def noise_for(batch, index):  # an animation's noise, drawn afresh for every step
        return jax.random.normal(jax.random.fold_in(key, index), batch["mel"].shape[:2] + (hidden,))

    optimiser = optax.adam(optax.cosine_decay_schedule(learning_rate, steps))
    loss_and_grad = jax.jit(
        jax.value_and_grad(
            lambda p, batch, index: prototype_fit_loss(
                generator, params, p, batch, targets, noise_for(batch, index)
            )
        )
    )
    current = jnp.asarray(prototypes[usable], jnp.float32)
    state = optimiser.init(current)
    for step in tqdm(range(steps), desc="emotion prototypes", disable=not progress):
        _, grads = loss_and_grad(current, inputs[step % len(inputs)], step)
        updates, state = optimiser.update(grads, state, current)
        current = optax.apply_updates(current, updates)
    offsets_under = jax.jit(
        lambda batch, index: mean_offsets_under(
            generator, params, current, batch, noise_for(batch, index)
        )
    )
    takes = np.array([b["frame_mask"].any(-1).sum() for b in inputs], np.float64)
    produced = [np.asarray(offsets_under(b, steps + i)) for i, b in enumerate(inputs)]
    produced = np.einsum("bcd,b->cd", np.array(produced, np.float64), takes / takes.sum())
    gains[usable] = prototype_gains(produced, np.asarray(targets))
    refined = np.array(prototypes, np.float32)
    refined[usable] = np.asarray(current)
    return refined, gains


def gather_prototypes(
    generator, params, dataset, categories, step: int, *, refine_steps: int = 0,
    progress: bool = False,
) -> EmotionPrototypes:  # fmt: skip
    """Fits the prototypes of `generator` with `params` to the clips of `dataset` (the training
    split): least squares on the clip means, then `refine_steps` of `refine_prototypes`."""
    labels = np.full((len(dataset.clips), len(categories)), np.nan)
    for index, clip in enumerate(dataset.clips):
        if clip.emotion is not None:
            labels[index] = clip.emotion
    emotional = np.array([clip.emotional for clip in dataset.clips], bool)
    means = clip_embeddings(generator, params, dataset)
    fitted = fit_prototypes(means, labels, emotional, categories, step)
    refined, gains = refine_prototypes(
        generator, params, dataset, fitted.prototypes, steps=refine_steps, progress=progress
    )
    return dataclasses.replace(fitted, prototypes=refined, gains=gains)


@dataclasses.dataclass(frozen=True)
class EmotionRequest:
    """What the user asked for: weights over the run's categories (and `inferred`) that sum to
    one, or none at all (`none`: no emotional expression), and the expression's intensity."""

    weights: dict[str, float]
    intensity: float = 1.0

    @property
    def needs_prototypes(self) -> bool:
        """Whether the request names a category or is `none` (the neutral prototype)."""
        return not self.weights or any(name != INFERRED for name in self.weights)

    @property
    def is_default(self) -> bool:
        return self.weights == {INFERRED: 1.0} and self.intensity == 1.0

    def describe(self) -> str:
        if not self.weights:
            return NONE
        return ",".join(f"{name}={weight:.3g}" for name, weight in self.weights.items())


def parse_emotion(spec: str, categories, intensity: float = 1.0) -> EmotionRequest:
    """'inferred' (the default), 'none', 'anger' or 'happiness=0.7,surprise=0.3' (weights are
    normalised; 'inferred' may take part in a blend) -> EmotionRequest."""
    if not (np.isfinite(intensity) and 0.0 <= intensity <= MAX_INTENSITY):
        raise EmotionRequestError(
            f"emotion intensity must be between 0 and {MAX_INTENSITY:g}, not {intensity}"
        )
    spec = spec.strip()
    if spec == NONE:
        return EmotionRequest({}, 0.0)
    known = (*categories, INFERRED)
    weights: dict[str, float] = {}
    for part in filter(None, (piece.strip() for piece in spec.split(","))):
        name, _, value = part.partition("=")
        name = name.strip()
        if name not in known:
            raise EmotionRequestError(
                f"unknown emotion '{name}': this run's categories are {', '.join(categories)} "
                f"(or '{INFERRED}', the speech's own, or '{NONE}')"
            )
        try:
            weight = float(value) if value else 1.0
        except ValueError:
            raise EmotionRequestError(f"emotion weight '{part}' is not a number") from None
        if not (np.isfinite(weight) and weight >= 0.0):
            raise EmotionRequestError(f"emotion weight '{part}' must be zero or more")
        weights[name] = weights.get(name, 0.0) + weight
    total = sum(weights.values())
    if total <= 0.0:
        raise EmotionRequestError(f"emotion '{spec}' gives no weight to any category")
    return EmotionRequest({name: w / total for name, w in weights.items() if w > 0}, intensity)


def request_inputs(
    request: EmotionRequest, hidden: int, prototypes: EmotionPrototypes | None = None
) -> dict:
    """The generator's inputs for a request, for one batch row: emotion_target [hidden],
    emotion_inferred_weight [], expression_scale [] (`models.emotion.steer_embedding`).
    `prototypes` are read only if the request names a category or is `none`
    (`EmotionRequest.needs_prototypes`)."""
    if request.needs_prototypes and prototypes is None:
        raise ValueError(f"emotion '{request.describe()}' needs the run's prototypes")
    target = np.zeros(hidden, np.float64)
    inferred = request.weights.get(INFERRED, 0.0)
    if not request.weights:  # none: a neutral take's embedding, or the speech's own if none
        if np.all(np.isfinite(prototypes.neutral)):
            target = prototypes.neutral.astype(np.float64)
        else:
            inferred = 1.0
    gain = inferred  # the speech's own emotion keeps G's own size; `none` has intensity 0
    gains = prototypes.category_gains() if prototypes is not None else None
    for name, weight in request.weights.items():
        if name == INFERRED:
            continue
        index = prototypes.categories.index(name)
        row = prototypes.prototypes[index]
        if not np.all(np.isfinite(row)):
            raise EmotionRequestError(
                f"emotion '{name}' has no prototype: too few training takes carry it "
                f"(usable: {', '.join(prototypes.available())})"
            )
        target += weight * row
        gain += weight * float(gains[index])
    return {
        "emotion_target": target.astype(np.float32),
        "emotion_inferred_weight": np.float32(inferred),
        "expression_scale": np.float32(request.intensity * gain),
    }
