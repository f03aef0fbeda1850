"""One decoding step at a time through a model's cached forward pass.

A *stepper* turns a model that implements the cached-decoding protocol
(`keras_transformer.models.cached_decoding`: every model assembled from the
package's layers does, whatever its layer names) into the functions every
search needs:

- `initial_state(...)`: the cache for a batch (for the encoder–decoder: the
  encoder runs once and each decoder block projects the encoder's
  keys/values once);
- `step(token_ids, index, state)`: `token_ids` `(B,)` at position `index`
  → float32 logits `(B, V)` and the updated state;
- `repeat(state, k)` / `gather(state, indices)`: for beam search.

The stepper only calls the model's `encode`, `initial_cache` and
`call_with_cache`: the forward pass belongs to the model. It is written in
`keras.ops`, so it steps under every Keras backend.
"""

import keras
from keras import ops

from keras_transformer import _deprecation
from keras_transformer.models.cached_decoding import (
    cached_decoder,
    decoding_traits,
    is_encoder_decoder,
)


def model_variables(model):
    """Every variable the decoding graph of `model` may read or write: its
    weights and its layers' metric state (an `MoE`'s routing statistics), so
    that a `tf.Module` holding them tracks all of them for export."""
    return (list(getattr(model, "variables", []))
            + list(getattr(model, "metrics_variables", [])))


def fit_axis(tensor, axis, size):
    """`tensor` cut or zero-padded to `size` along `axis` (a static shape)."""
    current = tensor.shape[axis]
    if current == size:
        return tensor
    if current > size:
        index = [slice(None)] * len(tensor.shape)
        index[axis] = slice(0, size)
        return tensor[tuple(index)]
    padding = [[0, 0]] * len(tensor.shape)
    padding[axis] = [0, size - current]
    return ops.pad(tensor, padding)


class Stepper:
    """Steps through any object with the cached-decoding protocol.

    Args:
        model: a model assembled from the package's layers, or an object
            with `initial_cache` and `call_with_cache` (and `encode`).
    """

    def __init__(self, model):
        self.model = model
        self.decoder = cached_decoder(model)
        self.max_length = getattr(self.decoder, "max_length", None)
        self.is_encoder_decoder = is_encoder_decoder(self.decoder)
        self.traits = decoding_traits(self.decoder)

    def initial_state(self, inputs, max_length):
        """The cache for `inputs`: source ids `(B, S)` for an encoder–decoder
        (encoded once here), the batch size for a decoder-only model."""
        if self.is_encoder_decoder:
            encoded = self.decoder.encode(inputs)
            batch_size = ops.shape(keras.tree.flatten(encoded)[0])[0]
            return self.decoder.initial_cache(batch_size, max_length, encoded)
        return self.decoder.initial_cache(inputs, max_length)

    def step(self, token_ids, index, state):
        logits, state = self.decoder.call_with_cache(token_ids[:, None], state, index)
        return ops.cast(logits[:, 0], "float32"), state

    def prefill(self, token_ids, state):
        """`state` with the prompts `token_ids` `(B, P)` written at positions
        `0 … P - 1` in one call (`call_with_cache` with `T = P`)."""
        _, state = self.decoder.call_with_cache(token_ids, state, 0)
        return state

    def step_with_attention(self, token_ids, index, state):
        """`step`, plus each decoder block's cross-attention `(B, N, S)`."""
        method = getattr(self.decoder, "call_with_cache_and_attention", None)
        if method is None:
            raise ValueError(f"{type(self.decoder).__name__} has no "
                             "`call_with_cache_and_attention`, so its attention cannot be "
                             "shown.")
        logits, state, attention = method(token_ids[:, None], state, index)
        return (ops.cast(logits[:, 0], "float32"), state,
                [scores[:, :, 0] for scores in attention])

    def repeat(self, state, k):
        """Each row of every state tensor repeated `k` times: `(B, ...)` → `(B·k, ...)`,
        except the source's entries (`DecodingTraits.static_cache_keys`), which
        stay one row per sentence for its `k` consecutive beams."""
        return self._map_rows(lambda t: ops.repeat(t, k, axis=0), state)

    def _map_rows(self, function, state):
        static = self.traits.static_cache_keys
        if static and isinstance(state, dict):
            return {key: value if key in static else keras.tree.map_structure(function, value)
                    for key, value in state.items()}
        return keras.tree.map_structure(function, state)

    def resize(self, state, length):
        """`state` with its position axes (`DecodingTraits.cache_length_axes`)
        cut or zero-padded to `length` positions; the rest unchanged."""
        axes = dict(self.traits.cache_length_axes)
        if not axes or not isinstance(state, dict):
            return state

        return {key: keras.tree.map_structure(lambda t, a=axes[key]: fit_axis(t, a, length),
                                              value)
                if key in axes else value for key, value in state.items()}

    def gather(self, state, indices):
        """The rows `indices` `(B·k,)` of every state tensor (beams that survive),
        except the source's entries, which `repeat` left one row per sentence
        (the surviving beams of a sentence stay that sentence's)."""
        return self._map_rows(lambda t: ops.take(t, indices, axis=0), state)


class EncoderDecoderStepper(Stepper):
    """A `Stepper` for an encoder–decoder model.

    `initial_state(source_ids, max_length)`: `source_ids` `(B, S)` int, 0 =
    padding.
    """

    def __init__(self, model):
        super().__init__(model)
        if not self.is_encoder_decoder:
            raise ValueError(f"EncoderDecoderStepper needs an encoder–decoder model; "
                             f"'{getattr(model, 'name', model)}' is decoder-only "
                             "(use CausalLMStepper).")

    @property
    def decoder_blocks(self):
        """Deprecated: the model's decoder blocks; use `read_structure(model).decoder.blocks`."""
        _deprecation.warn("EncoderDecoderStepper.decoder_blocks",
                          "keras_transformer.models.read_structure(model).decoder.blocks")
        return getattr(self.decoder, "decoder_blocks", [])

    def encode(self, source_ids):
        """What the model's `encode` returns for `source_ids`."""
        return self.decoder.encode(source_ids)


class CausalLMStepper(Stepper):
    """A `Stepper` for a decoder-only model: `initial_state(batch_size, max_length)`."""

    def __init__(self, model):
        super().__init__(model)
        if self.is_encoder_decoder:
            raise ValueError(f"CausalLMStepper needs a decoder-only model; "
                             f"'{getattr(model, 'name', model)}' has an encoder "
                             "(use EncoderDecoderStepper).")
