import math

import numpy as np
import pytest

import keras
from keras import ops

from keras_transformer import PositionalEmbedding
from keras_transformer.layers.positional_embedding import sinusoidal_positions
from tests.layer_checks import run_layer_checks

# Runs under every Keras backend (CI: TensorFlow, then JAX); see tests/conftest.py.
pytestmark = pytest.mark.backend_neutral

IDS = np.array([[5, 7, 9, 2, 0, 0], [1, 2, 3, 4, 5, 6]])


def _np(x):
    return ops.convert_to_numpy(x)


def _paper_encoding(length, d):
    """The paper's formula, written out element by element."""
    table = np.zeros((length, d))
    for pos in range(length):
        for k in range(d):
            i = k // 2
            angle = pos / 10000 ** (2 * i / d)
            table[pos, k] = math.sin(angle) if k % 2 == 0 else math.cos(angle)
    return table


@pytest.mark.parametrize("d", [8, 7])
def test_sinusoidal_positions_equal_the_paper_formula(d):
    np.testing.assert_allclose(
        _np(sinusoidal_positions(np.arange(50), d)), _paper_encoding(50, d), atol=2e-5
    )


def test_output_is_scaled_token_embedding_plus_position():
    layer = PositionalEmbedding(vocab_size=10, max_length=16, embed_dim=8)
    out = _np(layer(IDS))
    table = _np(layer.token_embeddings)
    expected = table[IDS] * math.sqrt(8) + _paper_encoding(6, 8)[None]
    np.testing.assert_allclose(out, expected, atol=1e-5)
    unscaled = PositionalEmbedding(10, 16, 8, scale=False)
    out = _np(unscaled(IDS))
    expected = _np(unscaled.token_embeddings)[IDS] + _paper_encoding(6, 8)[None]
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_learned_positions_are_rows_of_the_table():
    layer = PositionalEmbedding(10, 16, 8, positions="learned", scale=False)
    out = _np(layer(IDS))
    expected = _np(layer.token_embeddings)[IDS] + _np(layer.position_embeddings)[:6][None]
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert not np.allclose(_np(layer.position_embeddings), _np(layer.token_embeddings)[:1])


@pytest.mark.parametrize("positions", ["sinusoidal", "learned"])
def test_a_step_at_start_index_t_gets_position_t(positions):
    layer = PositionalEmbedding(10, 16, 8, positions=positions)
    full = _np(layer(IDS))
    for t in range(IDS.shape[1]):
        step = _np(layer(IDS[:, t : t + 1], start_index=t))
        np.testing.assert_allclose(step[:, 0], full[:, t], atol=1e-6)
    # A tensor start index (as in a compiled decoding loop) gives the same.
    step = layer(IDS[:, 3:4], start_index=ops.convert_to_tensor(3))
    np.testing.assert_allclose(_np(step)[:, 0], full[:, 3], atol=1e-6)


def test_padding_mask_is_produced_and_propagated():
    layer = PositionalEmbedding(10, 16, 8)
    np.testing.assert_array_equal(_np(layer.compute_mask(IDS)), IDS != 0)
    assert PositionalEmbedding(10, 16, 8, mask_zero=False).compute_mask(IDS) is None
    inputs = keras.Input((None,), dtype="int32")
    x = layer(inputs)
    # A layer downstream receives the mask: Keras fills its `mask` argument.
    seen = {}

    class Probe(keras.layers.Layer):
        def __init__(self):
            super().__init__()
            self.supports_masking = True

        def call(self, x, mask=None):
            seen["mask"] = mask
            return x

    model = keras.Model(inputs, Probe()(x))
    model(IDS)
    np.testing.assert_array_equal(_np(seen["mask"]), IDS != 0)


def test_sequence_over_max_length_is_a_clear_error():
    layer = PositionalEmbedding(10, 4, 8)
    with pytest.raises(ValueError, match=r"max_length=4.*length=6, start_index=0"):
        layer(IDS)
    with pytest.raises(ValueError, match=r"length=1, start_index=4"):
        layer(IDS[:, :1], start_index=4)
    with pytest.raises(ValueError, match=r"length=6"):
        keras.Model(*(lambda i: (i, layer(i)))(keras.Input((6,), dtype="int32")))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"vocab_size": 0, "max_length": 4, "embed_dim": 8}, "vocab_size=0"),
        ({"vocab_size": 10, "max_length": 4, "embed_dim": 8, "positions": "rope"}, "'rope'"),
    ],
)
def test_bad_configuration_is_a_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PositionalEmbedding(**kwargs)


def test_wrong_rank_is_a_value_error():
    with pytest.raises(ValueError, match=r"token_ids.shape=\(2, 6, 1\)"):
        PositionalEmbedding(10, 16, 8)(IDS[..., None])


@pytest.mark.parametrize("positions", ["sinusoidal", "learned"])
def test_common_layer_checks(tmp_path, positions):
    run_layer_checks(
        PositionalEmbedding,
        {"vocab_size": 10, "max_length": 16, "embed_dim": 8, "positions": positions},
        {"token_ids": IDS.astype("int32")},
        expected_trainable_weights=1 if positions == "sinusoidal" else 2,
        tmp_path=tmp_path,
    )
