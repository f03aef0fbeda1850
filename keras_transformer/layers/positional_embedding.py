"""Token embedding scaled by √d plus sinusoidal or learned positions."""

import math

import keras
import numpy as np
from keras import ops

from keras_transformer._keras_compat import tracking_unlocked
from keras_transformer.layers import quantization as quantization_lib
from keras_transformer.layers.block_options import POSITIONS
from keras_transformer.layers.positions import position_ids
from keras_transformer.layers.validation import check_positive_int, check_token_ids

# A model's schemes (`block_options.POSITIONS`): with "rotary" the blocks rotate
# queries and keys and nothing is added here. "none" is the older name of that.
_POSITIONS = (*POSITIONS, "none")


def sinusoidal_positions(positions, embed_dim):
    """The paper's position encoding for integer `positions` of any shape.

    `PE[pos, 2i] = sin(pos / 10000^(2i/d))`, `PE[pos, 2i+1] = cos(pos / 10000^(2i/d))`
    with sines and cosines interleaved as in the paper (not concatenated in
    halves). Returns a float32 tensor of shape `positions.shape + (embed_dim,)`
    (`(T, embed_dim)` for positions `(T,)`).
    """
    positions = ops.cast(positions, "float32")
    dims = ops.arange(embed_dim, dtype="int32")
    pair = ops.cast(ops.floor_divide(dims, 2) * 2, "float32")  # 2i for dims 2i, 2i+1
    inverse_frequency = ops.exp(pair * (-math.log(10000.0) / embed_dim))  # [d]
    angles = ops.expand_dims(positions, -1) * inverse_frequency
    is_even = ops.equal(ops.mod(dims, 2), 0)
    return ops.where(is_even, ops.sin(angles), ops.cos(angles))  # [..., d]


@keras.saving.register_keras_serializable(package="keras_transformer")
class PositionalEmbedding(keras.layers.Layer):
    """Token embedding times √embed_dim plus a position encoding.

    `output[b, t] = E[token_ids[b, t]] · √embed_dim + P[start_index + t]`, where
    `P` is the sinusoidal encoding of the paper (`sin(pos/10000^(2i/d))` at even
    dimensions, `cos` at odd ones) or a learned `(max_length, embed_dim)` table.

    With `mask_zero=True`, token id 0 is padding: the layer produces the
    padding mask `token_ids != 0` (True = real token), which Keras passes on to
    the following layers. A vocabulary whose padding is another id (BART's
    `<pad>` = 1) sets `padding_id`; one whose every id is a real token
    (GPT-2's) sets `mask_zero=False` and no `padding_id`: no mask.

    Args:
        vocab_size: int, number of token ids.
        max_length: int, the longest sequence (counting `start_index`) that the
            layer accepts. Longer inputs raise a ValueError when their length
            is known when the layer is called (eagerly, or symbolically with a
            fixed length). Learned positions cannot be looked up past it.
        embed_dim: int, width of the embeddings.
        positions: `"sinusoidal"` (default), `"learned"`, or `"rotary"` (no
            added positions: the blocks rotate queries and keys, `rotary=True`;
            `"none"` is the same).
        scale: bool, whether to multiply the token embedding by √embed_dim.
        mask_zero: bool, whether token id 0 is padding and produces a mask
            (when `padding_id` is None).
        padding_id: int or None. When set, the id that is padding and
            produces the mask `token_ids != padding_id` (whatever
            `mask_zero` says).
        embeddings_initializer: initializer of the token (and learned
            position) embeddings. The default, normal with stddev
            `embed_dim^-0.5`, keeps the scaled token embedding near unit size.
        reverse_compute_dtype: dtype of the tied output projection's matmul
            (`reverse=True`). None (default): the layer's compute dtype, as
            Keras's `Dense` and keras-hub's `ReversibleEmbedding` do, with the
            result cast to float32 — under `mixed_bfloat16` the vocabulary-wide
            matmul, often a third of a small model's FLOPs, runs on the
            bfloat16 units. `"float32"`: inputs and weights in float32 too
            (slower under mixed precision, a little more exact).
        quantization: None, or `"int8"`: the token table is held as int8
            with one scale per token (`quantize("int8")` converts a built
            layer; `model.quantize("int8")` calls it). The lookup dequantizes
            the rows it takes; the tied output projection quantizes each
            hidden state to int8 too and multiplies in int8 with int32 sums,
            as Keras's int8 `Dense` does.
        **kwargs: base `keras.layers.Layer` arguments.

    Call arguments:
        token_ids: `(B, T)` integer token ids (float, bool or string ids: a
            TypeError); with `reverse=True`, `(B, T, embed_dim)` hidden states.
        start_index: int or scalar int tensor, the position of the first token
            (for step-by-step decoding: step t is called with `start_index=t`),
            or a `(B,)` int tensor, row b's first position (a pool of
            sequences at different positions, stepped together).
        reverse: bool. If True, the layer is the output projection tied to the
            token embedding: it returns the float32 logits `hidden · Eᵀ`,
            `(B, T, vocab_size)`, multiplied in `reverse_compute_dtype`.

    Returns:
        `(B, T, embed_dim)` embeddings, with the padding mask `(B, T)` attached
        when the layer has a padding id; with `reverse=True`, float32 logits.

    Example:

    >>> layer = PositionalEmbedding(vocab_size=100, max_length=32, embed_dim=16)
    >>> ids = keras.ops.array([[5, 7, 9, 0]])
    >>> keras.ops.shape(layer(ids))
    (1, 4, 16)
    >>> keras.ops.convert_to_numpy(layer.compute_mask(ids))
    array([[ True,  True,  True, False]])
    >>> keras.ops.shape(layer(keras.ops.array([[9]]), start_index=2))  # position 2
    (1, 1, 16)
    """

    def __init__(
        self,
        vocab_size,
        max_length,
        embed_dim,
        positions="sinusoidal",
        scale=True,
        mask_zero=True,
        embeddings_initializer=None,
        padding_id=None,
        reverse_compute_dtype=None,
        quantization=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.quantization = quantization_lib.check_mode(quantization)
        check_positive_int("vocab_size", vocab_size)
        check_positive_int("max_length", max_length)
        check_positive_int("embed_dim", embed_dim)
        if positions not in _POSITIONS:
            raise ValueError(
                f"`positions` must be one of {_POSITIONS}. Received: positions={positions!r}"
            )
        self.vocab_size = vocab_size
        self.max_length = max_length
        self.embed_dim = embed_dim
        self.positions = positions
        self.scale = scale
        if padding_id is not None and (isinstance(padding_id, bool) or
                                       not 0 <= int(padding_id) < vocab_size):
            raise ValueError(f"`padding_id` must be None or an id in [0, {vocab_size}). "
                             f"Received: padding_id={padding_id!r}")
        self.mask_zero = mask_zero
        self.padding_id = None if padding_id is None else int(padding_id)
        self.reverse_compute_dtype = reverse_compute_dtype
        if embeddings_initializer is None:
            embeddings_initializer = keras.initializers.RandomNormal(
                stddev=embed_dim**-0.5
            )
        self.embeddings_initializer = keras.initializers.get(embeddings_initializer)
        self.supports_masking = self.mask_id is not None

    def build(self, token_ids_shape=None):
        if self.quantization == "int8":
            self._build_int8_table()
        else:
            # Not autocast: the tied output projection casts it itself.
            self.token_embeddings = self.add_weight(
                name="token_embeddings",
                shape=(self.vocab_size, self.embed_dim),
                initializer=self.embeddings_initializer,
                autocast=False,
            )
        if self.positions == "learned":
            self.position_embeddings = self.add_weight(
                name="position_embeddings",
                shape=(self.max_length, self.embed_dim),
                initializer=self.embeddings_initializer.__class__.from_config(
                    self.embeddings_initializer.get_config()
                ),
            )
        self.built = True

    def _build_int8_table(self):
        self.token_embeddings = self.add_weight(
            name="token_embeddings", shape=(self.vocab_size, self.embed_dim),
            initializer="zeros", dtype="int8", trainable=False, autocast=False)
        self.token_embeddings_scale = self.add_weight(
            name="token_embeddings_scale", shape=(self.vocab_size,), initializer="ones",
            dtype="float32", trainable=False, autocast=False)

    def quantize(self, mode=None, type_check=True, config=None):
        """Holds the token table as int8, one scale per token (`mode="int8"`).

        `table ≈ int8_table / scale[:, None]`, `scale = 127 / max|row|`.
        Called by `model.quantize("int8")`; other modes raise
        `NotImplementedError` (which `model.quantize` reports as a warning).
        """
        if mode != "int8":
            raise NotImplementedError(
                f"PositionalEmbedding quantizes to int8 only. Received: mode={mode!r}")
        if self.quantization == "int8":
            return
        if not self.built:
            raise ValueError(f"Layer '{self.name}' must be built before `quantize()`.")
        table = ops.convert_to_numpy(self.token_embeddings).astype("float32")
        largest = np.maximum(np.abs(table).max(axis=1), 1e-12)
        scale = (127.0 / largest).astype("float32")
        values = np.clip(np.round(table * scale[:, None]), -127, 127).astype("int8")
        with tracking_unlocked(self):
            del self.token_embeddings
            self._build_int8_table()
        self.token_embeddings.assign(values)
        self.token_embeddings_scale.assign(scale)
        self.quantization = "int8"

    @property
    def adds_positions(self):
        """Whether the layer adds position encodings (False for `"rotary"`/`"none"`)."""
        return self.positions in ("sinusoidal", "learned")

    def _token_rows(self, token_ids):
        rows = ops.take(self.token_embeddings, token_ids, axis=0)
        if self.quantization == "int8":
            scale = ops.take(self.token_embeddings_scale, token_ids, axis=0)
            rows = ops.cast(rows, "float32") / ops.expand_dims(scale, -1)
        return ops.cast(rows, self.compute_dtype)

    def _int8_logits(self, hidden):
        """`hidden · tableᵀ` in int8 with int32 sums: hidden quantized per token."""
        hidden = ops.cast(hidden, "float32")
        largest = ops.maximum(ops.max(ops.abs(hidden), axis=-1, keepdims=True), 1e-12)
        hidden_scale = 127.0 / largest
        quantized = ops.cast(ops.clip(ops.round(hidden * hidden_scale), -127, 127), "int8")
        sums = ops.matmul(quantized, ops.transpose(self.token_embeddings))  # int32
        return ops.cast(sums, "float32") / (hidden_scale * self.token_embeddings_scale)

    def call(self, token_ids, start_index=0, reverse=False):
        if reverse and self.quantization == "int8":
            return self._int8_logits(token_ids)
        if reverse:
            dtype = self.reverse_compute_dtype or self.compute_dtype
            hidden = ops.cast(token_ids, dtype)
            logits = ops.matmul(hidden, ops.transpose(ops.cast(self.token_embeddings, dtype)))
            return ops.cast(logits, "float32")
        if len(token_ids.shape) != 2:
            raise ValueError(
                "`token_ids` must have shape (batch, length). "
                f"Received: token_ids.shape={tuple(token_ids.shape)}"
            )
        check_token_ids("token_ids", token_ids)
        self._check_length(token_ids.shape[1], start_index)
        token_ids = ops.cast(token_ids, "int32")
        embeddings = self._token_rows(token_ids)  # [B, T, d]
        if self.scale:
            embeddings = embeddings * ops.cast(math.sqrt(self.embed_dim), embeddings.dtype)
        if not self.adds_positions:
            return embeddings
        positions = position_ids(start_index, ops.shape(token_ids)[1])  # [1 or B, T]
        if self.positions == "learned":
            position_embeddings = ops.take(self.position_embeddings, positions, axis=0)
        else:
            position_embeddings = sinusoidal_positions(positions, self.embed_dim)
        return embeddings + ops.cast(position_embeddings, embeddings.dtype)

    def _check_length(self, length, start_index=0):
        """Raises when a statically known length goes past `max_length`."""
        if (
            isinstance(length, int)
            and isinstance(start_index, int)
            and start_index + length > self.max_length
        ):
            raise ValueError(
                f"The sequence is longer than `max_length={self.max_length}` of layer "
                f"'{self.name}'. Received: length={length}, start_index={start_index}. "
                "Truncate the input or build the layer with a larger `max_length`."
            )

    @property
    def mask_id(self):
        """The id the layer masks as padding (`padding_id`, else 0 with
        `mask_zero`), or None."""
        if self.padding_id is not None:
            return self.padding_id
        return 0 if self.mask_zero else None

    def compute_mask(self, token_ids, mask=None):
        if len(token_ids.shape) == 3:  # reverse: hidden states keep their mask
            return mask
        if self.mask_id is None:
            return None
        return ops.not_equal(token_ids, self.mask_id)

    def compute_output_spec(self, token_ids, start_index=0, reverse=False):
        if reverse:
            shape = (*token_ids.shape[:-1], self.vocab_size)
            return keras.KerasTensor(shape, dtype="float32")
        shape = self.compute_output_shape(token_ids.shape)
        return keras.KerasTensor(shape, dtype=self.compute_dtype)

    def compute_output_shape(self, token_ids_shape):
        if len(token_ids_shape) == 2:
            self._check_length(token_ids_shape[1])
        return (*token_ids_shape, self.embed_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "vocab_size": self.vocab_size,
                "max_length": self.max_length,
                "embed_dim": self.embed_dim,
                "positions": self.positions,
                "scale": self.scale,
                "mask_zero": self.mask_zero,
                "padding_id": self.padding_id,
                "reverse_compute_dtype": self.reverse_compute_dtype,
                "quantization": self.quantization,
                "embeddings_initializer": keras.initializers.serialize(
                    self.embeddings_initializer
                ),
            }
        )
        return config
