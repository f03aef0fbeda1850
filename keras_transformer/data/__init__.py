"""Data: the built-in corpus, the special token ids (tokenizers, pipelines and
datasets are submodules, imported on use: they need TensorFlow)."""

from keras_transformer.data.builtin_corpus import english_number, generate_pairs, spanish_number
from keras_transformer.data.special_tokens import SpecialIds, special_ids_of

__all__ = ["SpecialIds", "english_number", "generate_pairs", "spanish_number",
           "special_ids_of"]
