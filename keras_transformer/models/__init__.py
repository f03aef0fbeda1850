"""Model configuration, functional builders, and the cached forward pass of any model
assembled from the layers."""

from keras_transformer.models.builders import TransformerModel, build_causal_lm, build_transformer
from keras_transformer.models.cached_decoding import (
    CachedDecoding,
    DecodingTraits,
    StructuredDecoder,
    cached_decoder,
    decoding_traits,
    is_encoder_decoder,
)
from keras_transformer.models.config import TransformerConfig
from keras_transformer.models.graph import ModelStructure, read_structure
from keras_transformer.models.lora import enable_lora
from keras_transformer.models.precision import float32_copy
from keras_transformer.models.pretrained import from_keras_hub, import_preset
from keras_transformer.models.quantization import quantize

__all__ = [
    "CachedDecoding",
    "DecodingTraits",
    "ModelStructure",
    "StructuredDecoder",
    "TransformerConfig",
    "TransformerModel",
    "build_causal_lm",
    "build_transformer",
    "cached_decoder",
    "decoding_traits",
    "enable_lora",
    "float32_copy",
    "from_keras_hub",
    "import_preset",
    "is_encoder_decoder",
    "quantize",
    "read_structure",
]
