"""The three trained networks of a run together: the generator G (with G_n, the emotion network,
the classifier and the diversity mapping), the consistency discriminator D and the vCLUB
estimators, their parameters from one key, and the data-dependent start of the voice-statistics
readout."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from sdetalk_jax.models import ops, sdetalk, vclub
from sdetalk_jax.models.config import SDETalkConfig


@dataclasses.dataclass(frozen=True)
class Networks:
    config: SDETalkConfig
    generator: sdetalk.Generator
    discriminator: sdetalk.Discriminator
    estimators: vclub.MIEstimators

    @classmethod
    def build(cls, model_config: SDETalkConfig) -> Networks:
        return cls(
            model_config,
            sdetalk.Generator(model_config),
            sdetalk.Discriminator(model_config),
            vclub.MIEstimators(model_config),
        )

    def dummy_batch(self, frames: int = 8) -> dict:
        c = self.config
        return {
            "context": jnp.zeros((1, frames, c.context_dim)),
            "mel": jnp.zeros((1, frames, c.mel_bins)),
            "subject_onehot": jnp.zeros((1, c.num_subjects)),
            "template": jnp.zeros((1, c.num_vertices * 3)),
            "frame_mask": jnp.ones((1, frames), bool),
        }

    def init_params(self, key) -> dict:
        """Parameters of the three networks from one key (split by purpose)."""
        generator_key, discriminator_key, estimator_key = jax.random.split(key, 3)
        batch = self.dummy_batch()
        noise = jnp.zeros((1, 8, self.config.hidden))
        generator = self.generator.init(generator_key, batch, noise)["params"]
        outputs = self.generator.apply({"params": generator}, batch, noise)
        discriminator = self.discriminator.init(
            discriminator_key,
            outputs.embedding,
            ops.coordinate_rows(outputs.posed),
            batch["template"],
            batch["frame_mask"],
        )["params"]
        estimators = self.estimators.init(estimator_key, vclub.per_frame_factors(outputs))["params"]
        return {"generator": generator, "discriminator": discriminator, "estimators": estimators}


def statistics_standardisation(dataset, between_clips=None) -> tuple[np.ndarray, np.ndarray]:
    """(centre, scale) [3 bins]: the mean and standard deviation over the clips of `dataset` of
    each of `ops.clip_statistics`, what `model.emotion_statistics` standardises by (so that
    its ridge penalty weighs every statistic alike, as a ridge on standardised features does).
    `between_clips` is called before each clip and may raise to stop."""
    # Every clip padded to the longest: one compilation, and padding changes nothing.
    frames = max(dataset.lengths)
    statistics = jax.jit(ops.clip_statistics)
    rows = []
    for index in range(len(dataset.clips)):
        if between_clips is not None:
            between_clips()
        mel = dataset.log_mel(index)
        padded = np.zeros((1, frames, mel.shape[-1]), np.float32)
        padded[0, : len(mel)] = mel
        rows.append(np.asarray(statistics(padded, np.arange(frames)[None] < len(mel)))[0])
    rows = np.asarray(rows, np.float64)
    return rows.mean(0).astype(np.float32), (rows.std(0) + 1e-6).astype(np.float32)
