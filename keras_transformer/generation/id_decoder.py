"""Cached decoding of token ids on any Keras backend, compiled by XLA.

`Translator` and `TextGenerator` are TensorFlow modules (text in, text out,
exported as SavedModels). `IdDecoder` is the same cached search on ids alone,
for every backend: under JAX the whole search (encoder, cache, `while_loop`)
is one `jax.jit` function of the model's weights; under TensorFlow, one
`tf.function(jit_compile=True)`; under PyTorch it runs eagerly.

    decoder = IdDecoder(model, max_length=40, decoding=DecodingConfig("beam"))
    ids, scores = decoder(source_ids)            # encoder–decoder
    ids, scores = decoder(prompt_ids, prompt_lengths)  # decoder-only
"""

import keras
import numpy as np
from keras import ops

from keras_transformer.generation.core import SearchCore, SearchFront
from keras_transformer.generation.steppers import model_variables


def compile_for_backend(function, model, compile=True):
    """`function` (tensors in, tensors out, reading `model`'s weights) compiled
    by XLA: `tf.function(jit_compile=True)` under TensorFlow; under JAX a
    `jax.jit` of the function with the weights passed in (stateless); as it is
    under PyTorch or with `compile=False`."""
    backend = keras.backend.backend()
    if not compile or backend not in ("tensorflow", "jax"):
        return function
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(function, jit_compile=True)
    import jax

    variables = model_variables(model)

    def stateless(values, *args):
        with keras.StatelessScope(state_mapping=list(zip(variables, values))):
            return function(*args)

    jitted = jax.jit(stateless)
    return lambda *args: jitted([v.value for v in variables], *args)


class IdDecoder(SearchFront):
    """Decodes ids with a model's key/value cache, compiled once per batch shape.

    Args:
        model: a model with the cached-decoding protocol (any model stacked
            from the package's layers, `read_structure` reads it).
        max_length: int, positions to fill after position 0.
        decoding: a `DecodingConfig` (default: greedy).
        compile: bool, whether to compile the search with XLA (TensorFlow,
            JAX; ignored under PyTorch).
        source_length_bucket: int or None (default). Encoder–decoder
            sources are padded (with the padding id) to a multiple of this, so that XLA
            compiles once per batch size and padded width rather than once
            per width given (at the cost of the padding's work). None:
            sources are decoded at the width given.
        special_ids: a `SpecialIds` (default: the model's, else the
            package's reserved ids): start, end, padding, suppressed ids.

    Call arguments:
        inputs: encoder–decoder: source ids `(B, S)` int, right-padded with
            the padding id (`special_ids.pad`).
            Decoder-only: prompts `(B, P)` int, each starting with its first
            token (position 0).
        prompt_lengths: decoder-only only: `(B,)` int, each prompt's length
            (default: P for every row).
        seed: int, the sampling seed (default: the config's).

    Returns:
        `(ids, scores)` as NumPy arrays: `(B, max_length)` int32 ids of
        positions 1 … max_length (padding after the end id), `(B,)` float32
        log-probabilities of the chosen tokens.
    """

    def __init__(self, model, max_length, decoding=None, compile=True,
                 source_length_bucket=None, special_ids=None):
        self.model = model
        self.source_length_bucket = source_length_bucket
        self.core = SearchCore(model, max_length, decoding, special_ids=special_ids)
        self.compile = compile
        self._compiled = None

    @property
    def max_length(self):
        return self.core.max_length

    def _search(self, inputs, prompt_lengths, seed):
        return self.core.search(inputs, prompt_lengths, seed)

    def _build(self):
        return compile_for_backend(self._search, self.model, self.compile)

    def _pad_source(self, inputs):
        """Sources padded to the next multiple of the bucket (within the model's length)."""
        bucket = self.source_length_bucket
        if not bucket or inputs.ndim != 2 or inputs.shape[1] % bucket == 0:
            return inputs
        width = -(-inputs.shape[1] // bucket) * bucket
        limit = getattr(self.stepper.decoder, "max_length", None)
        if limit is not None and width > limit:
            return inputs
        return np.pad(inputs, ((0, 0), (0, width - inputs.shape[1])),
                      constant_values=self.special_ids.pad)

    def __call__(self, inputs, prompt_lengths=None, seed=None):
        inputs = np.asarray(inputs, "int32")
        if self.core.is_encoder_decoder:
            if prompt_lengths is not None:
                raise ValueError("`prompt_lengths` is for decoder-only models; this model "
                                 "has an encoder.")
            inputs = self._pad_source(inputs)
        elif prompt_lengths is None:
            prompt_lengths = np.full((len(inputs),), inputs.shape[1], "int32")
        else:
            prompt_lengths = np.asarray(prompt_lengths, "int32")
        if self._compiled is None:
            self._compiled = self._build()
        seed = np.int32(self.decoding.seed if seed is None else seed)
        ids, scores = self._compiled(inputs, prompt_lengths, seed)
        return ops.convert_to_numpy(ids), ops.convert_to_numpy(scores)
