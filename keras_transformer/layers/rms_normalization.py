"""Root-mean-square layer normalization (Zhang & Sennrich, 2019)."""

import keras
from keras import ops

from keras_transformer.layers.validation import check_floating


@keras.saving.register_keras_serializable(package="keras_transformer")
class RMSNormalization(keras.layers.Layer):
    """`x / sqrt(mean(x²) + ε) · γ` over the last axis, with no mean and no bias.

    The statistics are computed in float32 whatever the compute dtype, so
    float16/bfloat16 inputs cannot overflow the sum of squares; the output is
    cast back to the compute dtype. Equal to `keras.layers.RMSNormalization`
    (Keras ≥ 3.9) with the same `epsilon`, and available on older Keras.

    Args:
        epsilon: float, added to the mean square.
        **kwargs: base `keras.layers.Layer` arguments.

    Call arguments:
        inputs: `(..., D)` floating-point tensor.

    Returns:
        A tensor of the shape of `inputs`; the padding mask passes through.

    Example:

    >>> norm = RMSNormalization()
    >>> keras.ops.shape(norm(keras.random.normal((2, 5, 8))))
    (2, 5, 8)
    """

    def __init__(self, epsilon=1e-6, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon
        self.supports_masking = True

    def build(self, inputs_shape):
        if inputs_shape[-1] is None:
            raise ValueError(
                "The last dimension of the inputs must be known. "
                f"Received: inputs_shape={tuple(inputs_shape)}"
            )
        self.scale = self.add_weight(
            name="scale", shape=(inputs_shape[-1],), initializer="ones", autocast=False
        )
        self.built = True

    def call(self, inputs):
        check_floating("inputs", inputs)
        x = ops.cast(inputs, "float32")
        mean_square = ops.mean(ops.square(x), axis=-1, keepdims=True)
        x = x * ops.rsqrt(mean_square + self.epsilon) * ops.cast(self.scale, "float32")
        return ops.cast(x, self.compute_dtype)

    def compute_output_shape(self, inputs_shape):
        return tuple(inputs_shape)

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}
