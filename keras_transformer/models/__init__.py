"""Model configuration and functional builders."""

from keras_transformer.models.builders import build_causal_lm, build_transformer
from keras_transformer.models.config import TransformerConfig

__all__ = ["TransformerConfig", "build_causal_lm", "build_transformer"]
