"""Decoding: cached greedy, beam and sampling searches, and the text-to-text `Translator`.

The searches, the steppers and `IdDecoder` are `keras.ops` code and run under
every Keras backend. `Translator`, `TextGenerator` and `load_translator` (text
in, text out, exported as SavedModels) are TensorFlow modules: they, and
TensorFlow, are imported on first use.

`greedy_translate` and `greedy_generate` are the uncached references (the whole model re-run at every
step) that the cached searches are tested against.
"""

from keras_transformer.generation.id_decoder import IdDecoder
from keras_transformer.generation.core import SearchCore
from keras_transformer.generation.decoding import DecodingConfig
from keras_transformer.generation.reference_decoders import greedy_generate, greedy_translate
from keras_transformer.generation.search import (
    beam_search,
    filter_logits,
    greedy_search,
    length_penalty,
    sample,
)
from keras_transformer.generation.steppers import CausalLMStepper, EncoderDecoderStepper, Stepper

__all__ = [
    "CausalLMStepper",
    "DecodingConfig",
    "EncoderDecoderStepper",
    "IdDecoder",
    "SearchCore",
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

# TensorFlow modules, imported on first use (see the module docstring).
_TENSORFLOW_ONLY = {
    "TextGenerator": "keras_transformer.generation.text_generator",
    "Translator": "keras_transformer.generation.translator",
    "load_translator": "keras_transformer.generation.translator",
}


def __getattr__(name):
    if name in _TENSORFLOW_ONLY:
        import importlib

        return getattr(importlib.import_module(_TENSORFLOW_ONLY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
