"""What EncoderBlock and DecoderBlock share: arguments, sub-layers, residuals."""

import keras

from keras_transformer.layers import activations as activations_lib
from keras_transformer.layers import quantization as quantization_lib
from keras_transformer.layers.block_options import BlockOptions
from keras_transformer.layers.moe import MoE
from keras_transformer.layers.multi_head_attention import MultiHeadAttention
from keras_transformer.layers.positionwise_ffn import PositionwiseFFN
from keras_transformer.layers.rms_normalization import RMSNormalization


class TransformerBlockBase(keras.layers.Layer):
    """Base of the Transformer blocks (not used on its own).

    Holds the arguments both blocks take, makes their sub-layers, and applies
    the residual connection with layer normalization after it (post-LN, as in
    the paper) or before the sub-layer (pre-LN, `norm_first=True`):

        post-LN: x = norm(x + dropout(sublayer(x)))
        pre-LN:  x = x + dropout(sublayer(norm(x)))

    A pre-LN stack needs one more normalization after its last block; the
    model builders add it.

    The feed-forward sub-layer is a `PositionwiseFFN`, or with `moe={...}` a
    sparse mixture of experts `MoE(expert_dim=ffn_dim, **moe)`.

    The options of current decoders (the paper's choices stay the defaults):
    `norm="rms"` (RMSNorm instead of LayerNorm), `activation="swiglu"` or
    `"geglu"` (gated feed-forward networks and experts),
    `num_key_value_heads` (grouped-query attention, multi-query at 1) and
    `rotary=True` (rotary position embeddings in self-attention; pair it with
    `PositionalEmbedding(positions="rotary")`, with `rotary_max_wavelength`
    and `rotary_scaling`), `use_bias` (False for Llama's projections, `"qkv"`
    for Qwen2's) and `sliding_window` (Mistral's). The options, their allowed
    values and their checks are `keras_transformer.layers.BlockOptions`.

    `quantization="int8"` builds the attention and feed-forward projections
    with int8 kernels (`keras_transformer.layers.quantization`); an `MoE`'s
    experts are not quantized.
    """

    def __init__(
        self,
        num_heads,
        ffn_dim,
        dropout=0.1,
        norm_first=False,
        layer_norm_epsilon=1e-5,
        activation="relu",
        head_dim=None,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        moe=None,
        norm="layer",
        num_key_value_heads=None,
        rotary=False,
        quantization=None,
        use_bias=True,
        rotary_max_wavelength=10000,
        rotary_scaling=None,
        sliding_window=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.quantization = quantization_lib.check_mode(quantization)
        # Every option is checked in one place, `BlockOptions`.
        options = BlockOptions(
            num_heads=num_heads, ffn_dim=ffn_dim, dropout=dropout, norm_first=norm_first,
            norm=norm, layer_norm_epsilon=layer_norm_epsilon, activation=activation,
            num_key_value_heads=num_key_value_heads, rotary=bool(rotary), moe=moe,
            use_bias=use_bias, rotary_max_wavelength=rotary_max_wavelength,
            rotary_scaling=rotary_scaling, sliding_window=sliding_window)
        self.num_heads = options.num_heads
        self.ffn_dim = options.ffn_dim
        self.dropout = options.dropout
        self.norm_first = options.norm_first
        self.norm = options.norm
        self.layer_norm_epsilon = options.layer_norm_epsilon
        self._gated, self.activation = activations_lib.resolve(options.activation)
        self.num_key_value_heads = options.num_key_value_heads
        self.rotary = options.rotary
        self.use_bias = options.use_bias
        self.rotary_max_wavelength = options.rotary_max_wavelength
        self.rotary_scaling = options.rotary_scaling
        self.sliding_window = options.sliding_window
        self.moe = None if moe is None else dict(moe)
        self.head_dim = head_dim
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.supports_masking = True

    def _check_sequence_shape(self, name, shape):
        if len(shape) != 3 or shape[-1] is None:
            raise ValueError(
                f"`{name}` must have shape (batch, length, embed_dim) with a known "
                f"embed_dim. Received: {name}.shape={tuple(shape)}"
            )

    @property
    def _activation_config(self):
        return activations_lib.serialize(self.activation, self._gated)

    def _make_attention(self, name, self_attention=True):
        return MultiHeadAttention(
            num_heads=self.num_heads,
            head_dim=self.head_dim,
            dropout=self.dropout,
            num_key_value_heads=self.num_key_value_heads,
            rotary=self.rotary and self_attention,
            rotary_max_wavelength=self.rotary_max_wavelength,
            rotary_scaling=self.rotary_scaling,
            sliding_window=self.sliding_window if self_attention else None,
            use_bias=self.use_bias,
            kernel_initializer=self._clone(self.kernel_initializer),
            bias_initializer=self._clone(self.bias_initializer),
            quantization=self.quantization,
            dtype=self.dtype_policy,
            name=name,
        )

    def _make_feedforward(self):
        if self.moe is not None:
            # Named after the block, so each block's routing statistics get
            # their own name in `fit`'s logs.
            arguments = {"expert_dim": self.ffn_dim, "activation": self._activation_config}
            arguments.update(self.moe)
            return MoE(**arguments, dtype=self.dtype_policy, name=f"{self.name}_moe")
        return PositionwiseFFN(
            hidden_dim=self.ffn_dim,
            activation=self._activation_config,
            use_bias=self.use_bias is True,
            kernel_initializer=self._clone(self.kernel_initializer),
            bias_initializer=self._clone(self.bias_initializer),
            quantization=self.quantization,
            dtype=self.dtype_policy,
            name="feedforward",
        )

    def _make_norm(self, name):
        if self.norm == "rms":
            return RMSNormalization(
                epsilon=self.layer_norm_epsilon, dtype=self.dtype_policy, name=name
            )
        return keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon, dtype=self.dtype_policy, name=name
        )

    def _make_dropout(self):
        return keras.layers.Dropout(self.dropout, dtype=self.dtype_policy)

    @staticmethod
    def _clone(initializer):
        return initializer.__class__.from_config(initializer.get_config())

    def _pre_norm(self, x, norm):
        """The sub-layer's input: normalized first in a pre-LN block."""
        return norm(x) if self.norm_first else x

    def _add_residual(self, x, residual, dropout, norm, training):
        """Dropout, residual connection, then normalization in a post-LN block."""
        x = dropout(x, training=training) + residual
        return x if self.norm_first else norm(x)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_heads": self.num_heads,
                "ffn_dim": self.ffn_dim,
                "dropout": self.dropout,
                "norm_first": self.norm_first,
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "activation": self._activation_config,
                "head_dim": self.head_dim,
                "kernel_initializer": keras.initializers.serialize(
                    self.kernel_initializer
                ),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
                "moe": self.moe,
                "norm": self.norm,
                "num_key_value_heads": self.num_key_value_heads,
                "rotary": self.rotary,
                "use_bias": self.use_bias,
                "rotary_max_wavelength": self.rotary_max_wavelength,
                "rotary_scaling": self.rotary_scaling,
                "sliding_window": self.sliding_window,
                "quantization": self._quantization_config(),
            }
        )
        return config

    def _quantization_config(self):
        """The mode the attention projections have (the FFN's must agree)."""
        layers = [getattr(self, "_self_attention", None),
                  getattr(self, "_cross_attention", None)]
        if isinstance(getattr(self, "_feedforward", None), PositionwiseFFN):
            layers.append(self._feedforward)
        layers = [layer for layer in layers if layer is not None]
        if not layers:
            return self.quantization
        modes = {layer.get_config()["quantization"] for layer in layers}
        if len(modes) != 1:
            raise ValueError(f"Block '{self.name}' has sub-layers quantized differently "
                             f"({sorted(map(str, modes))}); quantize all of them or none.")
        return modes.pop()
