"""Deprecated: moved to `keras_transformer.evaluation.quality`; this name keeps working."""

from keras_transformer import _deprecation
from keras_transformer.evaluation.quality import read_tsv, score, translate_all  # noqa: F401

_deprecation.warn("keras_transformer.generation.evaluation", "keras_transformer.evaluation.quality")
