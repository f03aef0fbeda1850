"""Token-level metrics that ignore padding."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_transformer")
class MaskedAccuracy(keras.metrics.Metric):
    """Fraction of real (non-padding) tokens whose argmax prediction is right.

    Args:
        pad_id: int, the label id that is padding.
        name: name of the metric.

    Example:

    >>> metric = MaskedAccuracy()
    >>> logits = keras.ops.one_hot(keras.ops.array([[2, 1, 3]]), 4)
    >>> metric.update_state([[2, 3, 0]], logits)      # 1 of 2 real tokens right
    >>> float(metric.result())
    0.5
    """

    def __init__(self, pad_id=0, name="accuracy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.pad_id = pad_id
        self.correct = self.add_variable(shape=(), initializer="zeros", name="correct")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = ops.cast(y_true, "int32")
        real = ops.cast(ops.not_equal(y_true, self.pad_id), "float32")
        hits = ops.cast(ops.equal(ops.cast(ops.argmax(y_pred, axis=-1), "int32"), y_true),
                        "float32")
        self.correct.assign_add(ops.sum(hits * real))
        self.count.assign_add(ops.sum(real))

    def result(self):
        return self.correct / ops.maximum(self.count, 1.0)

    def reset_state(self):
        self.correct.assign(0.0)
        self.count.assign(0.0)

    def get_config(self):
        return {**super().get_config(), "pad_id": self.pad_id}


def masked_perplexity(pad_id=0, name="perplexity"):
    """keras-hub's `Perplexity` on logits, ignoring the `pad_id` labels.

    `exp` of the mean cross-entropy over real tokens, accumulated over the
    epoch (not the mean of per-batch perplexities).

    Example:

    >>> metric = masked_perplexity()
    >>> logits = keras.ops.zeros((1, 3, 4))                # uniform over 4 tokens
    >>> metric.update_state(keras.ops.array([[2, 3, 0]]), logits)
    >>> round(float(metric.result()), 4)
    4.0
    """
    from keras_transformer._optional import require

    keras_hub = require("keras_hub", "data", "masked_perplexity (keras-hub's Perplexity)")

    return keras_hub.metrics.Perplexity(from_logits=True, mask_token_id=pad_id, name=name)
