"""SynthBIWI: a synthetic emotional audio-visual corpus in the BIWI layout.

    python -m sdetalk_jax.data.synthetic --out DIR --subjects 14 --sentences 40 --vertices 4000 --seed 0

Every relation a model should learn is really in the data (docs/data.md, "SynthBIWI"):
  * speech is eSpeak NG speaking distinct sentences with distinct voices (variant, base pitch);
  * lips follow the synthesiser's own phoneme events (visemes with coarticulation smoothing) on a
    head whose lips part and whose jaw turns (`face_model`); the eyes blink as each pause begins;
  * an emotional clip has a mixture over 12 emotions that shifts the prosody (rate, pitch level and
    range, loudness), the expression blendshapes and the head-motion style (amplitude, nod vs shake);
  * head motion is driven by the speech envelope with a lag, plus a random component from the seed;
  * each emotional clip also has its frame-aligned neutral track (same lips, no expression, no pose).
Same arguments and seed give byte-identical files.
"""

from __future__ import annotations

import dataclasses
import functools
import multiprocessing
import os
import shutil
import sys
import time

import numpy as np
from scipy import ndimage, signal

from sdetalk_jax import cli
from sdetalk_jax.data import espeak, face_model, writer
from sdetalk_jax.data.corpus import SYNTHETIC_FORMAT_VERSION as FORMAT_VERSION
from sdetalk_jax.data.corpus import SYNTHETIC_GENERATOR as GENERATOR
from sdetalk_jax.data.corpus import existing_synthetic_parameters as existing_parameters
from sdetalk_jax.data.corpus import synthetic_parameters as corpus_parameters
from sdetalk_jax.data.synthetic.blinks import blink_over_expression, blink_track
from sdetalk_jax.data.synthetic.visemes import lip_track, mouth_weights

FPS = 25

# Training subjects first, so a small corpus (--subjects 6) still has every training speaker.
BIWI_SUBJECTS = ("F2", "F3", "F4", "M3", "M4", "M5", "F1", "F5", "F6", "F7", "F8", "M1", "M2", "M6")
_FEMALE_VOICES = ("f1", "f2", "f3", "f4", "f5", "Annie", "linda", "belinda")
# Male variants whose voicing a pitch tracker follows well (m1, m4 are creaky).
_MALE_VOICES = ("m2", "m3", "m5", "m6", "m7", "edward")

SENTENCES = (
    "The bright canoe slid gently across the quiet lake.",
    "A warm breeze carried the smell of fresh bread down the street.",
    "Please put the blue folder on the table by the window.",
    "My brother bought a map before we went over the mountains.",
    "The old clock in the hall stopped working at midnight.",
    "We should have checked the weather before the long drive.",
    "She planted seven rows of beans behind the barn.",
    "Nobody told me the meeting had moved to Monday morning.",
    "The puppy chased the yellow ball around the garden.",
    "Could you open the door and let some fresh air in?",
    "They painted the little boat a deep shade of green.",
    "The museum will close early because of the storm.",
    "He wrapped the fragile vase in three layers of paper.",
    "Every winter the river freezes near the wooden bridge.",
    "I can hardly believe how much the city has changed.",
    "The children built a tall tower out of wooden blocks.",
    "Our train was delayed for nearly two hours yesterday.",
    "The baker always saves a loaf of rye bread for me.",
    "Move the heavy boxes carefully into the back room.",
    "The lighthouse keeper watched the ships pass by at night.",
    "A family of foxes lives under the abandoned shed.",
    "Why would anyone leave the lights on all weekend?",
    "The soup tastes better with a pinch of pepper.",
    "We found an old photograph hidden inside the book.",
    "The orchestra played beautifully despite the noisy crowd.",
    "Remember to water the plants while I am away.",
    "The pilot announced that we would land in ten minutes.",
    "Maybe we can meet for lunch near the park on Friday.",
    "The mountain path was steep, narrow and very muddy.",
    "His voice echoed through the empty concrete tunnel.",
    "The fisherman mended his nets beside the harbour wall.",
    "You never know what you will find at the flea market.",
    "The committee approved the new plans without a vote.",
    "Thick fog rolled over the fields before sunrise.",
    "I left my umbrella on the bus again this morning.",
    "The violin was much older than anyone had guessed.",
    "Bring a warm jacket because the evenings are cold.",
    "The library lends out board games as well as books.",
    "Somebody ate the last piece of chocolate cake.",
    "The festival ended with fireworks over the bay.",
)

EMOTIONS = (
    "anger",
    "sadness",
    "fear",
    "contempt",
    "disgust",
    "nervousness",
    "frustration",
    "stress",
    "confidence",
    "excitement",
    "happiness",
    "surprise",
)

# Per emotion: arousal, valence, then extra shifts of rate (words/min), pitch, range and volume
# (eSpeak units) beyond what arousal/valence give, so prosody spans more than two dimensions.
_EMOTION_PROSODY = np.array(
    [
        [0.8, -0.7, 5, -10, 10, 35],
        [-0.7, -0.6, -25, -8, -20, -25],
        [0.6, -0.6, 30, 20, 5, -20],
        [-0.2, -0.5, -20, -12, 20, 5],
        [0.1, -0.7, -25, -5, 15, 15],
        [0.5, -0.3, 35, 10, -20, -25],
        [0.4, -0.5, -5, -10, 0, 25],
        [0.6, -0.4, 25, 0, -15, 10],
        [0.2, 0.5, -15, -15, 10, 30],
        [0.9, 0.8, 20, 15, 25, 15],
        [0.5, 0.9, 0, 12, 20, -5],
        [0.7, 0.3, -10, 25, 30, 0],
    ],
    dtype=np.float64,
)
PROSODY_GAIN = 1.6

# Voice quality per emotion, applied to the synthesised audio: spectral tilt (bright, tense voice
# > 0; dark, lax voice < 0) and tremolo depth (a shaky voice). Two more cues beyond prosody.
_EMOTION_VOICE = np.array(
    [
        [1.0, 0.0],
        [-1.0, 0.3],
        [-0.2, 0.5],
        [-0.3, 0.0],
        [-0.2, 0.0],
        [0.0, 0.6],
        [0.3, 0.0],
        [0.3, 0.3],
        [0.2, 0.0],
        [0.6, 0.1],
        [0.4, 0.0],
        [0.5, 0.0],
    ],
    dtype=np.float64,
)
TREMOLO_HZ = 6.0

# Expression blendshape weights per emotion, columns as face_model.EXPRESSION_SHAPES.
_EMOTION_EXPRESSION = np.array(
    [
        [0, 0.3, 0, 1, 0, 0.4, 0, 0.7, 0.3, 0],
        [0, 0.8, 0, 0, 0.9, 0, 0.3, 0.2, 0, 0],
        [0, 0.3, 0.6, 0, 0.7, 1, 0, 0, 0, 0.3],
        [0.3, 0, 0, 0.3, 0, 0, 0.5, 0.4, 0.2, 0],
        [0, 0.5, 0, 0.6, 0, 0, 0.4, 0.2, 1, 0],
        [0, 0.2, 0.2, 0, 0.6, 0.3, 0, 0.7, 0, 0],
        [0, 0.5, 0, 0.7, 0, 0, 0.2, 0.5, 0.2, 0],
        [0, 0.3, 0, 0.5, 0.3, 0.4, 0, 0.5, 0, 0],
        [0.4, 0, 0.2, 0, 0, 0, 0.2, 0.2, 0, 0],
        [0.8, 0, 0.6, 0, 0, 0.5, 0, 0, 0, 0.4],
        [1, 0, 0.2, 0, 0, 0, 0.5, 0, 0, 0.1],
        [0, 0, 1, 0, 0.3, 1, 0, 0, 0, 0.7],
    ],
    dtype=np.float64,
)
EXPRESSION_GAIN = 1.5
HEAD_LAG_S = 0.12  # the head moves just after the stressed syllable
DIRICHLET_CONCENTRATION = 0.3  # mostly 1-3 dominant emotions per clip, as in BIWI's Fig. 1


# --------------------------------------------------------------------------------------------------
# Per-clip signals


def speech_envelope(
    waveform: np.ndarray, sample_rate: int, num_frames: int, fps: float
) -> np.ndarray:
    """Hilbert envelope of the audio, averaged over each face frame and normalised to [0, ~1]."""
    envelope = np.abs(signal.hilbert(waveform.astype(np.float64)))
    per_frame = int(round(sample_rate / fps))
    usable = envelope[: num_frames * per_frame].reshape(num_frames, per_frame).mean(axis=1)
    usable = ndimage.gaussian_filter1d(usable, sigma=1.0)
    scale = np.percentile(usable, 95)
    return usable / scale if scale > 0 else usable


def head_motion(
    envelope: np.ndarray, fps: float, *, amplitude: float, nod: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pitch, yaw, roll) angles [N] in radians and translation [N, 3] in metres.

    Angular velocity = speech drive (envelope above its median, delayed by HEAD_LAG_S) times slow
    oscillations (nodding faster than shaking), split between nod and shake by `nod`, plus a random
    smooth component: the head moves with stressed syllables, differently on every draw.
    """
    n = envelope.shape[0]
    t = np.arange(n) / fps
    lag = int(round(HEAD_LAG_S * fps))
    delayed = np.concatenate([np.zeros(lag), envelope[: n - lag]]) if lag < n else np.zeros(n)
    drive = np.maximum(delayed - np.median(envelope), 0)
    frequencies = (rng.uniform(1.5, 2.2), rng.uniform(0.8, 1.3), rng.uniform(0.5, 0.9))
    phases = rng.uniform(0, 2 * np.pi, size=3)
    shares = (nod, 1 - nod, 0.25)
    velocities = []
    for frequency, phase, share in zip(frequencies, phases, shares, strict=True):
        rhythmic = amplitude * share * 1.2 * drive * np.sin(2 * np.pi * frequency * t + phase)
        wander = 0.06 * ndimage.gaussian_filter1d(rng.standard_normal(n), sigma=4) * np.sqrt(8)
        velocities.append(rhythmic + wander)
    angles = []
    for velocity in velocities:
        angle = np.cumsum(velocity) / fps
        angles.append(angle - ndimage.gaussian_filter1d(angle, sigma=2.0 * fps, mode="nearest"))
    pitch, yaw, roll = angles
    noise = 0.001 * ndimage.gaussian_filter1d(rng.standard_normal((n, 3)), sigma=5, axis=0) * 5
    translation = np.stack([0.04 * yaw, 0.03 * pitch, 0.02 * pitch], axis=-1) + noise
    return pitch, yaw, roll, translation


def expression_track(mixture: np.ndarray, envelope: np.ndarray, fps: float) -> np.ndarray:
    """Expression blendshape weights [N, 10]: the mixture's expression, eased in over 0.3 s and
    breathing slightly with the speech."""
    weights = EXPRESSION_GAIN * mixture @ _EMOTION_EXPRESSION
    n = envelope.shape[0]
    ease = np.clip(np.arange(n) / (0.3 * fps), 0, 1)
    ease = ease * ease * (3 - 2 * ease)
    intensity = (0.3 + 0.7 * ease) * (0.8 + 0.2 * np.clip(envelope, 0, 1.5))
    return intensity[:, None] * weights[None, :]


def emotion_prosody(mixture: np.ndarray | None, base_pitch: float) -> espeak.Prosody:
    """eSpeak prosody for a mixture; None (a neutral recording) gives the voice's own defaults."""
    effects = np.zeros(4)
    if mixture is not None:
        # Arousal is not centred: acted emotional speech is on average more aroused (faster,
        # louder, wider in pitch) than the same speaker's neutral take, which a listener hears
        # without the neutral take beside it. The other shifts are centred, so they say which
        # emotion, not whether there is one.
        centred = _EMOTION_PROSODY - _EMOTION_PROSODY.mean(axis=0)
        centred[:, 0] = _EMOTION_PROSODY[:, 0]
        arousal, valence, d_rate, d_pitch, d_range, d_volume = mixture @ centred
        effects = np.array(
            [
                30 * arousal + d_rate,
                8 * arousal + 5 * valence + d_pitch,
                12 * arousal + d_range,
                25 * arousal + d_volume,
            ]
        )
    rate, pitch, pitch_range, volume = np.array([175, base_pitch, 50, 100]) + PROSODY_GAIN * effects
    return espeak.Prosody(
        rate=int(np.clip(round(rate), 110, 280)),
        pitch=int(np.clip(round(pitch), 10, 95)),
        range=int(np.clip(round(pitch_range), 10, 95)),
        volume=int(np.clip(round(volume), 50, 180)),
    )


def voice_quality(waveform: np.ndarray, sample_rate: int, mixture: np.ndarray | None) -> np.ndarray:
    """Emotion-dependent spectral tilt and tremolo (none for a neutral recording). The level is
    kept, only reduced if a peak would clip: loudness is itself an emotional cue."""
    if mixture is None:
        return waveform
    tilt = float(mixture @ (_EMOTION_VOICE[:, 0] - _EMOTION_VOICE[:, 0].mean()))
    tremolo = float(mixture @ _EMOTION_VOICE[:, 1])
    smooth = signal.lfilter([0.3], [1.0, -0.7], waveform)  # one-pole low-pass
    tilted = waveform + 1.5 * tilt * (waveform - smooth)
    t = np.arange(len(waveform)) / sample_rate
    shaped = tilted * (1.0 + 0.6 * tremolo * np.sin(2 * np.pi * TREMOLO_HZ * t))
    peak = np.max(np.abs(shaped))
    return (shaped / peak * 0.99 if peak > 0.99 else shaped).astype(np.float32)


def head_style(mixture: np.ndarray | None) -> tuple[float, float]:
    """(amplitude, nod share): arousal scales the motion, positive valence nods, negative shakes."""
    if mixture is None:
        return 0.6, 0.5
    arousal, valence = mixture @ _EMOTION_PROSODY[:, :2]
    return float(1.0 + 1.2 * arousal), float(np.clip(0.5 + 0.45 * valence, 0.05, 0.95))


# --------------------------------------------------------------------------------------------------
# Subjects and jobs


@dataclasses.dataclass(frozen=True)
class Subject:
    name: str
    voice: str
    base_pitch: float


def make_subjects(count: int, seed: int) -> list[Subject]:
    if not 1 <= count <= len(BIWI_SUBJECTS):
        raise ValueError(f"--subjects must be 1..{len(BIWI_SUBJECTS)}, got {count}")
    subjects = []
    for name in BIWI_SUBJECTS[:count]:
        rng = np.random.default_rng([seed, 0, BIWI_SUBJECTS.index(name)])
        female = name.startswith("F")
        number = int(name[1:]) - 1
        voices = _FEMALE_VOICES if female else _MALE_VOICES
        pitch = rng.uniform(45, 65) if female else rng.uniform(35, 50)
        subjects.append(Subject(name, f"en+{voices[number % len(voices)]}", round(pitch, 1)))
    return subjects


@dataclasses.dataclass(frozen=True)
class ClipJob:
    root: str
    name: str
    text: str
    subject: Subject
    mixture: np.ndarray | None  # None for the neutral recording
    template: np.ndarray
    num_vertices: int
    seed: int
    fps: float


@functools.cache
def _face(num_vertices: int):
    topology = face_model.build_topology(num_vertices)
    shapes = face_model.blendshapes(topology)
    visemes = np.stack([shapes[k].reshape(-1) for k in face_model.VISEME_SHAPES])
    expressions = np.stack([shapes[k].reshape(-1) for k in face_model.EXPRESSION_SHAPES])
    return topology, visemes, expressions, shapes["blink"].reshape(-1)


def category_expression_offsets(num_vertices: int) -> np.ndarray:
    """The generator's own expression per emotion category [12, V*3] (metres): its blendshape
    weights for the category times the expression basis, the offset a pure take of that emotion
    adds to the neutral face at full intensity (before easing in and breathing with the speech).
    The truth that emotion control is measured against (studies/emotion_control.py)."""
    _, _, expression_basis, _ = _face(num_vertices)
    return EXPRESSION_GAIN * _EMOTION_EXPRESSION @ expression_basis


def render_clip(job: ClipJob) -> dict:
    """Synthesises one clip and writes its files; returns a small summary. Runs in a fresh process
    per clip so that eSpeak's carried-over state cannot make the audio depend on clip order."""
    utterance = espeak.synthesize(
        job.text,
        voice=job.subject.voice,
        prosody=emotion_prosody(job.mixture, job.subject.base_pitch),
        seed=job.seed % 2**31,
    )
    rate = utterance.sample_rate
    waveform = voice_quality(utterance.waveform, rate, job.mixture)
    duration = waveform.shape[0] / rate
    n = int(np.floor(duration * job.fps))
    rng = np.random.default_rng(job.seed)
    _, viseme_basis, expression_basis, blink = _face(job.num_vertices)
    envelope = speech_envelope(waveform, rate, n, job.fps)
    lips = mouth_weights(lip_track(utterance.phonemes, duration, n, job.fps), envelope)
    amplitude, nod = head_style(job.mixture)
    pitch, yaw, roll, translation = head_motion(
        envelope, job.fps, amplitude=amplitude, nod=nod, rng=rng
    )
    blinks = blink_track(envelope, job.fps)
    neutral = job.template.reshape(1, -1) + lips @ viseme_basis + blinks[:, None] * blink[None]
    if job.mixture is not None:
        expression = expression_track(job.mixture, envelope, job.fps)
        vertices = neutral + expression @ expression_basis
        vertices += blink_over_expression(blinks, expression)[:, None] * blink[None]
    else:
        vertices = neutral
    writer.write_clip(
        job.root,
        job.name,
        waveform=waveform,
        sample_rate=rate,
        vertices=vertices,
        rotation=face_model.rotation_matrices(pitch, yaw, roll),
        translation=translation,
        neutral_vertices=neutral if job.mixture is not None else None,
    )
    return {"name": job.name, "frames": n, "seconds": duration}


def _jobs(root: str, subjects, sentences: int, num_vertices: int, seed: int, fps: float):
    topology = face_model.build_topology(num_vertices)
    jobs, labels, templates = [], {}, {}
    uniform = np.full(len(EMOTIONS), 1.0 / len(EMOTIONS))
    for subject in subjects:
        index = BIWI_SUBJECTS.index(subject.name)
        templates[subject.name] = face_model.template_shape(
            topology, np.random.default_rng([seed, 1, index])
        )
        for sentence in range(1, sentences + 1):
            mixture_rng = np.random.default_rng([seed, 2, index, sentence])
            mixture = mixture_rng.dirichlet(np.full(len(EMOTIONS), DIRICHLET_CONCENTRATION))
            for emotional in (True, False):
                name = f"{subject.name}_{'e' if emotional else ''}{sentence:02d}"
                labels[name] = mixture if emotional else uniform
                jobs.append(
                    ClipJob(
                        root=root,
                        name=name,
                        text=SENTENCES[(sentence - 1) % len(SENTENCES)],
                        subject=subject,
                        mixture=mixture if emotional else None,
                        template=templates[subject.name],
                        num_vertices=num_vertices,
                        seed=int(
                            np.random.SeedSequence(
                                [seed, 3, index, sentence, emotional]
                            ).generate_state(1)[0]
                        ),
                        fps=fps,
                    )
                )
    return topology, templates, labels, jobs


def _recorded(parameters: dict) -> dict:
    return {**parameters, "format_version": FORMAT_VERSION}


def generate_corpus(
    root: str,
    *,
    subjects: int = 14,
    sentences: int = 40,
    vertices: int = 4000,
    seed: int = 0,
    workers: int | None = None,
    progress: bool = True,
    force: bool = False,
) -> str:
    """Writes the corpus to `root` (atomically: into a temporary folder renamed at the end).

    An existing folder is only replaced when it holds a SynthBIWI corpus and `force` is set; one
    with the same parameters is kept as it is. Anything else there is never touched.
    """
    if not 1 <= sentences <= len(SENTENCES):
        raise ValueError(f"--sentences must be 1..{len(SENTENCES)}, got {sentences}")
    parameters = corpus_parameters(subjects, sentences, vertices, seed)
    root = os.path.abspath(root)
    if _keep_existing(root, parameters, force):
        return root
    staging = f"{root}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    try:
        subject_list = make_subjects(subjects, seed)
        jobs = _write_shared_files(staging, subject_list, sentences, vertices, seed)
        summaries = _run_jobs(jobs, workers, progress)
        writer.write_corpus_info(staging, _corpus_info(parameters, subject_list, summaries))
        _move_into_place(staging, root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return root


def _keep_existing(root: str, parameters: dict, force: bool) -> bool:
    """Whether `root` already holds a SynthBIWI corpus with these parameters, to be kept as it is
    (never with `force`). Raises FileExistsError when `root` holds something the generator must
    not replace: not a SynthBIWI corpus, or one with other parameters and no `force`."""
    if not os.path.exists(root):
        return False
    previous = existing_parameters(root)
    if previous == _recorded(parameters) and not force:
        print(
            f"{root}: SynthBIWI corpus with these parameters already exists; kept",
            file=sys.stderr,
        )
        return True
    if previous is None and (not os.path.isdir(root) or os.listdir(root)):
        raise FileExistsError(
            f"{root} exists and is not a SynthBIWI corpus; choose another --out (nothing was written)"
        )
    if previous is not None and not force:
        raise FileExistsError(
            f"{root} holds a SynthBIWI corpus with other parameters {previous}; pass --force to "
            "replace it, or choose another --out"
        )
    return False


def _write_shared_files(
    staging: str, subjects: list[Subject], sentences: int, vertices: int, seed: int
) -> list[ClipJob]:
    """Writes what the clips share (templates, mesh faces, regions, emotion labels) into
    `staging`; returns the jobs that write the clips themselves."""
    topology, templates, labels, jobs = _jobs(staging, subjects, sentences, vertices, seed, FPS)
    writer.write_templates(staging, templates)
    writer.write_npy(os.path.join(staging, "mesh", "faces.npy"), topology.faces)
    writer.write_npy(
        os.path.join(staging, "mesh", "vertex_colors.npy"),
        face_model.vertex_colors(topology).astype(np.float32),
    )
    writer.write_region(staging, "lve", topology.lip_vertices)
    writer.write_region(staging, "fdd", topology.upper_face_vertices)
    writer.write_emotion_labels(staging, EMOTIONS, labels)
    return jobs


def _corpus_info(parameters: dict, subjects: list[Subject], summaries: list[dict]) -> dict:
    """The corpus's `corpus.json`: frame rate, what generated it and how, and its size."""
    return {
        "fps": FPS,
        "generator": GENERATOR,
        "format_version": FORMAT_VERSION,
        "parameters": parameters,
        "faces": "mesh/faces.npy",
        "subjects": {s.name: {"voice": s.voice, "base_pitch": s.base_pitch} for s in subjects},
        "clips": len(summaries),
        "frames": int(sum(s["frames"] for s in summaries)),
    }


def _move_into_place(staging: str, root: str) -> None:
    """Renames the finished `staging` folder to `root`. A corpus already at `root` is moved aside
    first and removed only once the new one is in place."""
    if os.path.exists(root):
        retired = f"{root}.old-{os.getpid()}"
        os.rename(root, retired)
        os.rename(staging, root)
        shutil.rmtree(retired)
    else:
        os.rename(staging, root)


def _run_jobs(jobs, workers, progress):
    from tqdm import tqdm

    workers = workers or min(os.cpu_count() or 1, 8)
    # forkserver: each clip runs in a fresh child of a clean server, never a fork of a process that
    # has initialised eSpeak (its state leaks between utterances) or started JAX's threads.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([GENERATOR])
    with context.Pool(workers, maxtasksperchild=1) as pool:
        results = pool.imap(render_clip, jobs, chunksize=1)
        return list(
            tqdm(
                results,
                total=len(jobs),
                desc="synthesising clips",
                unit="clip",
                disable=not progress,
            )
        )


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser(f"python -m {GENERATOR}", __doc__)
    parser.add_argument("--out", required=True, help="corpus folder to create")
    parser.add_argument("--subjects", type=int, default=14, help="how many of the 14 BIWI names")
    parser.add_argument("--sentences", type=int, default=40, help="sentences per subject (<= 40)")
    parser.add_argument("--vertices", type=int, default=4000, help="mesh vertices (BIWI has 23370)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    parser.add_argument("--force", action="store_true", help="replace an existing SynthBIWI corpus")
    parser.add_argument("--preview", action="store_true", help="also write preview.png")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        root = generate_corpus(
            args.out,
            subjects=args.subjects,
            sentences=args.sentences,
            vertices=args.vertices,
            seed=args.seed,
            workers=args.workers,
            progress=not args.quiet,
            force=args.force,
        )
    except (FileExistsError, ValueError, espeak.SpeechError) as err:
        return cli.report(err)
    print(f"{root}: written in {time.perf_counter() - start:.1f}s")
    if args.preview:
        from sdetalk_jax.data.synthetic.preview import write_preview

        print(f"preview: {write_preview(root)}")
    return 0
