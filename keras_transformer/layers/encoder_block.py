"""The Transformer encoder block: self-attention and a feed-forward network."""

import keras

from keras_transformer.layers import masks as masks_lib
from keras_transformer.layers.block_base import TransformerBlockBase
from keras_transformer.layers.validation import check_floating


@keras.saving.register_keras_serializable(package="keras_transformer")
class EncoderBlock(TransformerBlockBase):
    """One encoder layer of the Transformer.

    Self-attention over the whole sequence, then a position-wise feed-forward
    network, each wrapped in dropout, a residual connection and layer
    normalization:

        post-LN (the paper, default): x = norm(x + dropout(sublayer(x)))
        pre-LN (`norm_first=True`):   x = x + dropout(sublayer(norm(x)))

    Args:
        num_heads: int, number of attention heads.
        ffn_dim: int, inner width of the feed-forward network.
        dropout: float in [0, 1), dropout on the attention probabilities and
            on each sub-layer's output before the residual (0.1 in the paper).
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
            only.
        rotary_max_wavelength: float, the rotary embeddings' longest wavelength.
        rotary_scaling: None or a Hugging Face `rope_scaling` dict
            (`keras_transformer.layers.rotary`).
        sliding_window: int or None; an encoder's self-attention is not
            causal, so it ignores it.
        **kwargs: base `keras.layers.Layer` arguments.

    Call arguments:
        inputs: `(B, T, D)` input sequence, floating point (other dtypes: TypeError).
        padding_mask: `(B, T)` bool, True at real tokens. Defaults to the
            implicit Keras mask of `inputs` (from `PositionalEmbedding`).
        attention_mask: `(B, T, T)` bool, True where token `t` may attend to
            token `s`; merged with the padding mask.
        return_attention_scores: bool, whether to also return the attention
            probabilities `(B, N, T, T)`.
        training: bool, whether dropout is active.

    Returns:
        `(B, T, D)`, or `(outputs, scores)` with `return_attention_scores=True`.

    Example:

    >>> block = EncoderBlock(num_heads=4, ffn_dim=128)
    >>> keras.ops.shape(block(keras.random.normal((2, 10, 64))))
    (2, 10, 64)
    """

    def build(self, inputs_shape):
        self._check_sequence_shape("inputs", inputs_shape)
        self._self_attention = self._make_attention("self_attention")
        self._self_attention.build(inputs_shape)
        self._self_attention_norm = self._make_norm("self_attention_norm")
        self._self_attention_norm.build(inputs_shape)
        self._self_attention_dropout = self._make_dropout()
        self._feedforward = self._make_feedforward()
        self._feedforward.build(inputs_shape)
        self._feedforward_norm = self._make_norm("feedforward_norm")
        self._feedforward_norm.build(inputs_shape)
        self._feedforward_dropout = self._make_dropout()
        self.built = True

    def call(
        self,
        inputs,
        padding_mask=None,
        attention_mask=None,
        return_attention_scores=False,
        training=None,
        mask=None,
    ):
        # `mask` is the implicit Keras mask of `inputs`; an explicit one wins.
        padding_mask = masks_lib.first_mask(padding_mask, mask)
        check_floating("inputs", inputs)
        length = inputs.shape[1]
        masks_lib.check_mask_shape("padding_mask", padding_mask, (None, length))
        masks_lib.check_mask_shape("attention_mask", attention_mask, (None, length, length))
        x = inputs

        # Self-attention block.
        residual = x
        x = self._pre_norm(x, self._self_attention_norm)
        x = self._self_attention(
            x,
            query_mask=padding_mask,
            attention_mask=attention_mask,
            return_attention_scores=return_attention_scores,
            training=training,
        )
        if return_attention_scores:
            x, scores = x
        x = self._add_residual(
            x, residual, self._self_attention_dropout, self._self_attention_norm, training
        )

        # Feed-forward block.
        residual = x
        x = self._pre_norm(x, self._feedforward_norm)
        x = self._feedforward(x, padding_mask=padding_mask, training=training)
        x = self._add_residual(
            x, residual, self._feedforward_dropout, self._feedforward_norm, training
        )

        return (x, scores) if return_attention_scores else x

    def compute_output_shape(self, inputs_shape):
        return tuple(inputs_shape)

    def compute_output_spec(self, inputs, *args, return_attention_scores=False, **kwargs):
        output = keras.KerasTensor(inputs.shape, dtype=self.compute_dtype)
        if not return_attention_scores:
            return output
        batch, length = inputs.shape[0], inputs.shape[1]
        scores = keras.KerasTensor(
            (batch, self.num_heads, length, length), dtype=self.compute_dtype
        )
        return output, scores
