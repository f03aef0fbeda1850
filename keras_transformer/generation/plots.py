"""Deprecated: moved to `keras_transformer.evaluation.plots`; this name keeps working."""

from keras_transformer import _deprecation
from keras_transformer.evaluation.plots import cross_attention, plot_attention, plot_history  # noqa: F401

_deprecation.warn("keras_transformer.generation.plots", "keras_transformer.evaluation.plots")
