"""Emotion control: the request's grammar, the prototypes' fit, and what the generator does with a
requested emotion (steered embedding, intensity), on perturbed parameters."""

from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sdetalk_jax import emotion_control
from sdetalk_jax.emotion_control import (
    EmotionPrototypes,
    EmotionRequestError,
    fit_prototypes,
    parse_emotion,
    request_inputs,
)
from sdetalk_jax.models.networks import Networks
from sdetalk_jax.models.sdetalk import masked_mean
from tests.model_fixtures import CONFIG, _perturbed, make_batch

CATEGORIES = ("anger", "sadness", "fear", "happiness", "surprise")


def test_a_mixture_is_normalised_and_a_bare_name_weighs_one():
    request = parse_emotion("happiness=0.7, surprise=0.7", CATEGORIES)
    assert request.weights == pytest.approx({"happiness": 0.5, "surprise": 0.5})
    assert parse_emotion("anger", CATEGORIES).weights == {"anger": 1.0}
    blend = parse_emotion("inferred=1,fear=3", CATEGORIES, intensity=0.5)
    assert blend.weights == pytest.approx({"inferred": 0.25, "fear": 0.75})
    assert blend.intensity == 0.5
    assert parse_emotion("inferred", CATEGORIES).is_default
    none = parse_emotion("none", CATEGORIES)
    assert none.weights == {} and none.intensity == 0.0 and none.describe() == "none"


@pytest.mark.parametrize(
    "spec, message",
    [
        ("joy=1", "unknown emotion 'joy': this run's categories are anger, sadness, fear"),
        ("anger=lots", "'anger=lots' is not a number"),
        ("anger=-1", "must be zero or more"),
        ("anger=0,fear=0", "gives no weight to any category"),
        ("anger=nan", "must be zero or more"),
        ("anger=inf", "must be zero or more"),
        ("", "gives no weight"),
    ],
)
def test_bad_requests_are_refused_with_the_reason(spec, message):
    with pytest.raises(EmotionRequestError, match=message):
        parse_emotion(spec, CATEGORIES)


@pytest.mark.parametrize("intensity", [-0.1, 3.5, float("nan")])
def test_an_intensity_outside_its_range_is_refused(intensity):
    with pytest.raises(EmotionRequestError, match="intensity must be between 0 and 3"):
        parse_emotion("anger", CATEGORIES, intensity)


def test_least_squares_recovers_pure_prototypes_from_mixed_labels():
    rng = np.random.default_rng(0)
    truth = rng.normal(size=(len(CATEGORIES), 6))
    labels = rng.dirichlet(np.full(len(CATEGORIES), 0.3), size=300)
    means = labels @ truth + 0.01 * rng.normal(size=(300, 6))
    emotional = np.ones(300, bool)
    emotional[:40] = False  # neutral takes: their labels are ignored, their mean is P_neutral
    means[:40] = 5.0
    fitted = fit_prototypes(means, labels, emotional, CATEGORIES, step=7)
    np.testing.assert_allclose(fitted.prototypes, truth, atol=0.05)
    np.testing.assert_allclose(fitted.neutral, 5.0, atol=1e-6)
    # the label-weighted mean alone is pulled towards the mixture's average: not a pure take
    weighted = (labels[40:].T @ means[40:]) / labels[40:].sum(0)[:, None]
    assert np.abs(weighted - truth).max() > 0.2
    assert fitted.step == 7


def test_a_category_no_take_carries_has_no_prototype_and_is_refused(tmp_path):
    rng = np.random.default_rng(1)
    labels = rng.dirichlet(np.ones(len(CATEGORIES)), size=50)
    labels[:, 2] = 0.0  # nobody was afraid
    means = rng.normal(size=(50, 4))
    fitted = fit_prototypes(means, labels, np.ones(50, bool), CATEGORIES, step=3)
    assert "fear" not in fitted.available() and "anger" in fitted.available()
    assert np.isnan(fitted.neutral).all()  # no neutral take
    with pytest.raises(EmotionRequestError, match="'fear' has no prototype"):
        request_inputs(parse_emotion("fear", CATEGORIES), 4, fitted)
    # saved and read back as the same numbers (no pickle)
    loaded = EmotionPrototypes.load(fitted.save(str(tmp_path)))
    assert loaded.categories == CATEGORIES and loaded.step == 3
    np.testing.assert_array_equal(loaded.prototypes, fitted.prototypes)
    # with no neutral prototype, 'none' keeps the speech's own embedding, with no expression
    inputs = request_inputs(parse_emotion("none", CATEGORIES), 4, fitted)
    assert inputs["emotion_inferred_weight"] == 1.0 and inputs["expression_scale"] == 0.0


def test_without_labelled_emotional_takes_no_category_has_a_prototype():
    means = np.random.default_rng(0).normal(size=(10, 4))
    labels = np.full((10, len(CATEGORIES)), np.nan)
    fitted = fit_prototypes(means, labels, np.ones(10, bool), CATEGORIES, step=1)
    assert fitted.available() == () and np.isnan(fitted.prototypes).all()
    with pytest.raises(EmotionRequestError, match="'anger' has no prototype"):
        request_inputs(parse_emotion("anger", CATEGORIES), 4, fitted)


def test_a_request_is_the_weighted_sum_of_prototypes():
    prototypes = EmotionPrototypes(
        CATEGORIES, np.eye(5, 3, dtype=np.float32), np.full(3, 9.0, np.float32), np.ones(5), 0
    )
    inputs = request_inputs(parse_emotion("anger=1,sadness=3", CATEGORIES, 2.0), 3, prototypes)
    np.testing.assert_allclose(inputs["emotion_target"], [0.25, 0.75, 0.0])
    assert inputs["emotion_inferred_weight"] == 0.0 and inputs["expression_scale"] == 2.0
    blend = request_inputs(parse_emotion("inferred=1,fear=1", CATEGORIES), 3, prototypes)
    np.testing.assert_allclose(blend["emotion_target"], [0.0, 0.0, 0.5])
    assert blend["emotion_inferred_weight"] == 0.5
    # the speech's own emotion at another intensity reads no prototypes; anything else does
    softer = request_inputs(parse_emotion("inferred", CATEGORIES, 0.5), 3)
    np.testing.assert_array_equal(softer["emotion_target"], 0.0)
    assert softer["emotion_inferred_weight"] == 1.0 and softer["expression_scale"] == 0.5
    with pytest.raises(ValueError, match="needs the run's prototypes"):
        request_inputs(parse_emotion("inferred=1,fear=1", CATEGORIES), 3)
    none = request_inputs(parse_emotion("none", CATEGORIES), 3, prototypes)
    np.testing.assert_allclose(none["emotion_target"], 9.0)
    assert none["emotion_inferred_weight"] == 0.0 and none["expression_scale"] == 0.0


def test_each_category_s_gain_sizes_the_expression_it_asks_for(tmp_path):
    gains = np.array([2.0, 4.0, 8.0, 1.0, 1.0], np.float32)
    prototypes = EmotionPrototypes(
        CATEGORIES, np.eye(5, 3, dtype=np.float32), np.zeros(3, np.float32), np.ones(5), 0, gains
    )
    scale = request_inputs(parse_emotion("anger=1,sadness=3", CATEGORIES, 2.0), 3, prototypes)
    assert scale["expression_scale"] == pytest.approx(2.0 * (0.25 * 2.0 + 0.75 * 4.0))
    blend = request_inputs(parse_emotion("inferred=1,fear=1", CATEGORIES), 3, prototypes)
    assert blend["expression_scale"] == pytest.approx(0.5 * 1.0 + 0.5 * 8.0)  # the speech's own: 1
    none = request_inputs(parse_emotion("none", CATEGORIES), 3, prototypes)
    assert none["expression_scale"] == 0.0
    loaded = EmotionPrototypes.load(prototypes.save(str(tmp_path)))
    np.testing.assert_array_equal(loaded.category_gains(), gains)
    # prototypes saved before gains existed read as gains of 1
    path = EmotionPrototypes.path(str(tmp_path), 0)
    with np.load(path) as archive:
        older = {key: archive[key] for key in archive.files if key != "gains"}
    np.savez(path, **older)
    np.testing.assert_array_equal(EmotionPrototypes.load(path).category_gains(), np.ones(5))


def test_the_match_loss_asks_each_face_to_be_its_own_category_s_rather_than_a_close_one_s():
    rng = np.random.default_rng(5)
    shared = rng.normal(size=300)
    targets = shared + 0.3 * rng.normal(size=(3, 300))  # faces that correlate at about 0.9
    match = emotion_control.category_match_loss
    own = float(match(jnp.asarray(targets * 0.1), jnp.asarray(targets), 0.05))  # size: no matter
    swapped = float(match(jnp.asarray(targets[[1, 0, 2]]), jnp.asarray(targets), 0.05))
    broad = float(match(jnp.asarray(np.tile(shared, (3, 1))), jnp.asarray(targets), 0.05))
    assert own < 0.5 < 0.9 < broad < swapped  # broad: about log 3, a coin with three sides
    # the shape term alone hardly tells the broad shared face from the own one; this one does
    shape = emotion_control.offset_correlation(jnp.asarray(np.tile(shared, (3, 1))), targets)
    assert float(jnp.min(shape)) > 0.9
    # the shape term is Pearson's r, blind to size and to a shift of every coordinate
    moved = 3.0 * targets[[2, 0, 1]] + 0.7
    expected = [np.corrcoef(m, t)[0, 1] for m, t in zip(moved, targets, strict=True)]
    np.testing.assert_allclose(
        emotion_control.offset_correlation(jnp.asarray(moved), jnp.asarray(targets)), expected,
        rtol=1e-5,
    )  # fmt: skip


def test_a_gain_is_the_least_squares_size_of_the_category_s_face_within_bounds():
    rng = np.random.default_rng(4)
    targets = rng.normal(size=(3, 200))
    produced = targets / np.array([[4.0], [1e3], [-1.0]])
    gains = emotion_control.prototype_gains(produced, targets)
    assert gains[0] == pytest.approx(4.0, rel=1e-6)
    # a face far too faint to be enlarged that much, or the wrong way round: the bounds
    assert gains[1] == emotion_control.MAX_GAIN and gains[2] == 1.0 / emotion_control.MAX_GAIN


@pytest.fixture(scope="module")
def generator():
    networks = Networks.build(CONFIG)
    params = _perturbed(networks.init_params(jax.random.key(0)), scale=0.2)["generator"]
    batch = make_batch([20, 14], 24)
    noise = jax.random.normal(jax.random.key(3), batch["mel"].shape[:2] + (CONFIG.hidden,))
    run = jax.jit(lambda b: networks.generator.apply({"params": params}, b, noise))
    return networks.generator, params, batch, run


def steering(batch, target, inferred_weight, scale=1.0):
    rows = batch["mel"].shape[0]
    return {
        **batch,
        "emotion_target": jnp.broadcast_to(jnp.asarray(target, jnp.float32), (rows, CONFIG.hidden)),
        "emotion_inferred_weight": jnp.full((rows,), inferred_weight, jnp.float32),
        "expression_scale": jnp.full((rows,), scale, jnp.float32),
    }


def test_the_steered_embedding_has_the_requested_clip_mean_and_the_speech_s_variation(generator):
    module, params, batch, run = generator
    plain = run(batch)
    mask = batch["frame_mask"]
    # the speech's own embedding, asked for explicitly, changes nothing
    same = run(steering(batch, masked_mean(plain.embedding, mask), 0.0))
    np.testing.assert_allclose(same.expression, plain.expression, atol=1e-5)
    np.testing.assert_allclose(same.mixture, plain.mixture, atol=1e-5)
    np.testing.assert_allclose(
        run(steering(batch, np.zeros(CONFIG.hidden), 1.0)).posed, plain.posed, atol=1e-5
    )
    target = np.linspace(-1.0, 1.0, CONFIG.hidden)
    steered = run(steering(batch, target, 0.0))
    np.testing.assert_allclose(
        masked_mean(steered.embedding, mask), np.broadcast_to(target, (2, CONFIG.hidden)),
        atol=1e-5,
    )  # fmt: skip
    variation = steered.embedding - masked_mean(steered.embedding, mask)[:, None]
    own = plain.embedding - masked_mean(plain.embedding, mask)[:, None]
    np.testing.assert_allclose(variation * mask[..., None], own * mask[..., None], atol=1e-5)
    # the classifier and G read it: another mixture and another face
    assert np.abs(steered.mixture - plain.mixture).max() > 1e-3
    assert np.abs(steered.expression - plain.expression).max() > 1e-5
    # half inferred, half target: the mean halfway between
    half = run(steering(batch, 0.5 * target, 0.5))
    expected = 0.5 * masked_mean(plain.embedding, mask) + 0.5 * target
    np.testing.assert_allclose(masked_mean(half.embedding, mask), expected, atol=1e-5)


def test_the_clip_embedding_method_is_what_the_classifier_pools(generator):
    module, params, batch, run = generator
    pooled = module.apply(
        {"params": params}, batch["mel"], batch["frame_mask"], method=type(module).clip_embedding
    )
    np.testing.assert_allclose(
        pooled, masked_mean(run(batch).embedding, batch["frame_mask"]), atol=1e-5
    )


def test_intensity_scales_the_expression_offset_from_the_neutral_face(generator):
    module, params, batch, run = generator
    plain = run(batch)
    mean = masked_mean(plain.embedding, batch["frame_mask"])
    offset = plain.expression - plain.neutral
    assert np.abs(offset).max() > 1e-4  # perturbed: G does move the face
    flat = run(steering(batch, mean, 0.0, scale=0.0))
    np.testing.assert_allclose(flat.expression, flat.neutral, atol=1e-7)
    np.testing.assert_allclose(flat.rotation, plain.rotation, atol=1e-5)  # the head moves on
    double = run(steering(batch, mean, 0.0, scale=2.0))
    np.testing.assert_allclose(double.expression - double.neutral, 2 * offset, atol=2e-5)


def test_the_mean_offset_is_the_frame_mean_of_what_g_draws(generator):
    """`Generator.mean_expression_offset` (the offset layer applied to its input's frame mean,
    what prototypes are fitted with) is the mean over each row's frames of f^e - f^n as G draws
    it with the same noise: steered, at an intensity, with padding, and zero for an empty row."""
    module, params, batch, run = generator
    noise = jax.random.normal(jax.random.key(3), batch["mel"].shape[:2] + (CONFIG.hidden,))
    target = np.linspace(-1.0, 1.0, CONFIG.hidden)
    for steered in (batch, steering(batch, target, 0.3, scale=1.7)):
        drawn = run(steered)
        expected = masked_mean(drawn.expression - drawn.neutral, batch["frame_mask"])
        assert np.abs(expected).max() > 1e-3  # perturbed: G does move the face
        mean = module.apply(
            {"params": params}, steered, noise, method=type(module).mean_expression_offset
        )
        np.testing.assert_allclose(mean, expected, rtol=1e-4, atol=1e-6)
    empty = {**batch, "frame_mask": np.zeros_like(batch["frame_mask"])}
    mean = module.apply(
        {"params": params}, empty, noise, method=type(module).mean_expression_offset
    )
    np.testing.assert_array_equal(mean, 0.0)


class Takes:
    """The dataset interface `refine_prototypes` reads (clips, example), over make_batch's rows."""

    def __init__(self, batch):
        self.batch = {k: np.asarray(v) for k, v in batch.items()}
        rows = len(self.batch["mel"])
        self.clips = [
            SimpleNamespace(emotional=True, emotion=self.batch["emotion"][r]) for r in range(rows)
        ]

    def example(self, row):
        example = {key: value[row] for key, value in self.batch.items()}
        example["num_frames"] = int(self.batch["frame_mask"][row].sum())
        return example


def test_category_offsets_are_the_pure_faces_behind_mixed_takes():
    rng = np.random.default_rng(2)
    faces = rng.normal(size=(len(CATEGORIES), 9))
    labels = rng.dirichlet(np.full(len(CATEGORIES), 0.3), size=200)
    offsets = labels @ faces + 0.01 * rng.normal(size=(200, 9))
    np.testing.assert_allclose(
        emotion_control.category_offsets(offsets, 3 * labels), faces, atol=0.05
    )  # labels are normalised first


def takes_with_category_faces(rows: int = 8, seed: int = 0):
    """Takes whose faces are their label mixtures of a random face per category over the
    neutral track (as SynthBIWI's), and those faces [C, V*3]."""
    rng = np.random.default_rng(seed)
    batch = {
        k: np.array(v) for k, v in make_batch([24, 20, 18, 24, 16, 22, 24, 19][:rows], 24).items()
    }
    faces = 0.002 * rng.normal(size=(CONFIG.num_emotions, CONFIG.num_vertices * 3))
    offsets = batch["emotion"] @ faces
    batch["neutral_vertices"] = (batch["vertices"] - offsets[:, None]).astype(np.float32)
    return Takes(batch), faces


def test_refinement_brings_g_s_face_under_each_prototype_closer_to_the_category_s(generator):
    module, params, _, run = generator
    takes, faces = takes_with_category_faces()
    rng = np.random.default_rng(0)
    start = rng.normal(size=(CONFIG.num_emotions, CONFIG.hidden)).astype(np.float32)
    crop = 24
    cropped = emotion_control.cropped_batch(takes, list(range(8)), crop, CONFIG.num_subjects)
    offsets = np.asarray(emotion_control.true_mean_offsets(module, params, cropped))
    targets = emotion_control.category_offsets(offsets, cropped["emotion"])
    # the takes' faces minus their neutral tracks give back each category's face
    assert np.min(np.asarray(emotion_control.offset_correlation(targets, faces))) > 0.9
    loss = jax.jit(
        lambda p: emotion_control.prototype_fit_loss(module, params, p, cropped, targets)
    )
    refined, gains = emotion_control.refine_prototypes(
        module, params, takes, start, steps=30, batch_size=8, crop=crop
    )
    assert float(loss(refined)) < 0.8 * float(loss(start))
    # every category gets its gain (`prototype_gains`, tested above), within the bounds
    bound = emotion_control.MAX_GAIN
    assert np.all((gains >= 1.0 / bound) & (gains <= bound)) and np.abs(gains - 1.0).max() > 0.1
    same, same_gains = emotion_control.refine_prototypes(module, params, takes, start, steps=0)
    np.testing.assert_array_equal(same, start)
    np.testing.assert_array_equal(same_gains, 1.0)


def test_refinement_draws_an_animation_s_noise_from_its_seed(generator):
    module, params, batch, run = generator
    start = np.random.default_rng(1).normal(size=(CONFIG.num_emotions, CONFIG.hidden))
    start = start.astype(np.float32)

    def refine(seed):
        return emotion_control.refine_prototypes(
            module, params, Takes(batch), start, steps=3, batch_size=2, seed=seed
        )[0]

    np.testing.assert_array_equal(refine(0), refine(0))
    assert np.abs(refine(0) - refine(1)).max() > 1e-6  # the noise is in the fit


def test_refinement_keeps_a_category_without_prototype_empty(generator):
    module, params, batch, run = generator
    start = np.ones((CONFIG.num_emotions, CONFIG.hidden), np.float32)
    start[1] = np.nan
    refined, gains = emotion_control.refine_prototypes(module, params, Takes(batch), start, steps=2)
    assert np.isnan(refined[1]).all() and np.isfinite(np.delete(refined, 1, 0)).all()
    assert np.abs(np.delete(refined, 1, 0) - 1.0).max() > 0  # the others did move
    assert gains[1] == 1.0 and np.all(np.isfinite(gains))
