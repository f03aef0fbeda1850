"""The Keras internals of `keras_transformer._keras_compat` behave as the package
relies on. A Keras release that changes one fails here, by name."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_transformer import DecoderBlock, PositionalEmbedding
from keras_transformer._keras_compat import (
    all_layers,
    set_initial_epoch,
    tensorflow_trainer,
    tracking_unlocked,
)
from keras_transformer.layers import ReplicaLocalLosses
from tests.backend import tensorflow_only

# Runs under every Keras backend (CI: TensorFlow, then JAX); see tests/conftest.py.
pytestmark = pytest.mark.backend_neutral


def small_model():
    ids = keras.Input((None,), dtype="int32")
    x = PositionalEmbedding(20, 8, 16)(ids)
    x = DecoderBlock(2, 32)(x)
    return keras.Model(ids, keras.layers.Dense(20)(x))


def test_all_layers_reaches_the_sublayers_of_the_blocks():
    model = small_model()
    names = {type(layer).__name__ for layer in all_layers(model)}
    assert {"Functional", "DecoderBlock", "MultiHeadAttention", "PositionwiseFFN",
            "LayerNormalization", "EinsumDense"} <= names
    assert model not in all_layers(model, include_self=False)
    assert len(all_layers(model)) > len(model.layers) + 5


def test_set_initial_epoch_from_a_callback_resumes_fit_there():
    epochs_run = []

    class Resume(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            set_initial_epoch(self.model, 2)

        def on_epoch_begin(self, epoch, logs=None):
            epochs_run.append(epoch)

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    x = np.ones((4, 3), "float32")
    history = model.fit(x, x[:, :1], epochs=4, verbose=0, callbacks=[Resume()])
    assert epochs_run == [2, 3]
    assert len(history.history["loss"]) == 2


def test_a_built_layer_replaces_a_variable_only_with_tracking_unlocked():
    layer = keras.layers.Dense(2)
    layer.build((None, 3))
    with pytest.raises(ValueError):
        layer.extra = layer.add_weight(shape=(1,), name="extra")
    with tracking_unlocked(layer):
        del layer._kernel
        layer._kernel = layer.add_weight(shape=(3, 2), name="kernel", initializer="ones")
    assert len(layer.weights) == 2
    np.testing.assert_array_equal(ops.convert_to_numpy(layer.kernel), np.ones((3, 2)))


def test_add_loss_goes_through_the_layer_losses_attribute():
    # ReplicaLocalLosses overrides `Layer._losses`; add_loss, `losses` and the
    # per-call reset must go through it.
    class Penalized(ReplicaLocalLosses, keras.layers.Layer):
        def call(self, x):
            self.add_loss(ops.sum(x))
            return x

    layer = Penalized()
    layer(np.ones((2, 2), "float32"))
    assert [float(ops.convert_to_numpy(v)) for v in layer.losses] == [4.0]
    assert layer._losses is layer._replica_local_losses.items
    layer(np.full((2, 2), 2.0, "float32"))  # a new call replaces the losses
    assert [float(ops.convert_to_numpy(v)) for v in layer.losses] == [8.0]


@tensorflow_only
def test_the_tensorflow_trainer_has_what_the_multi_worker_patch_replaces():
    trainer = tensorflow_trainer()
    assert callable(trainer.reduce_per_replica)
    assert callable(trainer._collective_all_reduce_multi_worker)
    assert callable(trainer.TensorFlowTrainer._maybe_symbolic_build)
