"""sdetalk_jax/optim.py: the learning-rate schedule and the optimiser."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sdetalk_jax import optim
from tests.model_fixtures import PAPER


def test_warmup_cosine_schedule_rises_then_decays_to_zero():
    train_config = PAPER.train.copy_and_resolve_references()
    train_config.lr_schedule, train_config.warmup_steps = "warmup_cosine", 10
    schedule = optim.learning_rate(train_config, 100)
    rates = [float(schedule(step)) for step in (0, 5, 10, 55, 100)]
    peak = train_config.learning_rate
    assert (
        rates[0] == 0.0 and rates[1] == pytest.approx(peak / 2) and rates[2] == pytest.approx(peak)
    )
    assert rates[2] > rates[3] > rates[4] and rates[4] == pytest.approx(0.0, abs=1e-12)
    assert optim.learning_rate(PAPER.train, 100) == peak  # the paper's fixed rate
    # The optimiser state's structure does not depend on the schedule's length (restoring needs
    # none), and a schedule's Adam updates follow the schedule.
    params = {"w": jnp.ones(3)}
    config = PAPER.copy_and_resolve_references()
    config.train = train_config
    short, long = optim.optimizer(config, 5), optim.optimizer(config, 500)
    assert jax.tree.structure(short.init(params)) == jax.tree.structure(long.init(params))
    grads = {"w": jnp.ones(3)}
    update, _ = short.update(grads, short.init(params), params)
    np.testing.assert_array_equal(update["w"], 0.0)  # step 0 of the warm-up: rate 0
    train_config.lr_schedule = "exponential"
    with pytest.raises(ValueError, match="lr_schedule"):
        optim.learning_rate(train_config, 100)
