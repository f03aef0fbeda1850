"""keras_transformer: reusable Keras 3 layers for the Transformer."""

import os as _os
import sys as _sys

if _sys.argv and _os.path.basename(_sys.argv[0]) == "keras-transformer":
    # The command line: TensorFlow's start-up notices filtered out (`--verbose`
    # keeps them); this runs before Keras imports TensorFlow.
    from keras_transformer._console import quiet_tensorflow

    quiet_tensorflow(verbose="--verbose" in _sys.argv)

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
