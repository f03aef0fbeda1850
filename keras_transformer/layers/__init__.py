"""Keras 3 layers of the Transformer, written with `keras.ops`."""

from keras_transformer.layers.block_options import BlockOptions
from keras_transformer.layers.decoder_block import DecoderBlock
from keras_transformer.layers.encoder_block import EncoderBlock
from keras_transformer.layers.moe import MoE
from keras_transformer.layers.multi_head_attention import MultiHeadAttention
from keras_transformer.layers.positional_embedding import PositionalEmbedding
from keras_transformer.layers.positionwise_ffn import PositionwiseFFN
from keras_transformer.layers.replica_losses import ReplicaLocalLosses
from keras_transformer.layers.rms_normalization import RMSNormalization
from keras_transformer.layers.routing_statistics import RoutingStatistics

__all__ = [
    "BlockOptions",
    "DecoderBlock",
    "EncoderBlock",
    "MoE",
    "MultiHeadAttention",
    "PositionalEmbedding",
    "PositionwiseFFN",
    "ReplicaLocalLosses",
    "RMSNormalization",
    "RoutingStatistics",
]
