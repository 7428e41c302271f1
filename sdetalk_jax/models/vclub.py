"""The vCLUB variational networks q(y|x) (Cheng et al., 2020) of Eq. 6, one per pair of the factors
p (identity), c (context) and e (emotional embedding). The bound itself is a loss
(`losses.vclub_upper_bound`)."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from sdetalk_jax.models.config import SDETalkConfig


class GaussianEstimator(nn.Module):
    """q(y|x) = N(mu(x), diag sigma^2(x)), the variational net of vCLUB (Cheng et al., 2020)."""

    out_dim: int
    hidden: int = 128

    @nn.compact
    def __call__(self, x):
        h = nn.gelu(nn.Dense(self.hidden, name="hidden")(x))
        mean = nn.Dense(self.out_dim, name="mean")(h)
        log_variance = jnp.tanh(nn.Dense(self.out_dim, name="log_variance")(h)) * 4.0
        return mean, log_variance


MI_PAIRS = (("identity", "context"), ("identity", "embedding"), ("context", "embedding"))


def per_frame_factors(outputs):
    """The factors of Eq. 6 from the generator's outputs (`sdetalk.GeneratorOutputs`): identity p broadcast over frames next to
    context c and embedding e, [B, N, D] each."""
    frames = outputs.embedding.shape[1]
    identity = outputs.identity
    return {
        "identity": jnp.broadcast_to(
            identity[:, None], (identity.shape[0], frames, identity.shape[-1])
        ),
        "context": outputs.context,
        "embedding": outputs.embedding,
    }


class MIEstimators(nn.Module):
    """The three vCLUB estimators of Eq. 6, each predicting the second factor from the first."""

    config: SDETalkConfig

    def setup(self):
        dims = {
            "identity": self.config.identity_dim,
            "context": self.config.context_dim,
            "embedding": self.config.hidden,
        }
        self.estimators = {
            f"{x}->{y}": GaussianEstimator(dims[y], name=f"{x}_to_{y}") for x, y in MI_PAIRS
        }

    def __call__(self, factors):
        return {
            pair: estimator(factors[pair.split("->")[0]])
            for pair, estimator in self.estimators.items()
        }

    def speaker_marginal(self, identity_table):
        """q(.|p_s) for every training speaker's identity p_s [S, identity_dim]: the pairs whose
        first factor is p."""
        return {
            pair: estimator(identity_table)
            for pair, estimator in self.estimators.items()
            if pair.startswith("identity->")
        }
