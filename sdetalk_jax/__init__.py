"""sdetalk-jax: speech-driven emotional 3D talking-face animation (SDETalk) in JAX/Flax."""

__version__ = "0.1.0"
