"""keras_transformer: reusable Keras 3 layers for the Transformer."""

from keras_transformer.layers import (
    DecoderBlock,
    EncoderBlock,
    MoE,
    MultiHeadAttention,
    PositionalEmbedding,
    PositionwiseFFN,
    RoutingStatistics,
)
from keras_transformer.layers import masks

__version__ = "0.1.0"

__all__ = [
    "DecoderBlock",
    "EncoderBlock",
    "MoE",
    "MultiHeadAttention",
    "PositionalEmbedding",
    "PositionwiseFFN",
    "RoutingStatistics",
    "masks",
]
