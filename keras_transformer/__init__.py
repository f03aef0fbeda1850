"""keras_transformer: reusable Keras 3 layers for the Transformer."""

from keras_transformer.layers import (
    DecoderBlock,
    EncoderBlock,
    MoE,
    MultiHeadAttention,
    PositionalEmbedding,
    PositionwiseFFN,
    RMSNormalization,
    RoutingStatistics,
)
from keras_transformer.layers import masks

# The model class the builders return (`models`) and the losses, metrics and
# learning-rate schedule that the recipes compile with (`training`) are
# registered when their modules are imported; importing them here lets
# `keras.saving.load_model` restore a saved, compiled model after
# `import keras_transformer` alone.
from keras_transformer import models, training  # noqa: F401

__version__ = "0.2.0"

__all__ = [
    "DecoderBlock",
    "EncoderBlock",
    "MoE",
    "MultiHeadAttention",
    "PositionalEmbedding",
    "PositionwiseFFN",
    "RMSNormalization",
    "RoutingStatistics",
    "masks",
]
