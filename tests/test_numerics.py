"""Low precision stays finite and learns; a NaN stops training before it is saved."""

import numpy as np
import pytest

import keras
from keras_transformer.data import generate_pairs, pipelines
from keras_transformer.data import tokenizers as tk
from keras_transformer.models import TransformerConfig, build_transformer
from keras_transformer.training import AtomicBackupAndRestore, MaskedSparseCategoricalCrossentropy

# Runs under every Keras backend (CI: TensorFlow, then JAX); see tests/conftest.py.
pytestmark = pytest.mark.backend_neutral


@pytest.fixture(scope="module")
def corpus():
    pairs = generate_pairs(1200, seed=0)
    source = tk.train_wordpiece([en for en, _ in pairs], 300)
    target = tk.train_wordpiece([es for _, es in pairs], 300)
    dataset = pipelines.translation_dataset(pairs, source, target, batch_size=32,
                                            max_length=24)
    batches = [keras.tree.map_structure(np.asarray, batch) for batch in dataset.take(30)]
    return source.vocabulary_size(), target.vocabulary_size(), batches


def train(corpus, policy, epochs=6):
    source_vocab, target_vocab, batches = corpus
    keras.mixed_precision.set_global_policy(policy)
    keras.utils.set_random_seed(0)
    config = TransformerConfig(vocab_size=target_vocab, source_vocab_size=source_vocab,
                               max_length=24, embed_dim=32, num_heads=2, ffn_dim=64,
                               num_encoder_layers=1, num_decoder_layers=1, dropout=0.0)
    model = build_transformer(config)
    model.compile(optimizer=keras.optimizers.Adam(3e-3),
                  loss=MaskedSparseCategoricalCrossentropy(label_smoothing=0.1))
    losses = []
    for _ in range(epochs):
        epoch = [float(model.train_on_batch(x, y)) for x, y in batches]
        losses.append(np.mean(epoch))
    return model, losses


def test_mixed_precision_stays_finite_and_learns_like_float32(corpus):
    _, float32 = train(corpus, "float32")
    model16, float16 = train(corpus, "mixed_float16")
    # Keras wraps the optimizer in dynamic loss scaling under mixed_float16.
    assert isinstance(model16.optimizer, keras.optimizers.LossScaleOptimizer)
    _, bfloat16 = train(corpus, "mixed_bfloat16")
    for name, losses in (("mixed_float16", float16), ("mixed_bfloat16", bfloat16)):
        assert np.all(np.isfinite(losses)), name
        assert losses[-1] < 0.6 * losses[0], name  # it learns
        assert abs(losses[-1] - float32[-1]) < 0.15 * float32[-1], (name, losses, float32)


def test_a_nan_loss_stops_training_before_any_backup_stores_it(corpus, tmp_path):
    import tensorflow as tf

    from keras_transformer.training import StopOnNaN

    _, _, batches = corpus
    model, _ = train(corpus, "float32", epochs=1)
    checkpoint = str(tmp_path / "last.weights.h5")

    class Poison(keras.callbacks.Callback):  # a weight turns NaN during epoch 2
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_begin(self, batch, logs=None):
            if self.epoch == 1 and batch == 3:
                weight = self.model.trainable_weights[0]
                weight.assign(np.full(weight.shape, np.nan, "float32"))

    xs, ys = [x for x, _ in batches], [y for _, y in batches]
    dataset = tf.data.Dataset.from_generator(
        lambda: zip(xs, ys), output_signature=(
            (tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([None, None], tf.int32)),
            tf.TensorSpec([None, None], tf.int32)))
    backup = AtomicBackupAndRestore(str(tmp_path / "backup"))
    with pytest.raises(FloatingPointError, match="epoch 1 .0-based., batch 3"):
        model.fit(dataset, epochs=4, verbose=0, callbacks=[
            Poison(), StopOnNaN(), backup,
            keras.callbacks.ModelCheckpoint(checkpoint, save_weights_only=True)])
    # What was written is epoch 1's: finite, and a resumed run would start there.
    model.load_weights(checkpoint)
    assert all(np.isfinite(w).all() for w in model.get_weights())
    restored = keras.models.clone_model(model)
    restored.compile(optimizer=keras.optimizers.Adam(3e-3),
                     loss=MaskedSparseCategoricalCrossentropy())
    history = restored.fit(dataset, epochs=2, verbose=0, callbacks=[
        AtomicBackupAndRestore(str(tmp_path / "backup"))])
    assert len(history.history["loss"]) == 1  # resumed at epoch 2 of 2
    assert np.isfinite(history.history["loss"]).all()
