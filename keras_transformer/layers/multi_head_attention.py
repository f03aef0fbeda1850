"""Multi-head scaled dot-product attention with masks and a key/value cache."""

import math

import keras
from keras import ops

from keras_transformer.layers import masks as masks_lib
from keras_transformer.layers import positions as positions_lib
from keras_transformer.layers import quantization as quantization_lib
from keras_transformer.layers.rotary import apply_rotary, check_scaling
from keras_transformer.layers.validation import (
    check_floating,
    check_key_value_heads,
    check_positive_int,
    check_rate,
)

# Added to the scores of masked keys (in float32) before the softmax. Finite, so
# a row whose keys are all masked never turns into NaN.
_MASKED_SCORE = -1e9


@keras.saving.register_keras_serializable(package="keras_transformer")
class MultiHeadAttention(keras.layers.Layer):
    """Multi-head attention: `softmax(QKᵀ/√d_k + mask)·V`, for self and cross.

    The queries, keys and values are projected into `num_heads` heads of size
    `head_dim`, attention runs in each head with the softmax in float32, and
    the heads are concatenated and projected back to the query's width
    `embed_dim`. `embed_dim = num_heads × head_dim`: `head_dim` defaults to
    `embed_dim // num_heads` (not to `embed_dim` as in the TensorFlow
    tutorial), so the layer costs the same whatever the number of heads.

    The weights have the same names, shapes and order as
    `keras.layers.MultiHeadAttention(num_heads, key_dim=head_dim)`, so weights
    can be copied from one to the other with `set_weights(get_weights())`.

    Masks follow one convention: boolean, **True means attend**. The padding
    masks of `query` and `value`, an explicit `attention_mask` and the causal
    mask are merged with a logical AND. A query whose keys are all masked gets
    an all-zero attention row (its output is the output projection's bias),
    never NaN.

    Args:
        num_heads: int, number of attention heads.
        head_dim: int or None, size of each head. None means
            `embed_dim // num_heads`, which must then divide exactly.
        dropout: float in [0, 1), dropout rate on the attention probabilities.
        use_bias: bool, whether the projections have biases; or `"qkv"`:
            the query, key and value projections have biases and the output
            projection has none (Qwen2's).
        num_key_value_heads: int or None. Grouped-query attention: the keys
            and values have this many heads, each shared by
            `num_heads / num_key_value_heads` query heads (1: multi-query).
            None: `num_heads` (ordinary multi-head attention). The cache holds
            only the key/value heads. The weights then match
            `keras.layers.GroupQueryAttention`'s.
        rotary: bool, whether to rotate queries and keys by their positions
            (rotary position embeddings, `rotary.apply_rotary`): the query at
            `cache_index + t` and the keys at their own positions. For
            self-attention; a precomputed cross-attention cache is refused.
        rotary_max_wavelength: float, the rotary embeddings' longest
            wavelength (10,000 in the paper; a preset's `rope_theta`).
        rotary_scaling: None, or a dict rescaling the rotary frequencies for
            long contexts, as a Hugging Face config's `rope_scaling`:
            `{"rope_type": "linear", "factor": f}` or Llama 3.1's
            `{"rope_type": "llama3", ...}` (see `keras_transformer.layers.rotary`).
        sliding_window: int or None. With `use_causal_mask`, each query
            attends to its `sliding_window` most recent positions only,
            itself included (Mistral's sliding-window attention).
        quantization: None, or `"int8"`: the query, key, value and output
            projections are built with int8 kernels (see
            `keras_transformer.layers.quantization`; `model.quantize("int8")`
            sets it too).
        kernel_initializer: initializer of the projection kernels.
        bias_initializer: initializer of the projection biases.
        **kwargs: base `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Call arguments:
        query: `(B, T, D)` queries, floating point like `value` (other
            dtypes: TypeError; masks must be bool or integer, see `masks`).
        value: `(B, S, D_v)` keys/values for cross-attention, or None for
            self-attention (keys and values are then `query`).
        query_mask: `(B, T)` bool padding mask of `query`. Defaults to the
            implicit Keras mask of `query`.
        value_mask: `(B, S)` bool padding mask of the keys. Defaults to the
            implicit Keras mask of `value`; in self-attention without a cache,
            to `query_mask`. With a cache, S is the cache length.
        attention_mask: `(B, T, S)` bool mask, True where query `t` may
            attend to key `s`.
        use_causal_mask: bool. If True, query `t` attends only to keys
            `s <= t + cache_index` (`cache_index` is 0 without a cache).
        cache: None, or a `(B, 2, S, K, H)` tensor (K = `num_key_value_heads`)
            holding the projected keys
            (`cache[:, 0]`) and values (`cache[:, 1]`).
            - With `cache_index` (self-attention decoding): the keys and
              values of `query` (or `value` if given) are written into the
              cache at `cache_index`, and the queries attend to the whole
              updated cache. Positions not yet written must be masked, which
              `use_causal_mask=True` does.
            - Without `cache_index` (cross-attention decoding): the cache
              holds keys and values computed once by
              `compute_key_value_cache(value)`; `value` must be None. Its
              batch B_c may divide the query's B: then each group of
              B / B_c consecutive query rows (a sentence's beams) attends to
              one cache row, which is read once for the group.
        cache_index: int or scalar int tensor, the position of the first query
            in the cache; or a `(B,)` int tensor, row b's own position (a pool
            of sequences at different positions, stepped together: the
            causal mask and the rotary angles follow each row's position;
            each `cache_index[b] + T` must be at most the cache length).
        return_attention_scores: bool, whether to also return the attention
            probabilities `(B, N, T, S)`.
        training: bool, whether dropout is active.

    Returns:
        `(B, T, D)` attention output. With a cache, `(output, updated_cache)`.
        With `return_attention_scores=True`, the scores are appended:
        `(output, scores)` or `(output, updated_cache, scores)`.

    Example:

    >>> layer = MultiHeadAttention(num_heads=4)
    >>> x = keras.random.normal((2, 10, 64))      # decoder states
    >>> memory = keras.random.normal((2, 7, 64))  # encoder output
    >>> keras.ops.shape(layer(x, use_causal_mask=True))  # causal self-attention
    (2, 10, 64)
    >>> padding = keras.ops.array([[True] * 7, [True] * 5 + [False] * 2])
    >>> out, scores = MultiHeadAttention(num_heads=4)(
    ...     x, memory, value_mask=padding, return_attention_scores=True)
    >>> keras.ops.shape(scores)
    (2, 4, 10, 7)
    """

    def __init__(
        self,
        num_heads,
        head_dim=None,
        dropout=0.0,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        num_key_value_heads=None,
        rotary=False,
        rotary_max_wavelength=10000,
        quantization=None,
        rotary_scaling=None,
        sliding_window=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.quantization = quantization_lib.check_mode(quantization)
        check_positive_int("num_heads", num_heads)
        if head_dim is not None:
            check_positive_int("head_dim", head_dim)
        check_rate("dropout", dropout)
        check_key_value_heads(num_heads, num_key_value_heads)
        self.num_key_value_heads = num_key_value_heads
        self.rotary = bool(rotary)
        self.rotary_max_wavelength = rotary_max_wavelength
        self.rotary_scaling = check_scaling(rotary_scaling)
        if sliding_window is not None:
            check_positive_int("sliding_window", sliding_window)
        self.sliding_window = sliding_window
        if use_bias not in (True, False, "qkv"):
            raise ValueError("`use_bias` must be True, False or 'qkv' (query, key and value "
                             f"projections only). Received: use_bias={use_bias!r}")
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.dropout = dropout
        self.use_bias = use_bias
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.supports_masking = True

    def build(self, query_shape, value_shape=None):
        embed_dim = query_shape[-1]
        if len(query_shape) != 3 or embed_dim is None:
            raise ValueError(
                "`query` must have shape (batch, length, embed_dim) with a known "
                f"embed_dim. Received: query_shape={tuple(query_shape)}"
            )
        if value_shape is not None and len(value_shape) != 3:
            raise ValueError(
                "`value` must have shape (batch, length, dim). "
                f"Received: value_shape={tuple(value_shape)}"
            )
        if self.head_dim is None and embed_dim % self.num_heads != 0:
            raise ValueError(
                "`embed_dim` (the last dimension of `query`) must be divisible by "
                "`num_heads`, or `head_dim` must be given. "
                f"Received: embed_dim={embed_dim}, num_heads={self.num_heads}"
            )
        self._head_dim = self.head_dim or embed_dim // self.num_heads
        if self.rotary and self._head_dim % 2:
            raise ValueError(
                f"Rotary embeddings need an even head size. Received: head_dim={self._head_dim}"
            )
        value_shape = tuple(query_shape if value_shape is None else value_shape)
        heads = (None, self.num_heads, self._head_dim)
        kv_heads = (None, self._num_kv_heads, self._head_dim)
        self._query_dense = self._projection("btd,dnh->btnh", heads, "nh", "query")
        self._query_dense.build(query_shape)
        self._key_dense = self._projection("bsd,dnh->bsnh", kv_heads, "nh", "key")
        self._key_dense.build(value_shape)
        self._value_dense = self._projection("bsd,dnh->bsnh", kv_heads, "nh", "value")
        self._value_dense.build(value_shape)
        self._output_dense = self._projection(
            "btnh,nhd->btd", (None, embed_dim), "d", "attention_output",
            use_bias=self.use_bias is True)
        self._output_dense.build((*query_shape[:2], self.num_heads, self._head_dim))
        self._dropout_layer = keras.layers.Dropout(self.dropout, dtype=self.dtype_policy)
        self.built = True

    @property
    def _num_kv_heads(self):
        return self.num_key_value_heads or self.num_heads

    def _projection(self, equation, output_shape, bias_axes, name, use_bias=None):
        use_bias = bool(self.use_bias) if use_bias is None else use_bias
        projection = keras.layers.EinsumDense(
            equation,
            output_shape=output_shape,
            bias_axes=bias_axes if use_bias else None,
            # A clone per projection: one initializer instance reused would
            # give the query, key and value kernels the same values.
            kernel_initializer=self.kernel_initializer.__class__.from_config(
                self.kernel_initializer.get_config()
            ),
            bias_initializer=self.bias_initializer,
            dtype=quantization_lib.projection_policy(self, self.quantization),
            name=name,
        )
        # Projections act on each token alone: the padding mask stays valid.
        projection.supports_masking = True
        return projection

    def compute_key_value_cache(self, value):
        """Projects `value` `(B, S, D_v)` into a `(B, 2, S, K, H)` cache.

        Cross-attention computes this once per source sequence and passes it
        as `cache` (with no `cache_index`) at every decoding step.
        """
        return ops.stack([self._key_dense(value), self._value_dense(value)], axis=1)

    def initial_cache(self, batch_size, max_length):
        """A zero `(B, 2, max_length, K, H)` self-attention cache (K key/value heads)."""
        return ops.zeros(
            (batch_size, 2, max_length, self._num_kv_heads, self._head_dim),
            dtype=self.compute_dtype,
        )

    def call(
        self,
        query,
        value=None,
        *,
        query_mask=None,
        value_mask=None,
        attention_mask=None,
        use_causal_mask=False,
        cache=None,
        cache_index=None,
        return_attention_scores=False,
        training=None,
        mask=None,
    ):
        # `mask` is the implicit Keras mask of `query` when it is the only
        # tensor argument; with several, Keras fills `query_mask`/`value_mask`.
        query_mask = masks_lib.first_mask(query_mask, mask)
        check_floating("query", query)
        check_floating("value", value)
        precomputed = cache is not None and cache_index is None
        if precomputed and value is not None:
            raise ValueError(
                "With a precomputed cross-attention `cache` (no `cache_index`), "
                "`value` must be None: the keys and values come from the cache."
            )
        if value is None and cache is None:
            value_mask = masks_lib.first_mask(value_mask, query_mask)
        if precomputed and self.rotary:
            raise ValueError(
                "Rotary embeddings are for self-attention: this layer has `rotary=True` "
                "but was given a precomputed cross-attention `cache`."
            )
        if value is None and not precomputed:
            value = query

        position = 0 if cache_index is None else cache_index
        query_heads = self._query_dense(query)  # [B, T, N, H]
        rows, length = ops.shape(query_heads)[0], ops.shape(query_heads)[1]
        if self.rotary:
            query_heads = apply_rotary(query_heads, position, self.rotary_max_wavelength,
                                       self.rotary_scaling)
        if precomputed:
            key_heads, value_heads = cache[:, 0], cache[:, 1]  # [B_c, S, K, H]
            # The cache may serve groups of consecutive query rows (the beams
            # of one sentence): B = g·B_c. The groups' queries attend side by
            # side, [B_c, g·T, N, H], so each source's keys/values are read
            # once, not once per beam (g = 1 without beams).
            query_heads, query_mask, attention_mask = _group_queries(
                query_heads, query_mask, attention_mask, ops.shape(key_heads)[0],
                ops.shape(key_heads)[1])
        else:
            key_heads = self._key_dense(value)  # [B, S, K, H]
            value_heads = self._value_dense(value)  # [B, S, K, H]
            if self.rotary:
                key_heads = apply_rotary(key_heads, position, self.rotary_max_wavelength,
                                         self.rotary_scaling)
            if cache is not None:
                update = ops.stack([key_heads, value_heads], axis=1)  # [B, 2, T, K, H]
                cache = _write_cache(cache, update, cache_index)
                key_heads, value_heads = cache[:, 0], cache[:, 1]  # [B, S, K, H]
        # Which form of attention: `_attend` where the scores are asked for or
        # attention dropout is active; `_attend_one_query` for one query per
        # row (a decoding step) where the backend fuses elementwise work;
        # the backend's fused kernel (`_attend_fused`) otherwise.
        materialized = return_attention_scores or self._dropout_active(training)
        one_query = query_heads.shape[1] == 1 and not materialized and _fuses_elementwise()
        if self._num_kv_heads != self.num_heads and not one_query:
            # Grouped-query heads share each K/V head (`_attend_one_query`
            # reads them without the copy).
            groups = self.num_heads // self._num_kv_heads
            key_heads = ops.repeat(key_heads, groups, axis=2)  # [B, S, N, H]
            value_heads = ops.repeat(value_heads, groups, axis=2)

        # Causal self-attention with no other mask: the kernel's own causal
        # mode, no `(T, S)` mask built.
        causal_only = (
            use_causal_mask
            and self.sliding_window is None
            and value is query
            and cache is None
            and query_mask is None
            and value_mask is None
            and attention_mask is None
        )
        attention_mask = masks_lib.merge_attention_masks(
            ops.shape(query_heads)[1],
            ops.shape(key_heads)[1],
            query_mask=query_mask,
            value_mask=value_mask,
            attention_mask=attention_mask,
            use_causal_mask=use_causal_mask,
            causal_offset=0 if cache_index is None else cache_index,
            sliding_window=self.sliding_window,
        )
        if one_query:
            output = self._attend_one_query(query_heads, key_heads, value_heads,
                                            attention_mask)
        elif materialized or not _fused_kernel_supports(self.compute_dtype):
            output, scores = self._attend(
                query_heads, key_heads, value_heads, attention_mask, training
            )
        else:
            output = self._attend_fused(
                query_heads, key_heads, value_heads, attention_mask, causal_only
            )
        if precomputed:  # [B_c, g·T, N, H] → [B, T, N, H]
            output = ops.reshape(output, (rows, length, self.num_heads, self._head_dim))
            if return_attention_scores:  # [B_c, N, g·T, S] → [B, N, T, S]
                sources = ops.shape(scores)[0]
                scores = ops.reshape(scores, (sources, self.num_heads, -1, length,
                                              ops.shape(scores)[-1]))
                scores = ops.reshape(ops.transpose(scores, (0, 2, 1, 3, 4)),
                                     (rows, self.num_heads, length, ops.shape(scores)[-1]))
        output = self._output_dense(output)  # [B, T, D]

        outputs = (output,)
        if cache is not None:
            outputs += (cache,)
        if return_attention_scores:
            outputs += (scores,)
        return outputs[0] if len(outputs) == 1 else outputs

    def _dropout_active(self, training):
        return self.dropout > 0 and bool(training)

    def _attend_fused(self, query_heads, key_heads, value_heads, mask, causal_only=False):
        """`_attend` through `keras.ops.dot_product_attention`, without scores.

        The backend's fused kernel (cuDNN flash attention under JAX or
        PyTorch on a GPU, when the shapes and dtypes allow it; XLA's fusion
        elsewhere) never writes the `(B, N, T, S)` probabilities to memory.
        The semantics are `_attend`'s: the backends run the softmax in float32,
        and a query with no visible key gets a zero row. Such a query is shown
        every key inside the kernel (an all-masked row is NaN in some
        kernels) and its output is then replaced by zeros.
        """
        scale = 1.0 / math.sqrt(self._head_dim)
        if mask is None or causal_only:
            return ops.dot_product_attention(
                query_heads, key_heads, value_heads, scale=scale, is_causal=causal_only
            )
        visible = ops.any(mask, axis=-1, keepdims=True)  # [B, T, 1]
        kernel_mask = ops.logical_or(mask, ops.logical_not(visible))
        # The full [B, 1, T, S]: cuDNN refuses masks broadcast over T or B.
        batch, queries = ops.shape(query_heads)[0], ops.shape(query_heads)[1]
        kernel_mask = ops.broadcast_to(
            ops.expand_dims(kernel_mask, 1), (batch, 1, queries, ops.shape(key_heads)[1])
        )
        output = ops.dot_product_attention(
            query_heads, key_heads, value_heads, mask=kernel_mask, scale=scale
        )  # [B, T, N, H]
        visible = ops.broadcast_to(visible, (batch, queries, 1))
        visible = ops.expand_dims(visible, -1)  # [B, T, 1, 1]
        return ops.where(visible, output, ops.zeros_like(output))

    def _attend_one_query(self, query_heads, key_heads, value_heads, mask):
        """`_attend`'s output for one query per row, as products and sums.

        `query_heads` `(B, 1, N, H)`; `key_heads`, `value_heads` `(B, S, K, H)`
        with K key/value heads (K divides N; not repeated). In a decoding
        step the keys and values are the cache, and reading them is the
        step's cost: written as elementwise products summed over an axis,
        XLA streams the cache once in its own `(S, K, H)` layout, where a
        dot product of `(B, N)` batches first copies it into that order
        (twice the time on CPU). The sums run in float32.
        """
        batch, heads, size = ops.shape(query_heads)[0], self.num_heads, self._head_dim
        groups = heads // self._num_kv_heads
        scale = 1.0 / math.sqrt(size)
        # [B, 1, K, g, H]: query head n = k·g + j reads key/value head k.
        query = ops.reshape(ops.cast(query_heads, "float32") * scale,
                            (batch, 1, self._num_kv_heads, groups, size))
        keys = ops.expand_dims(ops.cast(key_heads, "float32"), 3)  # [B, S, K, 1, H]
        scores = ops.sum(query * keys, axis=-1)  # [B, S, K, g]
        if mask is not None:
            mask = ops.reshape(mask, (ops.shape(mask)[0], -1, 1, 1))  # [B, S, 1, 1]
            scores = ops.where(mask, scores, _MASKED_SCORE)
        probabilities = ops.softmax(scores, axis=1)
        if mask is not None:
            # A query with no visible key attends to nothing (not uniformly).
            probabilities = ops.where(mask, probabilities, 0.0)
        values = ops.expand_dims(ops.cast(value_heads, "float32"), 3)  # [B, S, K, 1, H]
        output = ops.sum(ops.expand_dims(probabilities, -1) * values, axis=1)  # [B, K, g, H]
        output = ops.reshape(output, (batch, 1, heads, size))
        return ops.cast(output, self.compute_dtype)

    def _attend(self, query_heads, key_heads, value_heads, mask, training):
        """Scaled dot-product attention, materialized: returns the probabilities.

        `mask`: `(B or 1, T, S)` bool or None. Used when the scores are asked
        for or attention dropout is active; `_attend_fused` otherwise.
        """
        query_heads = ops.multiply(
            query_heads, ops.cast(1.0 / math.sqrt(self._head_dim), query_heads.dtype)
        )
        scores = ops.einsum("btnh,bsnh->bnts", query_heads, key_heads)  # [B, N, T, S]
        # The softmax runs in float32 so that float16/bfloat16 cannot overflow.
        scores = ops.cast(scores, "float32")
        if mask is not None:
            mask = ops.expand_dims(mask, 1)  # [B, 1, T, S]
            scores = ops.where(mask, scores, _MASKED_SCORE)
        probabilities = ops.softmax(scores, axis=-1)
        if mask is not None:
            # A query with no visible key attends to nothing (not uniformly).
            probabilities = ops.where(mask, probabilities, 0.0)
        probabilities = ops.cast(probabilities, self.compute_dtype)
        dropped = self._dropout_layer(probabilities, training=training)
        output = ops.einsum("bnts,bsnh->btnh", dropped, value_heads)  # [B, T, N, H]
        return output, probabilities

    def compute_output_shape(self, query_shape, value_shape=None):
        return tuple(query_shape)

    def compute_output_spec(
        self,
        query,
        value=None,
        *,
        cache=None,
        cache_index=None,
        return_attention_scores=False,
        **kwargs,
    ):
        output_shape = self.compute_output_shape(query.shape)
        outputs = (keras.KerasTensor(output_shape, dtype=self.compute_dtype),)
        if cache is not None:
            outputs += (keras.KerasTensor(cache.shape, dtype=self.compute_dtype),)
        if return_attention_scores:
            if cache is not None:
                key_length = cache.shape[2]
            else:
                key_length = (query if value is None else value).shape[1]
            scores_shape = (query.shape[0], self.num_heads, query.shape[1], key_length)
            outputs += (keras.KerasTensor(scores_shape, dtype=self.compute_dtype),)
        return outputs[0] if len(outputs) == 1 else outputs

    def compute_mask(self, inputs, previous_mask=None):
        return previous_mask

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_heads": self.num_heads,
                "head_dim": self.head_dim,
                "dropout": self.dropout,
                "use_bias": self.use_bias,
                "kernel_initializer": keras.initializers.serialize(
                    self.kernel_initializer
                ),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
                "num_key_value_heads": self.num_key_value_heads,
                "rotary": self.rotary,
                "rotary_max_wavelength": self.rotary_max_wavelength,
                "rotary_scaling": self.rotary_scaling,
                "sliding_window": self.sliding_window,
                "quantization": quantization_lib.mode_of(self, self._projections()),
            }
        )
        return config

    def _projections(self):
        return [getattr(self, name, None) for name in
                ("_query_dense", "_key_dense", "_value_dense", "_output_dense")]


def _write_cache(cache, update, cache_index):
    """`cache` `(B, 2, S, K, H)` with `update` `(B, 2, T, K, H)` written at
    positions `cache_index + t`: one slice for a shared index; a scatter of
    the `B·2·T` new rows for a `(B,)` index (each row at its own position),
    which XLA runs in place when the cache is a variable it updates."""
    if not positions_lib.is_per_row(cache_index):
        return ops.slice_update(cache, [0, 0, cache_index, 0, 0], update)
    rows, length = ops.shape(update)[0], ops.shape(update)[2]
    positions = positions_lib.position_ids(cache_index, length)  # [B, T]
    shape = (rows, 2, length)
    row = ops.broadcast_to(ops.arange(rows, dtype="int32")[:, None, None], shape)
    half = ops.broadcast_to(ops.arange(2, dtype="int32")[None, :, None], shape)
    position = ops.broadcast_to(positions[:, None, :], shape)
    indices = ops.reshape(ops.stack([row, half, position], axis=-1), (-1, 3))
    values = ops.reshape(update, (-1, *update.shape[3:]))  # [B·2·T, K, H]
    return ops.scatter_update(cache, indices, ops.cast(values, cache.dtype))


def _group_queries(query_heads, query_mask, attention_mask, sources, keys):
    """Queries `[B, T, N, H]` (and their masks) as `[sources, B/sources·T, N, H]`."""
    rows, length = ops.shape(query_heads)[0], ops.shape(query_heads)[1]
    heads, head_dim = query_heads.shape[2], query_heads.shape[3]
    query_heads = ops.reshape(query_heads, (sources, -1, heads, head_dim))
    if query_mask is not None:
        query_mask = ops.reshape(ops.broadcast_to(query_mask, (rows, length)), (sources, -1))
    if attention_mask is not None:
        attention_mask = ops.reshape(
            ops.broadcast_to(attention_mask, (rows, length, keys)), (sources, -1, keys))
    return query_heads, query_mask, attention_mask


def _fuses_elementwise():
    """Whether the backend compiles elementwise products and their sums into
    one pass (XLA: TensorFlow's `jit_compile` and JAX), where
    `_attend_one_query` is the faster form of a one-query step."""
    return keras.backend.backend() in ("tensorflow", "jax")


def _fused_kernel_supports(dtype):
    """Whether `keras.ops.dot_product_attention` runs `dtype` on this backend.

    JAX's XLA kernel multiplies float16 with float32 accumulation, which
    XLA's CPU backend refuses ('F16_F16_F32' under `jax.jit`).
    """
    if dtype == "float16" and keras.backend.backend() == "jax":
        import jax

        return jax.default_backend() != "cpu"
    return True
