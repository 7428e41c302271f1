"""Data: the BIWI layout reader and checks, batching, and the synthetic corpus."""

from sdetalk_jax.data.biwi import Clip, Corpus, DataError, Problem, SplitSpec, scan_corpus

__all__ = ["Clip", "Corpus", "DataError", "Problem", "SplitSpec", "scan_corpus"]
