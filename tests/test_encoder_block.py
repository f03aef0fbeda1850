import numpy as np
import pytest

import keras
from keras import ops

from keras_transformer import EncoderBlock
from tests.layer_checks import run_layer_checks
from tests.reference_blocks import hub_encoder_like

# Runs under every Keras backend (CI: TensorFlow, then JAX); see tests/conftest.py.
pytestmark = pytest.mark.backend_neutral

B, T, D = 2, 6, 16
X = np.random.default_rng(0).normal(size=(B, T, D)).astype("float32")
MASK = np.array([[True] * T, [True] * 4 + [False] * 2])


def _np(x):
    return ops.convert_to_numpy(x)


@pytest.mark.parametrize("norm_first", [False, True])
def test_equals_keras_hub_encoder_with_the_same_weights(norm_first):
    ours = EncoderBlock(num_heads=4, ffn_dim=32, norm_first=norm_first)
    theirs = hub_encoder_like(ours, X)
    np.testing.assert_allclose(
        _np(ours(X, padding_mask=MASK))[MASK],
        _np(theirs(X, padding_mask=MASK))[MASK],
        atol=1e-5,
    )


def test_post_ln_and_pre_ln_differ_and_pre_ln_keeps_the_residual_stream():
    post = EncoderBlock(num_heads=4, ffn_dim=32, dropout=0.0)
    pre = EncoderBlock(num_heads=4, ffn_dim=32, dropout=0.0, norm_first=True)
    post(X), pre(X)
    pre.set_weights(post.get_weights())
    out_post, out_pre = _np(post(X)), _np(pre(X))
    # Post-LN ends in a layer norm (gamma=1, beta=0): each token has mean 0, var 1.
    np.testing.assert_allclose(out_post.mean(-1), 0.0, atol=1e-5)
    np.testing.assert_allclose(out_post.var(-1), 1.0, atol=1e-3)
    assert not np.allclose(out_pre.var(-1), 1.0, atol=1e-2)


def test_padding_leakage():
    block = EncoderBlock(num_heads=4, ffn_dim=32, dropout=0.3)
    noisy = np.where(MASK[..., None], X, 100.0).astype("float32")
    np.testing.assert_allclose(
        _np(block(X, padding_mask=MASK))[MASK],
        _np(block(noisy, padding_mask=MASK))[MASK],
        atol=1e-5,
    )


def test_implicit_keras_mask_equals_explicit_padding_mask():
    ids = np.where(MASK, np.arange(1, T + 1)[None], 0)
    embedding = keras.layers.Embedding(10, D, mask_zero=True)
    block = EncoderBlock(num_heads=4, ffn_dim=32)
    x = embedding(ids)
    np.testing.assert_array_equal(_np(block(x)), _np(block(x, padding_mask=MASK)))
    inputs = keras.Input((None,), dtype="int32")
    model = keras.Model(inputs, block(embedding(inputs)))
    np.testing.assert_allclose(_np(model(ids)), _np(block(x, padding_mask=MASK)), atol=1e-6)


def test_attention_mask_is_merged_with_the_padding_mask():
    block = EncoderBlock(num_heads=4, ffn_dim=32)
    only_self = np.broadcast_to(np.eye(T, dtype=bool), (B, T, T))
    _, scores = block(X, padding_mask=MASK, attention_mask=only_self, return_attention_scores=True)
    expected = only_self & MASK[:, :, None] & MASK[:, None, :]
    np.testing.assert_array_equal(_np(scores) > 0, np.broadcast_to(expected[:, None], scores.shape))


def test_bad_input_is_a_value_error():
    with pytest.raises(ValueError, match=r"inputs.shape=\(2, 6\)"):
        EncoderBlock(num_heads=4, ffn_dim=32)(X[..., 0])
    with pytest.raises(ValueError, match=r"embed_dim=16, num_heads=5"):
        EncoderBlock(num_heads=5, ffn_dim=32)(X)
    with pytest.raises(ValueError, match=r"ffn_dim=0"):
        EncoderBlock(num_heads=4, ffn_dim=0)
    with pytest.raises(ValueError, match=r"padding_mask.shape=\(2, 5\)"):
        EncoderBlock(num_heads=4, ffn_dim=32)(X, padding_mask=MASK[:, :5])


@pytest.mark.parametrize("norm_first", [False, True])
def test_common_layer_checks(tmp_path, norm_first):
    run_layer_checks(
        EncoderBlock,
        {"num_heads": 4, "ffn_dim": 32, "norm_first": norm_first},
        {"inputs": X},
        # 8 attention + 4 feed-forward + 2 × 2 layer-norm weights.
        expected_trainable_weights=16,
        tmp_path=tmp_path,
    )
