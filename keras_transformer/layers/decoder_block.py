"""The Transformer decoder block: causal self-attention, cross-attention, FFN."""

import keras

from keras_transformer.layers import masks as masks_lib
from keras_transformer.layers.block_base import TransformerBlockBase
from keras_transformer.layers.validation import check_floating


@keras.saving.register_keras_serializable(package="keras_transformer")
class DecoderBlock(TransformerBlockBase):
    """One decoder layer of the Transformer, with or without an encoder.

    Masked (causal) self-attention, then cross-attention over the encoder
    output (only when the block is built with one: the encoder-decoder case;
    without, it is a decoder-only block), then a position-wise feed-forward
    network. Each sub-layer has dropout, a residual connection and layer
    normalization, post-LN by default, pre-LN with `norm_first=True`.

    Whether the block has cross-attention is decided by the first call (or
    `build`): with an `encoder_sequence` it has, without it has not. Saved
    models remember it.

    Decoding step by step, the block keeps a key/value cache: the
    self-attention cache `(B, 2, L, N, H)` (zeros from
    `initial_self_attention_cache`) is updated at `self_attention_cache_index`
    each step, and the cross-attention keys/values are computed once by
    `compute_cross_attention_cache(encoder_sequence)` and reused.

    Args:
        num_heads: int, number of attention heads.
        ffn_dim: int, inner width of the feed-forward network.
        dropout: float in [0, 1), dropout on the attention probabilities and
            on each sub-layer's output before the residual.
        norm_first: bool, pre-LN instead of post-LN.
        layer_norm_epsilon: float, epsilon of the layer normalizations.
        activation: activation of the feed-forward network, or `"swiglu"` /
            `"geglu"` for a gated one.
        head_dim: int or None, size of each attention head; None means
            `embed_dim // num_heads`.
        kernel_initializer: initializer of the dense kernels.
        bias_initializer: initializer of the dense biases.
        moe: None for a dense feed-forward network, or a dict of `MoE`
            arguments (at least `num_experts`; `expert_dim` defaults to
            `ffn_dim`) for a sparse mixture of experts, e.g.
            `{"num_experts": 8, "top_k": 2}`.
        norm: `"layer"` (LayerNormalization, the paper) or `"rms"` (RMSNorm,
            float32 statistics).
        num_key_value_heads: int or None, grouped-query attention (each
            key/value head shared by `num_heads / num_key_value_heads` query
            heads; 1 = multi-query); the caches shrink by that factor.
        rotary: bool, rotary position embeddings in self-attention (use
            `PositionalEmbedding(positions="rotary")` with it).
        use_bias: bool, biases in the attention and feed-forward
            projections; `"qkv"`: in the query, key and value projections
            only (Qwen2's).
        rotary_max_wavelength: float, the rotary embeddings' longest
            wavelength (a preset's `rope_theta`; 10,000 by default).
        rotary_scaling: None or a Hugging Face `rope_scaling` dict (linear,
            or Llama 3.1's `"llama3"`; see `keras_transformer.layers.rotary`).
        sliding_window: int or None, causal self-attention sees only the
            `sliding_window` most recent positions (Mistral's).
        **kwargs: base `keras.layers.Layer` arguments.

    Call arguments:
        decoder_sequence: `(B, T, D)` decoder input, floating point (like
            `encoder_sequence`; other dtypes: TypeError).
        encoder_sequence: `(B, S, D_e)` encoder output, or None (decoder-only,
            or when `cross_attention_cache` is given).
        decoder_padding_mask: `(B, T)` bool, True at real decoder tokens.
            Defaults to the implicit Keras mask of `decoder_sequence`.
        decoder_attention_mask: `(B, T, T)` (with a cache: `(B, T, L)`) bool,
            merged with the causal mask.
        encoder_padding_mask: `(B, S)` bool, True at real encoder tokens.
            Defaults to the implicit Keras mask of `encoder_sequence`; pass it
            explicitly with `cross_attention_cache`.
        encoder_attention_mask: `(B, T, S)` bool, for cross-attention.
        use_causal_mask: bool, True (default) for causal self-attention.
        self_attention_cache: `(B, 2, L, N, H)` or None.
        self_attention_cache_index: int or scalar int tensor, the position of
            the first token of `decoder_sequence` in the cache; or a `(B,)`
            int tensor, one position per row.
        cross_attention_cache: `(B, 2, S, N, H)` or None, from
            `compute_cross_attention_cache`.
        return_attention_scores: bool, whether to also return a dict of
            attention probabilities: `"self_attention"` `(B, N, T, T or L)` and,
            with an encoder, `"cross_attention"` `(B, N, T, S)`.
        training: bool, whether dropout is active.

    Returns:
        `(B, T, D)` outputs. With `self_attention_cache`: `(outputs,
        self_attention_cache)`, plus `cross_attention_cache` when the block has
        cross-attention (computed from `encoder_sequence` on the first step
        when no cross-attention cache was given). With `return_attention_scores=True` the scores dict is
        appended last.

    Example:

    >>> block = DecoderBlock(num_heads=4, ffn_dim=128)
    >>> target = keras.random.normal((2, 9, 64))
    >>> memory = keras.random.normal((2, 13, 64))
    >>> keras.ops.shape(block(target, memory))
    (2, 9, 64)
    """

    def build(self, decoder_sequence_shape, encoder_sequence_shape=None):
        self._check_sequence_shape("decoder_sequence", decoder_sequence_shape)
        self._self_attention = self._make_attention("self_attention")
        self._self_attention.build(decoder_sequence_shape)
        self._self_attention_norm = self._make_norm("self_attention_norm")
        self._self_attention_norm.build(decoder_sequence_shape)
        self._self_attention_dropout = self._make_dropout()
        self._cross_attention = None
        if encoder_sequence_shape is not None:
            self._check_sequence_shape("encoder_sequence", encoder_sequence_shape)
            self._cross_attention = self._make_attention("cross_attention", self_attention=False)
            self._cross_attention.build(decoder_sequence_shape, encoder_sequence_shape)
            self._cross_attention_norm = self._make_norm("cross_attention_norm")
            self._cross_attention_norm.build(decoder_sequence_shape)
            self._cross_attention_dropout = self._make_dropout()
        self._feedforward = self._make_feedforward()
        self._feedforward.build(decoder_sequence_shape)
        self._feedforward_norm = self._make_norm("feedforward_norm")
        self._feedforward_norm.build(decoder_sequence_shape)
        self._feedforward_dropout = self._make_dropout()
        self.built = True

    @property
    def has_cross_attention(self):
        """Whether the block was built with an encoder (cross-attention)."""
        return self._cross_attention is not None

    def initial_self_attention_cache(self, batch_size, max_length):
        """A zero self-attention cache `(B, 2, max_length, N, H)`."""
        return self._self_attention.initial_cache(batch_size, max_length)

    def compute_cross_attention_cache(self, encoder_sequence):
        """Cross-attention keys/values `(B, 2, S, N, H)`, computed once."""
        if not self.has_cross_attention:
            raise ValueError(
                f"DecoderBlock '{self.name}' was built without an encoder, so it "
                "has no cross-attention to cache."
            )
        return self._cross_attention.compute_key_value_cache(encoder_sequence)

    def call(
        self,
        decoder_sequence,
        encoder_sequence=None,
        *,
        decoder_padding_mask=None,
        decoder_attention_mask=None,
        encoder_padding_mask=None,
        encoder_attention_mask=None,
        use_causal_mask=True,
        self_attention_cache=None,
        self_attention_cache_index=None,
        cross_attention_cache=None,
        return_attention_scores=False,
        training=None,
        mask=None,
        decoder_sequence_mask=None,
        encoder_sequence_mask=None,
    ):
        # Implicit Keras masks: `mask` when `decoder_sequence` is the only
        # tensor argument, `<argument>_mask` when there are several.
        decoder_padding_mask = masks_lib.first_mask(
            decoder_padding_mask, decoder_sequence_mask, mask
        )
        encoder_padding_mask = masks_lib.first_mask(
            encoder_padding_mask, encoder_sequence_mask
        )
        check_floating("decoder_sequence", decoder_sequence)
        check_floating("encoder_sequence", encoder_sequence)
        masks_lib.check_mask_shape("decoder_padding_mask", decoder_padding_mask,
                                   (None, decoder_sequence.shape[1]))
        if encoder_sequence is not None:
            masks_lib.check_mask_shape("encoder_padding_mask", encoder_padding_mask,
                                       (None, encoder_sequence.shape[1]))
        has_encoder = encoder_sequence is not None or cross_attention_cache is not None
        if has_encoder != self.has_cross_attention:
            built = "with" if self.has_cross_attention else "without"
            given = "an" if has_encoder else "no"
            raise ValueError(
                f"DecoderBlock '{self.name}' was built {built} an encoder sequence "
                f"(cross-attention) but was called with {given} `encoder_sequence` "
                "or `cross_attention_cache`."
            )
        x = decoder_sequence
        scores = {}

        # Causal self-attention block.
        residual = x
        x = self._pre_norm(x, self._self_attention_norm)
        x, *rest = _as_tuple(self._self_attention(
            x,
            query_mask=decoder_padding_mask,
            attention_mask=decoder_attention_mask,
            use_causal_mask=use_causal_mask,
            cache=self_attention_cache,
            cache_index=self_attention_cache_index,
            return_attention_scores=return_attention_scores,
            training=training,
        ))
        if self_attention_cache is not None:
            self_attention_cache = rest.pop(0)
        if return_attention_scores:
            scores["self_attention"] = rest[0]
        x = self._add_residual(
            x, residual, self._self_attention_dropout, self._self_attention_norm, training
        )

        # Cross-attention block.
        if self.has_cross_attention:
            if cross_attention_cache is None and self_attention_cache is not None:
                # First cached step: project the encoder's keys/values once,
                # attend through them and return them for the next steps.
                cross_attention_cache = self.compute_cross_attention_cache(encoder_sequence)
            residual = x
            x = self._pre_norm(x, self._cross_attention_norm)
            x, *rest = _as_tuple(self._cross_attention(
                x,
                encoder_sequence if cross_attention_cache is None else None,
                query_mask=decoder_padding_mask,
                value_mask=encoder_padding_mask,
                attention_mask=encoder_attention_mask,
                cache=cross_attention_cache,
                return_attention_scores=return_attention_scores,
                training=training,
            ))
            if return_attention_scores:
                scores["cross_attention"] = rest[-1]
            x = self._add_residual(
                x, residual, self._cross_attention_dropout, self._cross_attention_norm,
                training,
            )

        # Feed-forward block.
        residual = x
        x = self._pre_norm(x, self._feedforward_norm)
        x = self._feedforward(x, padding_mask=decoder_padding_mask, training=training)
        x = self._add_residual(
            x, residual, self._feedforward_dropout, self._feedforward_norm, training
        )

        outputs = (x,)
        if self_attention_cache is not None:
            outputs += (self_attention_cache,)
            if self.has_cross_attention:
                outputs += (cross_attention_cache,)
        if return_attention_scores:
            outputs += (scores,)
        return outputs[0] if len(outputs) == 1 else outputs

    def compute_output_shape(self, decoder_sequence_shape, encoder_sequence_shape=None):
        return tuple(decoder_sequence_shape)

    def compute_output_spec(
        self,
        decoder_sequence,
        encoder_sequence=None,
        *,
        self_attention_cache=None,
        cross_attention_cache=None,
        return_attention_scores=False,
        **kwargs,
    ):
        def spec(shape):
            return keras.KerasTensor(tuple(shape), dtype=self.compute_dtype)

        outputs = (spec(decoder_sequence.shape),)
        batch, length = decoder_sequence.shape[0], decoder_sequence.shape[1]
        if cross_attention_cache is not None:
            encoder_length = cross_attention_cache.shape[2]
        elif encoder_sequence is not None:
            encoder_length = encoder_sequence.shape[1]
        if self_attention_cache is not None:
            outputs += (spec(self_attention_cache.shape),)
            if self.has_cross_attention:
                heads = self._cross_attention._num_kv_heads, self._cross_attention._head_dim
                cross_shape = (batch, 2, encoder_length, *heads)
                outputs += (spec(cross_shape),)
        if return_attention_scores:
            key_length = (
                length if self_attention_cache is None else self_attention_cache.shape[2]
            )
            scores = {"self_attention": spec((batch, self.num_heads, length, key_length))}
            if self.has_cross_attention:
                scores["cross_attention"] = spec(
                    (batch, self.num_heads, length, encoder_length)
                )
            outputs += (scores,)
        return outputs[0] if len(outputs) == 1 else outputs


def _as_tuple(outputs):
    """An attention layer's outputs as a tuple (one tensor alone is not one)."""
    return outputs if isinstance(outputs, tuple) else (outputs,)
