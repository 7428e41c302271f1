"""Loading the Python config files of `configs/` by path (as `ml_collections.config_flags` does),
for configs that build on one another, tests and benchmarks."""

from __future__ import annotations

import importlib.util
import os

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def load_module(path: str):
    """The config file at `path` as a module (its `get_config` builds the ConfigDict)."""
    name = "_config_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def repository_config(name: str):
    """`configs/<name>.py` of this repository, e.g. `repository_config("biwi")`."""
    return load_module(os.path.join(CONFIG_DIR, f"{name}.py")).get_config()
