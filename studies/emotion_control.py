"""Does a requested emotion give that emotion's face? Measured against SynthBIWI's own truth.

    python -m studies.emotion_control --workdir runs/synthetic [--workdir ...] [--clips 6]

For each run and each of the run's 12 categories, the neutral takes of test-a (held-out
sentences, the speakers' own style) are animated with `--emotion CATEGORY=1` (`emotion_control`),
the same noise for every request. The produced expression offset is f^e - f^n averaged over
frames and clips [V*3]; it is correlated, coordinate by coordinate, with the corpus generator's own
offset for every category (`data.synthetic.category_expression_offsets`: its blendshape weights
per emotion times the expression basis). The confusion table's row c holds those correlations; the
requested category should be the best match. A second table does the same after subtracting G's
offset under the neutral prototype (what G draws for a neutral take's embedding, at intensity 1):
the part that every request shares, G's own corrections of f^n's lips, which is no emotion's. Beside
them:

* the classifier-read error: the run's own classifier applied to the steered embedding (the
  animation's `emotion`), squared L2 against the request, for one-category requests and for
  random mixtures (Dirichlet(0.3), as SynthBIWI's labels);
* size: the produced offset's norm over the category's true one, averaged over categories (a pure
  take's own face is a little smaller on average: it eases in over 0.3 s and breathes with the
  speech between 0.8 and 1.1 of the true one);
* where the face changes: per vertex, |face(request) - face(inferred)| against the true
  displacement map |offset_c| (the paper's Fig. 5), correlated across vertices;
* intensity: `--emotion-intensity 0` must give the neutral generator's face (max deviation, mm).

With several runs (seeds) it prints each and then the mean and spread. `--figure PATH` draws the
first run's produced and true displacement maps per category.
"""

from __future__ import annotations

import argparse
import sys

import jax
import numpy as np

from sdetalk_jax import audio, metrics
from sdetalk_jax.data import synthetic
from sdetalk_jax.data.corpus import open_corpus
from sdetalk_jax.data.pipeline import ClipDataset
from sdetalk_jax.emotion_control import EmotionRequest, gather_prototypes, parse_emotion
from sdetalk_jax.inference import TrainedModel


def neutral_takes(model: TrainedModel, count: int):
    """(clip name, subject, waveform) of up to `count` neutral takes of test-a sentences (the
    emotional take's audio where the corpus has no neutral one), spread over the speakers."""
    corpus = open_corpus(model.config)
    names = {clip.name for clip in corpus.clips}
    chosen = []
    for clip in sorted(corpus.split("test-a"), key=lambda c: (c.sentence, c.subject)):
        neutral_name = clip.name.replace("_e", "_") if clip.emotional else clip.name
        name = neutral_name if neutral_name in names else clip.name
        if name in {c[0] for c in chosen}:
            continue
        path = corpus.clip(name).audio_path
        chosen.append((name, clip.subject, audio.load_audio(path)))
        if len(chosen) == count:
            break
    return chosen


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))


def animate_all(model, takes, request: EmotionRequest, key):
    """Per take: (expression offset mean over frames [V*3], posed faces [N, V, 3], emotion [C])."""
    results = []
    for name, subject, waveform in takes:
        result = model.animate_waveform(waveform, subject=subject, key=key, emotion=request)
        offset = (result["expression"] - result["neutral"]).mean(axis=0).reshape(-1)
        results.append((offset, result, name))
    return results


def refit_prototypes(model: TrainedModel, steps: int) -> None:
    """Prototypes fitted afresh with `steps` refinement steps (0: least squares only), kept in
    memory for this measurement only: the run's saved ones are left as they are."""
    corpus = open_corpus(model.config)
    dataset = ClipDataset.from_corpus(corpus, "train", model.assets.subjects, model.encoder)
    model._prototypes = gather_prototypes(
        model.networks.generator, model.params, dataset, model.assets.emotion_categories,
        model.step, refine_steps=steps,
    )  # fmt: skip


def measure_run(workdir: str, clips: int, seed: int, refine_steps: int | None = None) -> dict:
    model = TrainedModel.load(workdir)
    if refine_steps is not None:
        refit_prototypes(model, refine_steps)
    categories = tuple(model.assets.emotion_categories)
    if categories != synthetic.EMOTIONS:
        raise SystemExit(f"{workdir}: not a SynthBIWI run (categories {categories})")
    num_vertices = model.assets.templates[model.assets.subjects[0]].shape[0]
    truth = synthetic.category_expression_offsets(num_vertices)
    takes = neutral_takes(model, clips)
    key = jax.random.key(seed)
    inferred = animate_all(model, takes, parse_emotion("inferred", categories), key)
    # What G draws for a neutral take's embedding (the neutral prototype, intensity 1): the part of
    # its offset that every request shares (G's own lip corrections over G_n), not an emotion.
    neutral = np.mean(
        [item[0] for item in animate_all(model, takes, EmotionRequest({}, 1.0), key)], 0
    )
    confusion = np.zeros((len(categories), len(categories)))
    over_neutral = np.zeros_like(confusion)
    one_hot_errors, where, sizes = [], [], []
    produced_maps = []
    for c, name in enumerate(categories):
        steered = animate_all(model, takes, parse_emotion(f"{name}=1", categories), key)
        offset = np.mean([item[0] for item in steered], axis=0)
        produced_maps.append(np.linalg.norm(offset.reshape(-1, 3), axis=1))
        sizes.append(np.linalg.norm(offset) / np.linalg.norm(truth[c]))
        confusion[c] = [correlation(offset, truth[k]) for k in range(len(categories))]
        over_neutral[c] = [correlation(offset - neutral, truth[k]) for k in range(len(categories))]
        target = np.eye(len(categories))[c]
        one_hot_errors += [metrics.emotion_error(r["emotion"][0], target) for _, r, _ in steered]
        change = np.mean(
            [
                np.linalg.norm(s[1]["expression"] - i[1]["expression"], axis=-1).mean(axis=0)
                for s, i in zip(steered, inferred, strict=True)
            ],
            axis=0,
        )
        where.append(correlation(change, np.linalg.norm(truth[c].reshape(-1, 3), axis=1)))
    rng = np.random.default_rng(seed)
    mixture_errors = []
    for _ in range(len(categories)):
        weights = rng.dirichlet(np.full(len(categories), 0.3))
        spec = ",".join(f"{n}={w:.6f}" for n, w in zip(categories, weights, strict=True))
        for _, result, _ in animate_all(model, takes[:2], parse_emotion(spec, categories), key):
            mixture_errors.append(metrics.emotion_error(result["emotion"][0], weights))
    flat = animate_all(model, takes[:1], parse_emotion("anger", categories, 0.0), key)[0][1]
    return {
        "categories": categories,
        "confusion": confusion,
        "hits": int(np.sum(np.argmax(confusion, axis=1) == np.arange(len(categories)))),
        "over_neutral": over_neutral,
        "hits_over_neutral": int(
            np.sum(np.argmax(over_neutral, axis=1) == np.arange(len(categories)))
        ),
        "one_hot_error": float(np.mean(one_hot_errors)),
        "mixture_error": float(np.mean(mixture_errors)),
        "where_r": float(np.mean(where)),
        "size": float(np.mean(sizes)),
        "gains": model.emotion_prototypes().category_gains(),
        "intensity0_mm": float(np.abs(flat["expression"] - flat["neutral"]).max() * 1000.0),
        "produced_maps": np.array(produced_maps),
        "true_maps": np.linalg.norm(truth.reshape(len(categories), -1, 3), axis=2),
        "model": model,
    }


def print_confusion(result: dict, key: str = "confusion") -> None:
    categories = result["categories"]
    short = [name[:5] for name in categories]
    print("requested \\ true  " + " ".join(f"{s:>6}" for s in short) + "   best")
    for c, name in enumerate(categories):
        row = result[key][c]
        cells = " ".join(f"{v:6.2f}" for v in row)
        best = categories[int(np.argmax(row))]
        print(f"{name:>17} {cells}   {best}{'' if best == name else '  (miss)'}")


def draw_figure(path: str, result: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sdetalk_jax import render

    model, categories = result["model"], result["categories"]
    assets = model.assets
    template = assets.templates[assets.subjects[0]]
    renderer = render.MeshRenderer(
        assets.faces,
        render.vertex_colors(len(template), assets.lip_vertices, assets.vertex_colors),
        size=160,
        reference=template,
    )
    figure, axes = plt.subplots(4, 6, figsize=(12, 8.6))
    try:
        for c, name in enumerate(categories):
            for row, (maps, label) in enumerate(
                ((result["produced_maps"], "asked"), (result["true_maps"], "true"))
            ):
                values = maps[c] / max(maps[c].max(), 1e-12)
                renderer.set_colors(plt.cm.magma(values)[:, :3])
                axis = axes[2 * (c // 6) + row, c % 6]
                axis.imshow(renderer.render(template))
                axis.set_axis_off()
                axis.set_title(f"{name} ({label})", fontsize=8)
    finally:
        renderer.release()
    figure.suptitle("where each requested emotion moves the face: produced vs SynthBIWI's truth")
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", action="append", required=True, help="run folder(s)")
    parser.add_argument("--clips", type=int, default=6, help="test-a takes per request")
    parser.add_argument("--seed", type=int, default=0, help="noise key of every animation")
    parser.add_argument("--figure", help="PNG of the first run's displacement maps")
    parser.add_argument(
        "--refine-steps", type=int,
        help="fit the prototypes afresh with this many refinement steps (0: least squares only), "
        "in memory; default: the run's saved prototypes",
    )  # fmt: skip
    args = parser.parse_args(argv)
    results = []
    for workdir in args.workdir:
        result = measure_run(workdir, args.clips, args.seed, args.refine_steps)
        print(f"\n## {workdir} (step {result['model'].step})\n")
        print("offset f^e - f^n against the true offsets (r):")
        print_confusion(result)
        print("\nthe same offset minus G's for a neutral take's embedding (r):")
        print_confusion(result, "over_neutral")
        gains = ", ".join(
            f"{name} {gain:.2f}"
            for name, gain in zip(result["categories"], result["gains"], strict=True)
        )
        print(f"\ngains on G's expression offset: {gains}")
        results.append(result)
    rows = (
        ("requested category is the best match (of 12)", "hits", "{:.1f}"),
        ("... with G's face for a neutral take subtracted", "hits_over_neutral", "{:.1f}"),
        ("classifier-read error, one-category requests", "one_hot_error", "{:.4f}"),
        ("classifier-read error, random mixtures", "mixture_error", "{:.4f}"),
        ("where the face changes vs Fig. 5's map (r)", "where_r", "{:.3f}"),
        ("size of the face asked for / the category's true face", "size", "{:.2f}"),
        ("intensity 0: largest |f^e - f^n| (mm)", "intensity0_mm", "{:.2g}"),
    )
    print(f"\n| measure ({len(results)} run(s)) | mean | spread (std) | per run |")
    print("|---|---|---|---|")
    for label, key, form in rows:
        values = np.array([r[key] for r in results], float)
        per_run = ", ".join(form.format(v) for v in values)
        print(f"| {label} | {form.format(values.mean())} | {values.std():.3g} | {per_run} |")
    if args.figure:
        draw_figure(args.figure, results[0])
        print(f"\nfigure: {args.figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
