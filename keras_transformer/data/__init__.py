"""Data: the built-in corpus (tokenizers, pipelines and datasets follow)."""

from keras_transformer.data.builtin_corpus import english_number, generate_pairs, spanish_number

__all__ = ["english_number", "generate_pairs", "spanish_number"]
