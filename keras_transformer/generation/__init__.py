"""Decoding: greedy (cached decoding, beam search and sampling follow)."""

from keras_transformer.generation.greedy import greedy_translate

__all__ = ["greedy_translate"]
