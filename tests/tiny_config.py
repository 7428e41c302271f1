"""configs/synthetic.py shrunk to seconds, for the tests: a 2-subject SynthBIWI (sentences 1-3
train, 4 val, 5 test) and tiny networks. Set data.root and data.feature_cache."""

import os

from sdetalk_jax.config_files import load_module

synthetic = load_module(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", "synthetic.py")
)


def get_config():
    config = synthetic.get_config()
    config.data.root = ""
    config.data.generate_if_missing = False
    config.data.feature_cache = ""
    config.data.splits.train_subjects = ("F2", "F3")
    config.data.splits.train_sentences = (1, 3)
    config.data.splits.val_sentences = (4, 4)
    config.data.splits.test_sentences = (5, 5)
    config.data.bucket_min = 128  # one bucket: one compilation per function
    config.model.wav2vec2_random = dict(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        conv_dim=(16,) * 7, num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2, seed=0,
    )  # fmt: skip
    config.model.hidden = 16
    config.model.heads = 2
    config.model.feedforward = 32
    config.model.identity_dim = 4
    config.model.frequency_bands = 8
    config.model.frequency_dim = 8
    config.model.discriminator_blocks = 1
    config.model.decoder_blocks = 1
    config.train.global_batch = 4
    config.train.epochs = 2
    config.train.progress = False
    # No emotion prototypes at the end of every tiny training (a fit compiles G once more);
    # tests/test_animate.py's run turns them on.
    config.train.emotion_prototype_steps = -1
    return config
