"""Callbacks for training under a wall-clock budget."""

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
