"""sdetalk_jax/models/emotion.py: the emotion embedding network."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sdetalk_jax.models import emotion
from tests.model_fixtures import CONFIG, _perturbed


@pytest.mark.parametrize("order", ["sequential", "parallel"])
def test_the_emotion_networks_frequency_block_reads_what_the_order_says(order):
    """In the paper's order the frequency block attends over the temporal
    block's output, at the paper's 4 heads and width; in ours both read the mel side by side."""
    import dataclasses

    config = dataclasses.replace(CONFIG, emotion_attention=order)
    network = emotion.EmotionEmbeddingNetwork(config)
    mel = 3.0 * jax.random.normal(jax.random.key(0), (2, 12, config.mel_bins))
    mask = jnp.arange(12)[None] < jnp.array([[12], [9]])
    params = network.init(jax.random.key(1), mel, mask)["params"]

    def frequency_output(params):
        _, state = network.apply(
            {"params": params}, mel, mask, capture_intermediates=True,
            mutable=["intermediates"],
        )  # fmt: skip
        return np.asarray(state["intermediates"]["frequency"]["__call__"][0])

    # The temporal block's last LayerNorm, scaled: its output (not the mel) changes.
    norm = params["temporal"]["norm_feedforward"]
    moved = {**params, "temporal": {**params["temporal"], "norm_feedforward": {
        **norm, "scale": 3.0 * norm["scale"]}}}  # fmt: skip
    before = frequency_output(params)
    changed = np.abs(frequency_output(moved) - before).max() / np.abs(before).max()
    query = params["frequency"]["block"]["self_attention"]["query"]["kernel"]
    if order == "sequential":
        assert changed > 0.05
        assert query.shape == (config.hidden, config.heads, config.hidden // config.heads)
    else:
        assert changed == 0.0
        assert query.shape == (config.frequency_dim, 2, config.frequency_dim // 2)


@pytest.mark.parametrize("centring", ["utterance", "none"])
def test_utterance_centring_hears_no_voice_level_and_ignores_padding(centring):
    """`mel_centring = "utterance"`: a voice louder or brighter in every frame (a per-bin offset
    over the whole clip) gives the same emotional embedding; without it, another one. Padding
    changes neither."""
    import dataclasses

    config = dataclasses.replace(CONFIG, mel_centring=centring)
    network = emotion.EmotionEmbeddingNetwork(config)
    mel = 3.0 * jax.random.normal(jax.random.key(0), (2, 12, config.mel_bins))
    mask = jnp.arange(12)[None] < jnp.array([[12], [9]])
    params = _perturbed({"emotion": network.init(jax.random.key(1), mel, mask)["params"]})
    embed = jax.jit(lambda m, k: network.apply({"params": params["emotion"]}, m, k))
    level = jax.random.normal(jax.random.key(2), (2, 1, config.mel_bins)) * mask[..., None]
    moved = np.abs(embed(mel + level, mask) - embed(mel, mask)).max()  # real frames only
    if centring == "utterance":
        assert moved < 1e-4
    else:
        assert moved > 1e-2
    padded = jnp.concatenate([mel, 5.0 * jnp.ones((2, 4, config.mel_bins))], axis=1)
    padded_mask = jnp.concatenate([mask, jnp.zeros((2, 4), bool)], axis=1)
    np.testing.assert_allclose(
        embed(padded, padded_mask)[:, :12] * mask[..., None], embed(mel, mask), atol=1e-5
    )
    with pytest.raises(ValueError, match="model.mel_centring is 'speaker': one of 'none'"):
        dataclasses.replace(config, mel_centring="speaker")
