import math

import numpy as np
import pytest

import keras
from keras import ops

from keras_transformer.training import (
    MaskedAccuracy,
    MaskedSparseCategoricalCrossentropy,
    TransformerSchedule,
    transformer_optimizer,
)

LOGITS = np.random.default_rng(0).normal(size=(2, 4, 6)).astype("float32")
LABELS = np.array([[3, 1, 4, 0], [2, 5, 0, 0]])


def _np(x):
    return ops.convert_to_numpy(x)


def _reference(labels, logits, smoothing):
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    total, count = 0.0, 0
    for b, t in zip(*np.nonzero(labels)):
        target = np.full(logits.shape[-1], smoothing / logits.shape[-1])
        target[labels[b, t]] += 1 - smoothing
        total -= (target * log_p[b, t]).sum()
        count += 1
    return total / count


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_loss_equals_the_formula_over_real_tokens(smoothing):
    loss = MaskedSparseCategoricalCrossentropy(label_smoothing=smoothing)
    np.testing.assert_allclose(
        float(loss(LABELS, LOGITS)), _reference(LABELS, LOGITS, smoothing), rtol=1e-5
    )


def test_extra_padding_leaves_loss_and_accuracy_unchanged():
    loss = MaskedSparseCategoricalCrossentropy(label_smoothing=0.1)
    padded_labels = np.concatenate([LABELS, np.zeros((2, 5), int)], axis=1)
    padded_logits = np.concatenate(
        [LOGITS, np.random.default_rng(1).normal(size=(2, 5, 6)).astype("float32")], axis=1
    )
    np.testing.assert_allclose(
        float(loss(padded_labels, padded_logits)), float(loss(LABELS, LOGITS)), rtol=1e-6
    )
    a, b = MaskedAccuracy(), MaskedAccuracy()
    a.update_state(LABELS, LOGITS)
    b.update_state(padded_labels, padded_logits)
    assert float(a.result()) == float(b.result())
    hits = (LOGITS.argmax(-1) == LABELS)[LABELS != 0]
    np.testing.assert_allclose(float(a.result()), hits.mean())


def test_loss_with_an_implicit_keras_mask_on_the_logits_in_fit():
    # The logits carry the decoder's padding mask: the value must not change.
    ids = keras.Input((4,), dtype="int32")
    x = keras.layers.Embedding(7, 6, mask_zero=True)(ids)
    model = keras.Model(ids, keras.layers.Dense(6)(x))
    loss = MaskedSparseCategoricalCrossentropy()
    model.compile(loss=loss, jit_compile=True)
    inputs = np.where(LABELS != 0, 1, 0)
    expected = float(loss(LABELS, model.predict(inputs, verbose=0)))
    got = model.evaluate(inputs, LABELS, verbose=0)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_schedule_is_the_paper_formula_and_serializable():
    schedule = TransformerSchedule(embed_dim=512, warmup_steps=4000)
    for iteration in (0, 99, 3999, 4000, 99999):
        step = iteration + 1
        expected = 512**-0.5 * min(step**-0.5, step * 4000**-1.5)
        np.testing.assert_allclose(float(schedule(iteration)), expected, rtol=1e-5)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert restored.get_config() == schedule.get_config()
    optimizer = transformer_optimizer(512)
    assert (optimizer.beta_1, optimizer.beta_2, optimizer.epsilon) == (0.9, 0.98, 1e-9)
    assert math.isclose(float(optimizer.learning_rate), 512**-0.5 * 4000**-1.5, rel_tol=1e-5)


def test_bad_arguments():
    with pytest.raises(ValueError, match="label_smoothing=1.0"):
        MaskedSparseCategoricalCrossentropy(label_smoothing=1.0)
    with pytest.raises(ValueError, match="warmup_steps"):
        TransformerSchedule(512, warmup_steps=0)
