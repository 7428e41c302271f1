"""Evaluate a trained run: `python -m sdetalk_jax.evaluate --workdir runs/x --split test-a`.

For every clip of the split it runs the model at the centre of its noise (z = 0) for the errors and
with K noise keys for the head-motion diversity, and computes the same metrics for two baselines on
the same clips: the template alone and the neutral generator G_n alone (both with a still head).
Writes `WORKDIR/eval/SPLIT.json` and `SPLIT.md`, prints the table, and with `--plots` draws the
paper's Fig. 5 (neutral face, emotional face, displacement) and Fig. 6 (speech envelope against head
speed) into `WORKDIR/eval/`.

Speakers unseen in training (test-b) have no identity of their own: they are animated in the style
of each training subject in turn and their metrics averaged over those styles (`--style all`, as
FaceFormer reports test-B), or in the style of one subject (`--style F2`).
"""

from __future__ import annotations

import dataclasses
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from sdetalk_jax import audio, cli, metrics
from sdetalk_jax.checkpoint import RunError, load_run_notes
from sdetalk_jax.data import batching, biwi
from sdetalk_jax.data.corpus import open_corpus
from sdetalk_jax.data.pipeline import ClipDataset, mean_emotion_mixture, model_batch
from sdetalk_jax.fileio import write_bytes, write_json
from sdetalk_jax.inference import ENCODER_PRECISIONS, TrainedModel
from sdetalk_jax.models.wav2vec2.convert import CheckpointError

METHODS = ("SDETalk", "neutral generator alone", "template alone")

# name, unit, how clips are combined ("frames": weighted by frame count, "clips": plain mean)
METRICS = (
    ("mean_vertex_error", "mm", "frames"),
    ("lve_squared", "mm^2", "frames"),
    ("lve", "mm", "frames"),
    ("fdd", "mm", "clips"),
    ("head_rotation_error", "deg", "frames"),
    ("head_translation_error", "mm", "frames"),
    ("head_diversity", "deg", "clips"),
    ("expression_diversity", "mm", "clips"),
    ("speech_head_consistency", "r", "clips"),
    ("emotion_error", "L2^2", "clips"),
    # Head motion judged as the paper's Fig. 6 does, by size, speed and style, for the mean
    # prediction (z = 0) and for a noise sample: each sample's phase is its own, so per-frame
    # error favours a still head (docs/animate.md).
    ("head_rotation_error_sampled", "deg", "frames"),
    ("speech_head_consistency_sampled", "r", "clips"),
    ("head_speed_ratio", "x", "clips"),
    ("head_speed_ratio_sampled", "x", "clips"),
    ("head_angle_ratio", "x", "clips"),
    ("head_angle_ratio_sampled", "x", "clips"),
    ("nod_share", "share", "clips"),
    ("nod_share_sampled", "share", "clips"),
)
# Split-level measures that compare clips with one another rather than averaging them.
SPLIT_METRICS = (
    ("nod_share_correlation", "r", "nod_share"),
    ("nod_share_correlation_sampled", "r", "nod_share_sampled"),
)

DESCRIPTIONS = {
    "mean_vertex_error": "mean L2 distance over all vertices and frames (Table 1 of the paper)",
    "lve_squared": "lip vertex error, per frame the max squared L2 over lip vertices (public BIWI convention)",
    "lve": "lip vertex error, per frame the max plain L2 over lip vertices",
    "fdd": "upper-face dynamics deviation (std over time of displacement, truth minus prediction)",
    "head_rotation_error": "geodesic angle between predicted and true head rotation",
    "head_translation_error": "L2 distance between predicted and true head translation",
    "head_diversity": "mean pairwise angle between the head rotations of K noise samples",
    "expression_diversity": "mean pairwise vertex distance between the unposed faces of K noise samples",
    "speech_head_consistency": "correlation of the audio's Hilbert envelope with head angular speed (best lag 0-0.4 s)",
    "emotion_error": "squared L2 between predicted and labelled emotion mixture (baselines: the training mean)",
    "head_rotation_error_sampled": "head rotation error of the first noise sample (z = 0 above)",
    "speech_head_consistency_sampled": "the same speech/head correlation for the first noise sample",
    "head_speed_ratio": "mean head angular speed, generated over true (1: as much motion as the speaker)",
    "head_speed_ratio_sampled": "the same for the first noise sample",
    "head_angle_ratio": "RMS head angle from the rest pose, generated over true (frame-to-frame jitter cannot pass for it)",
    "head_angle_ratio_sampled": "the same for the first noise sample",
    "nod_share": "share of nodding (pitch) in nodding plus shaking (yaw) of the head's motion",
    "nod_share_sampled": "the same for the first noise sample",
    "nod_share_correlation": "correlation across clips of the nod share with the speaker's own (split level)",
    "nod_share_correlation_sampled": "the same for the first noise sample (split level)",
}


@dataclasses.dataclass
class ClipResult:
    name: str
    frames: int
    values: dict[str, dict[str, float]]  # method -> metric -> value


def _padded_features(example: dict, length: int, template) -> dict:
    """The model's input features of one clip [1, length, ...], padded to its bucket's length."""
    example = {**example, "frame_mask": np.ones(example["num_frames"], bool)}
    features = {
        key: batching.pad_along_time(example[key], length)[None]
        for key in ("context", "mel", "frame_mask")
    }
    return {**features, "template": np.asarray(template)[None]}


def clip_metrics(
    prediction: dict, example: dict, corpus_regions: dict, fps: float, sample_rate: int
) -> dict[str, float]:
    """All metrics of one method on one clip. prediction: expression [N, V*3], rotation [N, 3, 3],
    translation [N, 3], emotion [C], rotation_samples list of [N, 3, 3] and expression_samples
    list of [N, V*3] (may be empty)."""
    truth = example["vertices"]
    values = {
        "mean_vertex_error": metrics.mean_vertex_error_mm(prediction["expression"], truth),
        "lve_squared": metrics.lip_vertex_error(
            prediction["expression"], truth, corpus_regions["lips"], squared=True
        ),
        "lve": metrics.lip_vertex_error(
            prediction["expression"], truth, corpus_regions["lips"], squared=False
        ),
        "fdd": metrics.upper_face_dynamics_deviation_mm(
            prediction["expression"], truth, example["template"], corpus_regions["upper_face"]
        ),
        "head_rotation_error": metrics.head_rotation_error_deg(
            prediction["rotation"], example["rotation"]
        ),
        "head_translation_error": metrics.head_translation_error_mm(
            prediction["translation"], example["translation"]
        ),
        "head_diversity": (
            metrics.head_motion_diversity_deg(prediction["rotation_samples"])
            if len(prediction["rotation_samples"]) >= 2
            else 0.0
        ),
        "expression_diversity": (
            metrics.expression_diversity_mm(prediction["expression_samples"])
            if len(prediction["expression_samples"]) >= 2
            else 0.0
        ),
        "speech_head_consistency": metrics.speech_head_consistency(
            example["audio"], sample_rate, prediction["rotation"], fps
        ),
        "emotion_error": (
            metrics.emotion_error(prediction["emotion"], example["emotion"])
            if example["has_emotion"]
            else float("nan")
        ),
    }
    values.update(head_style_metrics(prediction, example, fps))
    samples = prediction["rotation_samples"]
    values["speech_head_consistency_sampled"] = metrics.speech_head_consistency(
        example["audio"], sample_rate, samples[0] if len(samples) else prediction["rotation"], fps
    )
    if not example["has_head_pose"]:
        for name in ("head_rotation_error", "head_translation_error"):
            values[name] = float("nan")
    return values


def head_style_metrics(prediction: dict, example: dict, fps: float) -> dict[str, float]:
    """Size, speed and nod-vs-shake style of the head's motion against the speaker's, for the mean
    prediction and for the first noise sample (a method without samples: its one prediction)."""
    samples = prediction["rotation_samples"]
    sampled = samples[0] if len(samples) else prediction["rotation"]
    truth = example["rotation"]
    values = {}
    if not example["has_head_pose"]:
        names = [name for name, _, _ in METRICS if name.startswith(("head_", "nod_share"))]
        return {name: float("nan") for name in names if name != "head_diversity"}
    true_speed = metrics.mean_head_speed_deg(truth, fps)
    true_angle = metrics.rms_head_angle_deg(truth)
    for suffix, rotation in (("", prediction["rotation"]), ("_sampled", sampled)):
        values[f"head_speed_ratio{suffix}"] = (
            metrics.mean_head_speed_deg(rotation, fps) / true_speed if true_speed > 0 else np.nan
        )
        values[f"head_angle_ratio{suffix}"] = (
            metrics.rms_head_angle_deg(rotation) / true_angle if true_angle > 0 else np.nan
        )
        values[f"nod_share{suffix}"] = metrics.nod_share(rotation)
    values["head_rotation_error_sampled"] = metrics.head_rotation_error_deg(sampled, truth)
    return values


def split_metrics(results: list[ClipResult], table: dict) -> None:
    """Adds SPLIT_METRICS to each method's row of `table`: how its per-clip values follow the
    speaker's across clips (NaN with fewer than three clips where both are defined)."""
    truth = np.array([r.values["ground truth"]["nod_share"] for r in results], np.float64)
    for method in METHODS:
        for name, _, per_clip in SPLIT_METRICS:
            mine = np.array([r.values[method][per_clip] for r in results], np.float64)
            keep = np.isfinite(mine) & np.isfinite(truth)
            table[method][name] = (
                metrics.lagged_correlation(mine[keep], truth[keep], 0)
                if keep.sum() >= 3
                else float("nan")
            )


def combine(results: list[ClipResult]) -> dict[str, dict[str, float]]:
    """Split-level values per method: frame-weighted or clip means as METRICS says; clips without
    the annotation a metric needs (NaN) are left out of that metric."""
    table = {}
    for method in METHODS:
        row = {}
        for name, _, weighting in METRICS:
            values = np.array([r.values[method][name] for r in results], np.float64)
            weights = np.array(
                [r.frames if weighting == "frames" else 1.0 for r in results], np.float64
            )
            keep = np.isfinite(values)
            row[name] = (
                float(np.sum(values[keep] * weights[keep]) / np.sum(weights[keep]))
                if keep.any()
                else float("nan")
            )
        table[method] = row
    return table


# A corpus in CodeTalker's unitless coordinates (docs/data.md) has no millimetres: its lengths are
# reported in its own unit (the metrics compute in mm, as for metres, then are rescaled).
_UNITLESS = {"mm": ("unitless", 1e-3), "mm^2": ("unitless^2", 1e-6)}


def metric_units(corpus_units: str) -> dict[str, str]:
    """The unit of each metric on a corpus whose lengths are in `corpus_units` ("m", "unitless")."""
    return {
        name: _UNITLESS.get(unit, (unit, 1.0))[0] if corpus_units == "unitless" else unit
        for name, unit, _ in METRICS
    }


def in_corpus_units(values: dict[str, float], corpus_units: str) -> dict[str, float]:
    """One method's metrics of a clip, in the corpus's own length unit."""
    if corpus_units != "unitless":
        return values
    units = {name: unit for name, unit, _ in METRICS}
    return {
        name: value * _UNITLESS.get(units.get(name), (None, 1.0))[1]
        for name, value in values.items()
    }


def markdown_table(
    table: dict, split: str, clips: int, style_note: str, truth_consistency, units=None, notes=()
) -> str:
    """The report as markdown; `notes` (what the training data left out) come first, so that a
    table of figures from a run that never saw head pose or emotion labels says so."""
    units = {**(units or metric_units("m")), **{name: unit for name, unit, _ in SPLIT_METRICS}}
    names = [name for name, _, _ in METRICS] + [name for name, _, _ in SPLIT_METRICS]
    header = "| method | " + " | ".join(f"{name} ({units[name]})" for name in names) + " |"
    lines = [f"### {split}: {clips} clips", ""]
    lines += [f"**{note}**\n" for note in notes]
    lines += [
        header,
        "|---|" + "---:|" * len(names),
    ]
    for method, row in table.items():
        cells = [f"{row[name]:.4g}" if np.isfinite(row[name]) else "n/a" for name in names]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Ground truth speech/head consistency on these clips: {truth_consistency:.3f}. {style_note}",
        "",
    ]
    lines += [f"* {name}: {DESCRIPTIONS[name]}" for name in names]
    return "\n".join(lines) + "\n"


def _regions(corpus: biwi.Corpus) -> dict[str, np.ndarray]:
    regions = {
        "lips": corpus.lip_vertices if corpus.lip_vertices is not None else np.arange(0),
        "upper_face": (
            corpus.upper_face_vertices if corpus.upper_face_vertices is not None else np.arange(0)
        ),
    }
    if regions["lips"].size == 0 or regions["upper_face"].size == 0:
        raise RunError(
            f"{corpus.root}: regions/ (lip and upper-face vertices) are needed for LVE and FDD"
        )
    return regions


def sample_model(model: TrainedModel, generate, batch, n: int, clip_key, samples: int):
    """(outputs at z = 0, [(head rotations [n, 3, 3], expression [n, V*3])] of `samples` noise
    draws) for one clip."""
    length = batch["frame_mask"].shape[1]
    hidden = model.networks.config.hidden
    mean = jax.device_get(generate(model.params, batch, jnp.zeros((1, length, hidden))))
    draws = []
    for k in range(samples):
        noise = jax.random.normal(jax.random.fold_in(clip_key, k), (1, length, hidden))
        outputs = generate(model.params, batch, noise)
        draws.append((np.asarray(outputs.rotation[0, :n]), np.asarray(outputs.expression[0, :n])))
    return mean, draws


def method_predictions(mean, draws, example, baseline_emotion) -> dict:
    """What each of METHODS predicts for one clip: SDETalk at z = 0, and the two baselines with a
    still head and the baseline emotion mixture."""
    n = int(example["num_frames"])
    still = np.broadcast_to(np.eye(3, dtype=np.float32), (n, 3, 3))
    zero = np.zeros((n, 3), np.float32)
    if baseline_emotion is None:
        baseline_emotion = mean.mixture[0]
    return {
        "SDETalk": {
            "expression": mean.expression[0, :n], "rotation": mean.rotation[0, :n],
            "translation": mean.translation[0, :n], "emotion": mean.mixture[0],
            "rotation_samples": [rotation for rotation, _ in draws],
            "expression_samples": [expression for _, expression in draws],
        },
        "neutral generator alone": {
            "expression": mean.neutral[0, :n], "rotation": still, "translation": zero,
            "emotion": baseline_emotion, "rotation_samples": [], "expression_samples": [],
        },
        "template alone": {
            "expression": np.broadcast_to(example["template"], (n, example["template"].size)),
            "rotation": still, "translation": zero, "emotion": baseline_emotion,
            "rotation_samples": [], "expression_samples": [],
        },
    }  # fmt: skip


@dataclasses.dataclass
class _Evaluation:
    """What every clip of one evaluation shares."""

    model: TrainedModel
    dataset: ClipDataset
    generate: object
    buckets: tuple[int, ...]
    regions: dict
    fps: float
    mean_mixture: np.ndarray | None
    key: jax.Array
    samples: int
    style: str

    @classmethod
    def prepare(
        cls,
        model: TrainedModel,
        corpus: biwi.Corpus,
        split: str,
        *,
        samples: int,
        seed: int,
        style: str,
    ) -> _Evaluation:
        """The evaluation of `split` of `corpus`; refuses an unknown split or style subject."""
        if split not in biwi.SPLITS:
            raise RunError(f"unknown split '{split}' (known: {', '.join(biwi.SPLITS)})")
        dataset = ClipDataset.from_corpus(
            corpus, split, model.assets.subjects, context_encoder=model.encoder
        )
        if style != "all" and style not in model.assets.subjects:
            model.subject_index(style)  # raises with the list of subjects
        return cls(
            model=model, dataset=dataset, generate=model.generate_fn(),
            buckets=batching.bucket_lengths(
                max(dataset.lengths), min_length=model.config.data.bucket_min
            ),
            regions=_regions(corpus), fps=corpus.fps,
            mean_mixture=mean_emotion_mixture(corpus.split("train")), key=jax.random.key(seed),
            samples=samples, style=style,
        )  # fmt: skip

    def run(
        self, split: str, corpus_units: str, plots: bool, progress: bool
    ) -> tuple[list[ClipResult], list[tuple]]:
        """Every clip's results, in the corpus's length unit, and with `plots` the figures'
        inputs."""
        from tqdm import tqdm

        results, figure_inputs = [], []
        clips = range(len(self.dataset.clips))
        for index in tqdm(clips, desc=f"evaluate {split}", disable=not progress):
            result, figure_input = self.clip(index)
            result.values.update(
                {method: in_corpus_units(result.values[method], corpus_units) for method in METHODS}
            )
            results.append(result)
            if plots:
                figure_inputs.append(figure_input)
        return results, figure_inputs

    def styles_for(self, clip: biwi.Clip) -> list[str]:
        """The identities a clip is animated with: its own, or for an unseen speaker every
        training subject ('all') or the one chosen."""
        subjects = list(self.model.assets.subjects)
        if clip.subject in subjects:
            return [clip.subject]
        return subjects if self.style == "all" else [self.style]

    def clip(self, index: int) -> tuple[ClipResult, tuple | None]:
        """The clip's metrics for every method, averaged over its styles, and the inputs of the
        figures (first style)."""
        model, example = self.model, self.dataset.example(index)
        clip = self.dataset.clips[index]
        n = int(example["num_frames"])
        features = _padded_features(
            example, batching.bucket_for(n, self.buckets), example["template"]
        )
        per_style, figure_input = [], None
        for style_subject in self.styles_for(clip):
            subject = np.array([model.assets.subjects.index(style_subject)])
            batch = model_batch(features, subject, len(model.assets.subjects), targets=False)
            clip_key = jax.random.fold_in(self.key, index)
            mean, draws = sample_model(model, self.generate, batch, n, clip_key, self.samples)
            predictions = method_predictions(mean, draws, example, self.mean_mixture)
            per_style.append(
                {
                    method: clip_metrics(p, example, self.regions, self.fps, audio.SAMPLE_RATE)
                    for method, p in predictions.items()
                }
            )
            if figure_input is None:
                figure_input = (clip, example, mean, [rotation for rotation, _ in draws])
        values = {
            method: {
                name: float(np.mean([s[method][name] for s in per_style])) for name, _, _ in METRICS
            }
            for method in METHODS
        }
        values["ground truth"] = {
            "speech_head_consistency": metrics.speech_head_consistency(
                example["audio"], audio.SAMPLE_RATE, example["rotation"], self.fps
            ),
            "nod_share": (
                metrics.nod_share(example["rotation"]) if example["has_head_pose"] else np.nan
            ),
        }
        return ClipResult(clip.name, n, values), figure_input


def _style_note(dataset: ClipDataset, subjects, style: str) -> str:
    unseen = sum(c.subject not in subjects for c in dataset.clips)
    if not unseen:
        return "All speakers were seen in training (each clip uses its own identity)."
    return (
        f"{unseen} clips of speakers unseen in training, animated in the style of "
        + ("each training subject in turn, metrics averaged over the styles." if style == "all"
           else f"training subject {style}.")
    )  # fmt: skip


def output_paths(out_dir: str, split: str, plots: bool) -> list[str]:
    names = [f"{split}.json", f"{split}.md"]
    if plots:
        names += [f"{split}_expression.png", f"{split}_head_motion.png"]
    return [os.path.join(out_dir, name) for name in names]


def _refuse_to_overwrite(out_dir: str, split: str, plots: bool, force: bool) -> None:
    existing = [p for p in output_paths(out_dir, split, plots) if os.path.exists(p)]
    if existing and not force:
        raise RunError(
            f"{existing[0]} already exists ({len(existing)} outputs would be replaced); "
            "choose another --out or pass --force"
        )


def evaluate(
    workdir: str,
    split: str,
    *,
    samples: int = 4,
    seed: int = 0,
    style: str = "all",
    checkpoint: str = "best",
    plots: bool = False,
    progress: bool = True,
    out_dir: str | None = None,
    force: bool = False,
    encoder_precision: str = "float32",
) -> dict:
    """Evaluates the run in `workdir` on `split`: writes OUT_DIR/SPLIT.json (the returned report)
    and SPLIT.md, prints the table and, with `plots`, draws the figures into OUT_DIR."""
    out_dir = out_dir or os.path.join(workdir, "eval")
    _refuse_to_overwrite(out_dir, split, plots, force)
    model = TrainedModel.load(workdir, checkpoint=checkpoint, encoder_precision=encoder_precision)
    corpus = open_corpus(model.config)
    evaluation = _Evaluation.prepare(model, corpus, split, samples=samples, seed=seed, style=style)
    corpus_units = biwi.read_units(corpus.root)
    results, figure_inputs = evaluation.run(split, corpus_units, plots, progress)
    table = combine(results)
    split_metrics(results, table)
    truth_consistency = float(
        np.mean([r.values["ground truth"]["speech_head_consistency"] for r in results])
    )
    report = {
        "split": split,
        "clips": len(results),
        "checkpoint_step": model.step,
        "samples": samples,
        "seed": seed,
        "style": style,
        "encoder_precision": encoder_precision,
        "units": {**metric_units(corpus_units), **{n: u for n, u, _ in SPLIT_METRICS}},
        "methods": table,
        "ground_truth_speech_head_consistency": truth_consistency,
        "per_clip": [dataclasses.asdict(r) for r in results],
        "training_notes": load_run_notes(workdir),
    }
    style_note = _style_note(evaluation.dataset, model.assets.subjects, style)
    markdown = markdown_table(
        table, split, len(results), style_note, truth_consistency, metric_units(corpus_units),
        report["training_notes"],
    )  # fmt: skip
    _write_report(out_dir, split, report, markdown)
    if plots and figure_inputs:
        _write_figures(out_dir, split, figure_inputs, model.assets, corpus.fps)
    return report


def _write_report(out_dir: str, split: str, report: dict, markdown: str) -> None:
    """SPLIT.json and SPLIT.md into `out_dir`, and the table printed."""
    write_json(os.path.join(out_dir, f"{split}.json"), report)
    write_bytes(os.path.join(out_dir, f"{split}.md"), markdown.encode())
    print(markdown)


def _write_figures(out_dir: str, split: str, figure_inputs: list, assets, fps: float) -> None:
    """The paper's Fig. 5 and Fig. 6 of the split into `out_dir`, each path printed."""
    from sdetalk_jax import figures

    for path in figures.evaluation_figures(
        out_dir, split, figure_inputs, assets, fps, audio.SAMPLE_RATE
    ):
        print(f"wrote {path}")


def main(argv=None) -> int:
    parser = cli.parser("python -m sdetalk_jax.evaluate", __doc__)
    parser.add_argument("--workdir", required=True, help="training run folder")
    parser.add_argument("--split", default="test-a", choices=biwi.SPLITS)
    parser.add_argument(
        "--samples", type=int, default=4, help="noise samples K for the head-motion diversity"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise samples")
    parser.add_argument(
        "--style", default="all",
        help="unseen speakers: 'all' (average over training subjects' styles) or one training subject",
    )  # fmt: skip
    parser.add_argument("--checkpoint", default="best", choices=("best", "latest"))
    parser.add_argument(
        "--plots", action="store_true", help="also write the Fig. 5 and Fig. 6 PNGs"
    )
    parser.add_argument(
        "--encoder-precision", default="float32", choices=ENCODER_PRECISIONS,
        help="wav2vec 2.0's matmul operands (as animate's): how much bfloat16 changes the figures",
    )  # fmt: skip
    parser.add_argument("--out", default=None, help="output folder (default WORKDIR/eval)")
    parser.add_argument("--force", action="store_true", help="replace existing outputs")
    args = parser.parse_args(argv)
    if args.samples < 2:
        parser.error("--samples must be at least 2 (diversity compares samples)")
    try:
        evaluate(
            args.workdir, args.split, samples=args.samples, seed=args.seed, style=args.style,
            checkpoint=args.checkpoint, plots=args.plots, out_dir=args.out, force=args.force,
            encoder_precision=args.encoder_precision,
        )  # fmt: skip
    except (RunError, biwi.DataError, CheckpointError) as error:
        return cli.report(error)
    return 0


if __name__ == "__main__":
    sys.exit(main())
