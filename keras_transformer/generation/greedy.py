"""Deprecated: moved to `keras_transformer.generation.reference_decoders`; this name keeps working."""

from keras_transformer import _deprecation
from keras_transformer.generation.reference_decoders import greedy_generate, greedy_translate  # noqa: F401

_deprecation.warn("keras_transformer.generation.greedy", "keras_transformer.generation.reference_decoders")
