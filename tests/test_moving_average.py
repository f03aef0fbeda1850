"""The translation recipe's moving average of the weights (`--ema`).

With `ema`, `translation.training_callbacks` validates and keeps the moving
average (Keras's `use_ema` and `SwapEMAWeights`) while the backup keeps the raw
weights: a run killed after an epoch and started again ends where an
uninterrupted run ends, and the best checkpoint scores the validation loss
that chose it.
"""

import numpy as np
import pytest

import keras

from keras_transformer.models import TransformerConfig, build_transformer
from keras_transformer.recipes import translation
from keras_transformer.training import MaskedSparseCategoricalCrossentropy

CONFIG = TransformerConfig(vocab_size=20, max_length=8, embed_dim=16, num_heads=2, ffn_dim=32,
                           num_encoder_layers=1, num_decoder_layers=1, dropout=0.0)
rng = np.random.default_rng(0)
SOURCE, TARGET = rng.integers(1, 20, size=(48, 6)), rng.integers(1, 20, size=(48, 6))
TRAIN = ([SOURCE[:32], TARGET[:32, :-1]], TARGET[:32, 1:])
VAL = ([SOURCE[32:], TARGET[32:, :-1]], TARGET[32:, 1:])


class Killed(Exception):
    pass


class KillAfter(keras.callbacks.Callback):
    """Ends the process's training abruptly after `epoch` (after every other callback)."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise Killed


class RawWeights(keras.callbacks.Callback):
    """Keeps each epoch's raw weights (placed before `SwapEMAWeights`)."""

    def __init__(self):
        super().__init__()
        self.epochs = []

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append([keras.ops.convert_to_numpy(w) for w in self.model.weights])


def _fit(run_dir, epochs=4, kill_after=None, ema=0.5, raw=None):
    keras.utils.set_random_seed(0)
    model = build_transformer(CONFIG)
    model.compile(optimizer=keras.optimizers.Adam(1e-2, use_ema=True, ema_momentum=ema),
                  loss=MaskedSparseCategoricalCrossentropy())
    callbacks = translation.training_callbacks(str(run_dir), ema=ema)
    if raw is not None:
        swap = next(i for i, c in enumerate(callbacks)
                    if isinstance(c, keras.callbacks.SwapEMAWeights))
        callbacks.insert(swap, raw)
    if kill_after is not None:
        callbacks.append(KillAfter(kill_after))
    history = model.fit(*TRAIN, validation_data=VAL, epochs=epochs, batch_size=8,
                        shuffle=False, verbose=0, callbacks=callbacks)
    return model, history.history


def _weights(model):
    return [keras.ops.convert_to_numpy(w) for w in model.weights]


def test_the_best_checkpoint_is_the_moving_average_that_validation_scored(tmp_path):
    raw = RawWeights()
    model, history = _fit(tmp_path, raw=raw)
    best = keras.saving.load_model(str(tmp_path / "best.keras"))
    scored = best.evaluate(*VAL, batch_size=8, verbose=0)
    assert scored == pytest.approx(min(history["val_loss"]), rel=1e-5)
    # The raw weights of that epoch score differently: validation saw the average.
    best_epoch = int(np.argmin(history["val_loss"]))
    best.set_weights(raw.epochs[best_epoch])
    assert abs(best.evaluate(*VAL, batch_size=8, verbose=0) - scored) > 1e-3


def test_a_killed_run_resumes_with_raw_weights_and_moving_average_intact(tmp_path):
    whole, _ = _fit(tmp_path / "whole")
    with pytest.raises(Killed):
        _fit(tmp_path / "resumed", kill_after=1)
    resumed, history = _fit(tmp_path / "resumed")
    assert len(history["loss"]) == 2  # epochs 3 and 4 only
    for ours, theirs in zip(_weights(resumed), _weights(whole)):
        np.testing.assert_allclose(ours, theirs, atol=1e-5)
    for name in ("whole", "resumed"):
        assert (tmp_path / name / "best.keras").exists()
    best_whole = keras.saving.load_model(str(tmp_path / "whole" / "best.keras"))
    best_resumed = keras.saving.load_model(str(tmp_path / "resumed" / "best.keras"))
    for ours, theirs in zip(_weights(best_resumed), _weights(best_whole)):
        np.testing.assert_allclose(ours, theirs, atol=1e-5)
