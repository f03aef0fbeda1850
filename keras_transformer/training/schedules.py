"""The learning-rate schedule of "Attention Is All You Need"."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_transformer")
class TransformerSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """`lr(step) = scale · d^-0.5 · min(step^-0.5, step · warmup^-1.5)`.

    Linear warm-up for `warmup_steps`, then decay with the inverse square root
    of the step. Steps count from 1 (Keras passes the 0-based iteration).

    Args:
        embed_dim: int, d_model.
        warmup_steps: int (4000 in the paper).
        scale: float, a multiplier (1.0 in the paper).

    Example:

    >>> schedule = TransformerSchedule(embed_dim=512, warmup_steps=4000)
    >>> round(float(schedule(3999)), 7)   # the peak, at step 4000
    0.0006988
    """

    def __init__(self, embed_dim, warmup_steps=4000, scale=1.0):
        if warmup_steps < 1:
            raise ValueError(f"`warmup_steps` must be >= 1. Received: {warmup_steps}")
        self.embed_dim = embed_dim
        self.warmup_steps = warmup_steps
        self.scale = scale

    def __call__(self, step):
        step = ops.cast(step, "float32") + 1.0
        warmup = float(self.warmup_steps)
        return (self.scale * self.embed_dim**-0.5) * ops.minimum(
            ops.rsqrt(step), step * warmup**-1.5
        )

    def get_config(self):
        return {"embed_dim": self.embed_dim, "warmup_steps": self.warmup_steps,
                "scale": self.scale}


def transformer_optimizer(embed_dim, warmup_steps=4000, scale=1.0, **kwargs):
    """Adam with β₁=0.9, β₂=0.98, ε=1e-9 and the warm-up schedule (the paper's).

    Other keyword arguments go to `keras.optimizers.Adam` (for example
    `use_ema=True, ema_momentum=0.999`).
    """
    return keras.optimizers.Adam(
        learning_rate=TransformerSchedule(embed_dim, warmup_steps, scale),
        beta_1=0.9,
        beta_2=0.98,
        epsilon=1e-9,
        **kwargs,
    )
