"""Deprecated: moved to `keras_transformer.generation.id_decoder`; this name keeps working."""

from keras_transformer import _deprecation
from keras_transformer.generation.id_decoder import IdDecoder  # noqa: F401

_deprecation.warn("keras_transformer.generation.compiled", "keras_transformer.generation.id_decoder")
