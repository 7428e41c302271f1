"""configs/biwi.py on SynthBIWI (generated on first use), at a size that trains in minutes on 2 CPU
cores: only the data, the encoder's size and the run's length differ (tests/test_config.py).

    python -m sdetalk_jax.train --config configs/synthetic.py --workdir runs/synthetic

No pretrained wav2vec 2.0 can be downloaded here, so the context encoder is a *small randomly
initialised wav2vec 2.0, kept frozen* (as SDETalk freezes its encoder): its features are random
projections of the speech, cached on disk like the real encoder's. Point `model.wav2vec2_checkpoint`
at real weights to use them instead.
"""

import os

from sdetalk_jax.config_files import load_module

# Loaded by path, so the config works from any working directory (config_flags loads files by path).
biwi = load_module(os.path.join(os.path.dirname(__file__), "biwi.py"))


def get_config():
    config = biwi.get_config()
    config.data.root = "data/synthetic"
    config.data.generate_if_missing = True
    config.data.synthetic = dict(subjects=14, sentences=40, vertices=4000, seed=0)
    # SynthBIWI's clip lengths fill 4 buckets at this growth (each bucket is one compilation).
    config.data.bucket_growth = 1.25

    config.model.wav2vec2_checkpoint = ""
    config.model.wav2vec2_random = dict(
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=256,
        conv_dim=(128,) * 7,
        num_conv_pos_embeddings=32,
        num_conv_pos_embedding_groups=8,
        seed=0,
    )

    # A run of minutes: 12 epochs (600 steps) on the same warm-up and cosine decay.
    config.train.epochs = 12
    config.train.keep_checkpoints = 2
    return config
