"""Shared helpers of the model tests: the tiny networks, their batches, noise and losses."""

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import traverse_util

from sdetalk_jax import losses
from sdetalk_jax.config_files import repository_config
from sdetalk_jax.data.face_model import rotation_matrices
from sdetalk_jax.models import vclub
from sdetalk_jax.models.config import SDETalkConfig
from sdetalk_jax.models.networks import Networks
from sdetalk_jax.train_step import faces_for_discriminator

CONFIG = SDETalkConfig(
    num_vertices=40, context_dim=16, num_subjects=3, num_emotions=5, hidden=32, heads=4,
    feedforward=64, identity_dim=8, frequency_bands=8, frequency_dim=8, discriminator_blocks=1,
    noise_smoothing_frames=2.0, emotion_attention="parallel",
)  # fmt: skip


PAPER = repository_config("biwi_paper")


LossConfig = PAPER.loss


FPS = 25.0


def make_batch(lengths, frames, seed=0):
    """Row r of clip data depends only on (seed, r), never on `frames` or the other rows, so the
    same clip can be batched with different amounts of padding."""
    rows = [_make_batch([length], 32, (seed, row)) for row, length in enumerate(lengths)]
    full = {k: jnp.concatenate([r[k] for r in rows]) for k in rows[0]}
    full["subject"] = jnp.arange(len(lengths), dtype=jnp.int32) % CONFIG.num_subjects
    full["subject_onehot"] = jax.nn.one_hot(full["subject"], CONFIG.num_subjects)
    return {k: (v[:, :frames] if v.ndim >= 2 and v.shape[1] == 32 else v) for k, v in full.items()}


def _make_batch(lengths, frames, seed):
    rng = np.random.default_rng(seed)
    batch_size = len(lengths)
    mask = np.zeros((batch_size, frames), bool)
    for row, length in enumerate(lengths):
        mask[row, :length] = True
    v3 = CONFIG.num_vertices * 3
    template = rng.normal(size=(batch_size, v3)).astype(np.float32) * 0.05
    vertices = template[:, None] + 0.002 * rng.normal(size=(batch_size, frames, v3)).astype(
        np.float32
    )
    emotion = rng.dirichlet(np.ones(CONFIG.num_emotions), size=batch_size).astype(np.float32)
    batch = {
        "context": rng.normal(size=(batch_size, frames, CONFIG.context_dim)).astype(np.float32),
        "mel": rng.normal(size=(batch_size, frames, 128)).astype(np.float32) - 4,
        "template": template,
        "vertices": vertices,
        "neutral_vertices": vertices - 0.001,
        "rotation": _head_rotations(rng, batch_size, frames),
        "translation": 0.003 * rng.normal(size=(batch_size, frames, 3)).astype(np.float32),
        "emotion": emotion,
        "subject": np.arange(batch_size, dtype=np.int32) % CONFIG.num_subjects,
        "has_head_pose": np.ones(batch_size, bool),
        "has_emotion": np.ones(batch_size, bool),
        "emotional": np.ones(batch_size, bool),
        "has_neutral": np.ones(batch_size, bool),
        "frame_mask": mask,
        "clip_mask": mask.any(1),
    }
    # Padding holds garbage on purpose: masking must make it irrelevant.
    for key in ("context", "mel", "vertices", "neutral_vertices", "translation"):
        batch[key][~mask] = 1e3
    batch["emotion"][~mask.any(1)] = 0.5
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    batch["subject_onehot"] = jax.nn.one_hot(batch["subject"], CONFIG.num_subjects)
    return batch


def _head_rotations(rng, batch_size, frames):
    """Smooth random head motion of a few degrees [B, N, 3, 3]."""
    from sdetalk_jax.data.face_model import rotation_matrices

    angles = np.cumsum(0.01 * rng.normal(size=(batch_size, frames, 3)), axis=1)
    return np.stack([rotation_matrices(*row.T) for row in angles]).astype(np.float32)


def networks_and_initial_params():
    """The test networks (`CONFIG`) and their initial parameters: each test module's
    `networks_and_params` fixture, built once per module."""
    networks = Networks.build(CONFIG)
    return networks, networks.init_params(jax.random.key(0))


def clip_noise(batch, seed):
    """Noise z whose row r depends only on (seed, r), like the clip data of `make_batch`."""
    rows, frames = batch["frame_mask"].shape
    return jnp.stack(
        [
            jax.random.normal(jax.random.fold_in(jax.random.key(seed), r), (32, CONFIG.hidden))
            for r in range(rows)
        ]
    )[:, :frames]


_GENERATORS = {}


def generator_outputs(networks, params, batch, seed=1):
    """The generator's outputs under `clip_noise`, jitted (op by op it takes tens of seconds)."""
    if id(networks) not in _GENERATORS:
        _GENERATORS[id(networks)] = jax.jit(
            lambda p, b, z: networks.generator.apply({"params": p}, b, z)
        )
    noise = clip_noise(batch, seed)
    return _GENERATORS[id(networks)](params["generator"], batch, noise), noise


def all_losses(networks, params, batch):
    out, noise = generator_outputs(networks, params, batch)
    second, noise_2 = generator_outputs(networks, params, batch, seed=2)
    terms = losses.reconstruction_losses(out, batch, LossConfig)
    factors = vclub.per_frame_factors(out)
    variables = {"params": params["estimators"]}
    estimates = networks.estimators.apply(variables, factors)
    speakers = networks.estimators.apply(variables, out.identity_table, method="speaker_marginal")
    weights = batch["frame_mask"].astype(jnp.float32)
    terms["log_likelihood"] = losses.estimator_log_likelihood(estimates, factors, weights)
    terms.update(losses.vclub_upper_bound(estimates, factors, weights, speakers))
    terms["classification"] = losses.emotion_classification_loss(out.mixture, batch)
    terms["diversity"] = losses.diversity_loss(out, second, noise, noise_2, batch, LossConfig)
    terms["emotional_speech"] = losses.emotional_speech_loss(out.emotional_logit, batch)
    terms["head_style"] = losses.head_style_loss(out.rotation, batch["rotation"], batch, LossConfig)
    for side, faces in (
        ("real", faces_for_discriminator(batch)),
        ("fake", faces_for_discriminator(batch, out)),
    ):
        logit, identity_logits, mixture = networks.discriminator.apply(
            {"params": params["discriminator"]}, out.embedding, faces, batch["template"],
            batch["frame_mask"],
        )  # fmt: skip
        terms[f"discriminator_{side}"] = logit
        terms[f"discriminator_{side}_identity"] = identity_logits
        terms[f"discriminator_{side}_emotion"] = mixture
    return terms, out


_JITTED = {}


def jitted_losses(networks):
    """`all_losses` compiled once per networks: op by op, the gradients take minutes."""
    if id(networks) not in _JITTED:
        _JITTED[id(networks)] = jax.jit(lambda params, batch: all_losses(networks, params, batch))
    return _JITTED[id(networks)]


def moved(grads, top):
    flat = traverse_util.flatten_dict(grads)
    return float(sum(np.abs(np.asarray(v)).sum() for k, v in flat.items() if k[0] == top))


def fresh_state(params, tx):
    """A training state at step 0 with these parameters."""
    return {
        "step": jnp.zeros((), jnp.int32),
        "params": params,
        "opt_state": {k: tx.init(v) for k, v in params.items()},
    }


def _perturbed(params, scale=0.05, seed=7):
    """Parameters moved away from initialisation, where heads are zero and rotations identities."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    moved_leaves = [
        leaf + scale * jax.random.normal(key, leaf.shape, leaf.dtype)
        for leaf, key in zip(leaves, keys, strict=True)
    ]
    return jax.tree.unflatten(tree, moved_leaves)


@flax.struct.dataclass
class HeadOutputs:
    """The generator's outputs that the head's losses and D's faces read."""

    expression: jax.Array
    rotation: jax.Array
    translation: jax.Array


def loss_config(**changes):
    config = ml_collections.ConfigDict(
        dict(vertex_scale=1000.0, rotation_distance_vertices=0, head_speed_width_frames=2.0,
             head_size_width_frames=8.0,
             lambda_f=0.1, lambda_f_without_head_pose=0.1, diversity_cap=1e9)
    )  # fmt: skip
    config.update(changes)
    return config


def nodding(frames, *, phase=0.0, amplitude_deg=3.0, frequency=1.8, shake=0.0):
    """[1, N, 3, 3] rotations of a head nodding (and shaking, by `shake` of the amplitude) with a
    speech-like envelope that rises and falls over the clip."""
    t = np.arange(frames) / FPS
    envelope = np.sin(np.pi * t / t[-1]) ** 2
    angle = np.radians(amplitude_deg) * envelope * np.sin(2 * np.pi * frequency * t + phase)
    other = shake * np.radians(amplitude_deg) * envelope * np.cos(2 * np.pi * 1.1 * t + phase)
    return jnp.asarray(rotation_matrices(angle, other, 0 * t)[None], jnp.float32)


def pose_batch(frames, lengths=None, has_head_pose=(True,)):
    lengths = lengths or [frames] * len(has_head_pose)
    mask = np.arange(frames)[None] < np.asarray(lengths)[:, None]
    return {
        "frame_mask": jnp.asarray(mask),
        "has_head_pose": jnp.asarray(has_head_pose),
    }


def sample_and_centre(**changes):
    """(batch, outputs of a noise sample with the mean head, outputs at z = 0, parameters) of the
    test networks (`CONFIG`) with `changes`, away from initialisation."""
    import dataclasses

    config = dataclasses.replace(CONFIG, **changes)
    networks = Networks.build(config)
    params = _perturbed(networks.init_params(jax.random.key(0)), scale=0.2)
    variables = {"params": params["generator"]}
    batch = make_batch([12, 9], 12)
    noise = jax.random.normal(jax.random.key(1), batch["frame_mask"].shape + (config.hidden,))
    # one compilation: the outputs at z = 0 with the mean head are those without it
    apply = jax.jit(lambda v, b, z: networks.generator.apply(v, b, z, mean_head=True))
    sampled = apply(variables, batch, noise)
    at_zero = apply(variables, batch, jnp.zeros_like(noise))
    return batch, sampled, at_zero, params
