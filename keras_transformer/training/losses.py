"""Cross-entropy over token sequences that ignores padding."""

import keras
from keras import ops


def _global_sum(value):
    """`value` summed over the replicas of a `tf.distribute` strategy (itself without one)."""
    if keras.backend.backend() != "tensorflow":
        return value
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return value
    return context.all_reduce(tf.distribute.ReduceOp.SUM, value)


@keras.saving.register_keras_serializable(package="keras_transformer")
class MaskedSparseCategoricalCrossentropy(keras.losses.Loss):
    """Token cross-entropy from logits, averaged over real tokens only.

    `loss = Σ_{y ≠ pad} CE(y, logits) / #{y ≠ pad}`, with optional label
    smoothing: the target distribution is `(1 - ε)·onehot(y) + ε/V`. Padding
    labels weigh nothing, so adding padding to a batch leaves the loss
    unchanged: `pad_id` (0 by default; `SpecialIds.label_padding`), and any
    negative label (-1 is the padding of labels where the padding id is a
    real token, as GPT-2's end token is). The logits are read in float32.

    Under a `tf.distribute` strategy with several replicas, the count of real
    tokens is summed over the replicas, so that the replicas' losses add up to
    the mean over the global batch (and the gradient is the single-device
    one for that batch).

    Args:
        label_smoothing: float in [0, 1), ε (0.1 in the paper).
        pad_id: int or None, the label id that is padding (None: only
            negative labels are).
        name: name of the loss.

    Call arguments:
        y_true: `(B, T)` int labels.
        y_pred: `(B, T, V)` logits.

    Example:

    >>> loss = MaskedSparseCategoricalCrossentropy()
    >>> logits = keras.ops.zeros((1, 3, 4))          # uniform over 4 tokens
    >>> round(float(loss([[2, 1, 0]], logits)), 4)    # log 4; the 0 is ignored
    1.3863
    """

    def __init__(self, label_smoothing=0.0, pad_id=0, name="masked_cross_entropy", **kwargs):
        # "sum": `call` already divides by the number of real tokens, and a
        # Keras mask on the logits (0/1) then changes nothing.
        super().__init__(name=name, reduction="sum", **kwargs)
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(
                f"`label_smoothing` must be in [0, 1). Received: label_smoothing={label_smoothing}"
            )
        self.label_smoothing = label_smoothing
        self.pad_id = pad_id

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, "int32")
        log_probabilities = ops.log_softmax(ops.cast(y_pred, "float32"), axis=-1)
        vocab_size = ops.shape(log_probabilities)[-1]
        target = ops.one_hot(y_true, vocab_size, dtype="float32")
        if self.label_smoothing:
            smoothing = self.label_smoothing
            target = target * (1.0 - smoothing) + smoothing / ops.cast(vocab_size, "float32")
        per_token = -ops.sum(target * log_probabilities, axis=-1)  # [B, T]
        real = y_true >= 0
        if self.pad_id is not None:
            real = real & ops.not_equal(y_true, self.pad_id)
        real = ops.cast(real, "float32")
        return per_token * real / ops.maximum(_global_sum(ops.sum(real)), 1.0)

    def get_config(self):
        return {"name": self.name, "label_smoothing": self.label_smoothing, "pad_id": self.pad_id}
