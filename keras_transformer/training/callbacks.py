"""Callbacks for training under a wall-clock budget."""

import math
import time

import keras


class TimeBudget(keras.callbacks.Callback):
    """Stops training after `minutes` of wall-clock time (checked every batch).

    The epoch in progress ends where it is; `stopped_early` tells whether the
    budget ran out.
    """

    def __init__(self, minutes):
        super().__init__()
        self.seconds = minutes * 60.0
        self.stopped_early = False

    def on_train_begin(self, logs=None):
        self._started = time.monotonic()

    def on_train_batch_end(self, batch, logs=None):
        if time.monotonic() - self._started > self.seconds:
            self.model.stop_training = True
            self.stopped_early = True


class WallClockLearningRate(keras.callbacks.Callback):
    """Warm-up then cosine decay of the learning rate over a wall-clock budget.

    With a time budget instead of a step count, the usual schedules cannot
    know where training ends. This one sets the optimizer's learning rate
    before every batch from the elapsed fraction `f` of `minutes`: linear
    warm-up to `peak` over the first `warmup_fraction`, then a cosine down to
    `final_fraction · peak` at `f = 1`. Use it with `TimeBudget(minutes)`.

    The optimizer must have been built with a float learning rate (not a
    schedule object).

    Args:
        peak: float, the highest learning rate.
        minutes: float, the budget the decay spans.
        warmup_fraction: float in [0, 1).
        final_fraction: float, the last learning rate as a fraction of `peak`.
    """

    def __init__(self, peak, minutes, warmup_fraction=0.05, final_fraction=0.1):
        super().__init__()
        if not 0 <= warmup_fraction < 1:
            raise ValueError(f"`warmup_fraction` must be in [0, 1). Received: {warmup_fraction}")
        self.peak = peak
        self.seconds = minutes * 60.0
        self.warmup_fraction = warmup_fraction
        self.final_fraction = final_fraction

    def rate(self, fraction):
        """The learning rate at `fraction` of the budget."""
        if fraction < self.warmup_fraction:
            return self.peak * max(fraction / self.warmup_fraction, 1e-3)
        progress = min((fraction - self.warmup_fraction) / (1 - self.warmup_fraction), 1.0)
        cosine = 0.5 * (1 + math.cos(math.pi * progress))
        return self.peak * (self.final_fraction + (1 - self.final_fraction) * cosine)

    def on_train_begin(self, logs=None):
        self._started = time.monotonic()

    def on_train_batch_begin(self, batch, logs=None):
        fraction = (time.monotonic() - self._started) / self.seconds
        self.model.optimizer.learning_rate.assign(self.rate(fraction))


class StopOnNaN(keras.callbacks.Callback):
    """Raises `FloatingPointError` at the first NaN or infinite training loss.

    Keras's `TerminateOnNaN` only sets `stop_training`: the epoch still ends,
    so `on_epoch_end` callbacks (`BackupAndRestore`, `ModelCheckpoint`) run and
    may store the broken weights, and a resumed run would start from them.
    Raising leaves `fit` at once: the last backup and checkpoint are the ones
    written before the NaN.
    """

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise FloatingPointError(
                f"The training loss became {float(loss)} at epoch {getattr(self, '_epoch', 0)}"
                f" (0-based), batch {batch}; training stopped before any checkpoint or backup "
                "stored those weights. Lower the learning rate, or train in float32."
            )
