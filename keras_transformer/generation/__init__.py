"""Decoding: cached greedy, beam and sampling searches, and the text-to-text `Translator`.

`greedy_translate` and `greedy_generate` are the uncached references (the whole model re-run at every
step) that the cached searches are tested against.
"""

from keras_transformer.generation.decoding import DecodingConfig
from keras_transformer.generation.greedy import greedy_generate, greedy_translate
from keras_transformer.generation.search import (
    beam_search,
    filter_logits,
    greedy_search,
    length_penalty,
    sample,
)
from keras_transformer.generation.steppers import CausalLMStepper, EncoderDecoderStepper, Stepper
from keras_transformer.generation.text_generator import TextGenerator
from keras_transformer.generation.translator import Translator, load_translator

__all__ = [
    "CausalLMStepper",
    "DecodingConfig",
    "EncoderDecoderStepper",
    "Stepper",
    "TextGenerator",
    "Translator",
    "beam_search",
    "filter_logits",
    "greedy_search",
    "greedy_generate",
    "greedy_translate",
    "length_penalty",
    "load_translator",
    "sample",
]
