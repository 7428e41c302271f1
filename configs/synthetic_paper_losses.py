"""configs/synthetic.py with the paper's loss weights: every `loss` field as configs/biwi_paper.py sets it
(lambda_r = lambda_t = 0.001, lambda_e = lambda_d = lambda_g = 0.1, the non-saturating GAN, L2 on the
sample's head, none of our loss additions), everything else (data, networks, schedule) as
configs/synthetic.py. The head-motion row of docs/training.md: does the head move at all when only
the paper's terms drive it?

    python -m studies.seeds --config configs/synthetic_paper_losses.py --workdir runs/paper-losses
"""

import os

from sdetalk_jax.config_files import load_module

_here = os.path.dirname(__file__)
paper = load_module(os.path.join(_here, "biwi_paper.py"))
synthetic = load_module(os.path.join(_here, "synthetic.py"))


def get_config():
    config = synthetic.get_config()
    config.loss = paper.get_config().loss
    return config
