"""The position-wise feed-forward network: `max(0, xW₁+b₁)W₂+b₂` per token."""

import keras

from keras_transformer.layers import activations as activations_lib
from keras_transformer.layers import quantization as quantization_lib
from keras_transformer.layers.validation import check_floating, check_positive_int, check_rate


@keras.saving.register_keras_serializable(package="keras_transformer")
class PositionwiseFFN(keras.layers.Layer):
    """Two dense layers applied to each position on its own.

    `output = activation(x·W₁ + b₁)·W₂ + b₂`, with `activation="relu"` as in the
    paper. The output has the width of the input. Positions never mix, so the
    padding mask passes through unchanged.

    Args:
        hidden_dim: int, width of the inner layer (2048 in the base model).
        activation: activation of the inner layer (name or callable), or
            `"swiglu"` / `"geglu"` for a gated network
            `(act(x·W_g + b_g) ⊙ (x·W₁ + b₁))·W₂ + b₂` with SiLU / GELU (a
            third kernel, `gate_dense`).
        dropout: float in [0, 1), dropout on the inner activations.
        use_bias: bool, whether the two dense layers have biases.
        kernel_initializer: initializer of the kernels.
        bias_initializer: initializer of the biases.
        quantization: None, or `"int8"`: the dense layers are built with int8
            kernels (see `keras_transformer.layers.quantization`).
        **kwargs: base `keras.layers.Layer` arguments.

    Call arguments:
        inputs: `(..., D)` floating-point tensor (usually `(B, T, D)`; other
            dtypes: TypeError).
        padding_mask: accepted so that `MoE` and this layer are
            interchangeable; unused, since each position is transformed alone.
        training: bool, whether dropout is active.

    Returns:
        A tensor of the shape of `inputs`.

    Example:

    >>> ffn = PositionwiseFFN(hidden_dim=256)
    >>> keras.ops.shape(ffn(keras.random.normal((2, 10, 64))))
    (2, 10, 64)
    """

    def __init__(
        self,
        hidden_dim,
        activation="relu",
        dropout=0.0,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        quantization=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.quantization = quantization_lib.check_mode(quantization)
        check_positive_int("hidden_dim", hidden_dim)
        check_rate("dropout", dropout)
        self.hidden_dim = hidden_dim
        self.gated, self.activation = activations_lib.resolve(activation)
        self.dropout = dropout
        self.use_bias = use_bias
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.supports_masking = True

    def build(self, inputs_shape):
        width = inputs_shape[-1]
        if width is None:
            raise ValueError(
                "The last dimension of the inputs must be known. "
                f"Received: inputs_shape={tuple(inputs_shape)}"
            )
        inner_activation = None if self.gated else self.activation
        self._inner_dense = self._dense(self.hidden_dim, inner_activation, "inner_dense")
        self._inner_dense.build(inputs_shape)
        if self.gated:
            self._gate_dense = self._dense(self.hidden_dim, self.activation, "gate_dense")
            self._gate_dense.build(inputs_shape)
        self._dropout_layer = keras.layers.Dropout(self.dropout, dtype=self.dtype_policy)
        self._output_dense = self._dense(width, None, "output_dense")
        self._output_dense.build((*inputs_shape[:-1], self.hidden_dim))
        self.built = True

    def _dense(self, units, activation, name):
        return keras.layers.Dense(
            units,
            activation=activation,
            use_bias=self.use_bias,
            kernel_initializer=self.kernel_initializer.__class__.from_config(
                self.kernel_initializer.get_config()
            ),
            bias_initializer=self.bias_initializer,
            dtype=quantization_lib.projection_policy(self, self.quantization),
            name=name,
        )

    def call(self, inputs, padding_mask=None, training=None):
        check_floating("inputs", inputs)
        hidden = self._inner_dense(inputs)  # [..., hidden_dim]
        if self.gated:
            hidden = self._gate_dense(inputs) * hidden
        hidden = self._dropout_layer(hidden, training=training)
        return self._output_dense(hidden)  # [..., D]

    def compute_output_shape(self, inputs_shape):
        return tuple(inputs_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_dim": self.hidden_dim,
                "activation": activations_lib.serialize(self.activation, self.gated),
                "dropout": self.dropout,
                "use_bias": self.use_bias,
                "kernel_initializer": keras.initializers.serialize(
                    self.kernel_initializer
                ),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
                "quantization": quantization_lib.mode_of(self, self._projections()),
            }
        )
        return config

    def _projections(self):
        names = ("_inner_dense", "_gate_dense", "_output_dense")
        return [getattr(self, name, None) for name in names]
