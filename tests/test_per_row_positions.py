"""A `(B,)` start index: each row at its own position, in one call.

A pool of sequences at different positions (continuous batching) steps them
together. Every check here compares a per-row call with the scalar calls it
stands for, row by row, so a row's result must not depend on where its
neighbours are."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_transformer import MultiHeadAttention, PositionalEmbedding
from keras_transformer.layers import masks
from keras_transformer.layers.positions import position_ids
from keras_transformer.layers.rotary import apply_rotary
from keras_transformer.models import TransformerConfig, build_causal_lm, build_transformer
from keras_transformer.models.cached_decoding import cached_decoder, decoding_traits

# Runs under every Keras backend (CI: TensorFlow, then JAX); see tests/conftest.py.
pytestmark = pytest.mark.backend_neutral

rng = np.random.default_rng(0)


def _np(x):
    return ops.convert_to_numpy(x)


def test_position_ids_shared_and_per_row():
    np.testing.assert_array_equal(_np(position_ids(3, 2)), [[3, 4]])
    np.testing.assert_array_equal(_np(position_ids(ops.array(3), 2)), [[3, 4]])
    np.testing.assert_array_equal(_np(position_ids(ops.array([0, 5]), 3)),
                                  [[0, 1, 2], [5, 6, 7]])
    with pytest.raises(ValueError, match=r"\(batch,\) int tensor.*shape \(2, 1\)"):
        position_ids(ops.zeros((2, 1), "int32"), 1)


@pytest.mark.parametrize("positions", ["sinusoidal", "learned"])
def test_positional_embedding_per_row_start_equals_each_rows_scalar_start(positions):
    layer = PositionalEmbedding(50, 16, 8, positions=positions)
    ids = rng.integers(1, 50, size=(3, 2)).astype("int32")
    starts = np.array([0, 4, 9], "int32")
    together = _np(layer(ids, start_index=ops.array(starts)))
    for row, start in enumerate(starts):
        alone = _np(layer(ids[row:row + 1], start_index=int(start)))
        np.testing.assert_allclose(together[row], alone[0], rtol=1e-6, atol=1e-6)


def test_rotary_and_causal_mask_per_row():
    heads = rng.normal(size=(2, 3, 2, 8)).astype("float32")
    starts = [1, 6]
    together = _np(apply_rotary(heads, ops.array(starts)))
    mask = _np(masks.causal_mask(3, 10, ops.array(starts), sliding_window=4))
    assert mask.shape == (2, 3, 10)
    for row, start in enumerate(starts):
        np.testing.assert_allclose(together[row], _np(apply_rotary(heads[row:row + 1], start))[0],
                                   rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(mask[row], _np(masks.causal_mask(3, 10, start, 4))[0])


@pytest.mark.parametrize("length", [1, 3])
def test_attention_cache_written_at_each_rows_position(length):
    layer = MultiHeadAttention(num_heads=4, num_key_value_heads=2, rotary=True)
    query = rng.normal(size=(2, length, 16)).astype("float32")
    cache = rng.normal(size=(2, 2, 12, 2, 4)).astype("float32")
    starts = [2, 7]
    out, written = layer(query, cache=ops.array(cache), cache_index=ops.array(starts),
                         use_causal_mask=True)
    out, written = _np(out), _np(written)
    for row, start in enumerate(starts):
        alone, alone_cache = layer(query[row:row + 1], cache=ops.array(cache[row:row + 1]),
                                   cache_index=start, use_causal_mask=True)
        np.testing.assert_allclose(out[row], _np(alone)[0], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(written[row], _np(alone_cache)[0], rtol=1e-6, atol=1e-6)
        # Positions outside [start, start + length) are untouched.
        kept = np.ones(12, bool)
        kept[start:start + length] = False
        np.testing.assert_array_equal(written[row][:, kept], cache[row][:, kept])


def _causal_lm(positions):
    config = TransformerConfig(vocab_size=40, max_length=16, embed_dim=16, num_heads=4,
                               ffn_dim=32, num_encoder_layers=0, num_decoder_layers=2,
                               dropout=0.0, norm_first=True, positions=positions,
                               num_key_value_heads=2 if positions == "rotary" else None)
    return build_causal_lm(config)


def _step_rows_apart(decoder, prompts, first_cache):
    """Each row prefilled alone with its prompt (scalar index), then one step
    of all rows together at their own positions, and the same step alone."""
    rows = []
    for prompt in prompts:
        cache = first_cache(1)
        _, cache = decoder.call_with_cache(ops.array([prompt], "int32"), cache, 0)
        rows.append(cache)
    pool = keras.tree.map_structure(lambda *parts: ops.concatenate(parts, axis=0), *rows)
    next_ids = ops.array([[7]] * len(prompts), "int32")
    index = ops.array([len(p) for p in prompts], "int32")
    logits, _ = decoder.call_with_cache(next_ids, pool, index)
    for row, prompt in enumerate(prompts):
        alone, _ = decoder.call_with_cache(next_ids[row:row + 1], rows[row], len(prompt))
        np.testing.assert_allclose(_np(logits)[row], _np(alone)[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("positions", ["sinusoidal", "learned", "rotary"])
def test_causal_lm_steps_a_pool_of_rows_at_different_positions(positions):
    decoder = cached_decoder(_causal_lm(positions))
    assert decoding_traits(decoder).per_row_index
    _step_rows_apart(decoder, [[5, 6, 9], [4], [8, 3, 2, 11, 12, 1]],
                     lambda rows: decoder.initial_cache(rows, 12))


def test_encoder_decoder_steps_a_pool_of_rows_at_different_positions():
    config = TransformerConfig(vocab_size=40, max_length=16, embed_dim=16, num_heads=4,
                               ffn_dim=32, num_encoder_layers=1, num_decoder_layers=2,
                               dropout=0.0)
    decoder = cached_decoder(build_transformer(config))
    assert decoding_traits(decoder).per_row_index
    source = ops.array([[5, 9, 12, 3]], "int32")
    encoded = decoder.encode(source)
    _step_rows_apart(decoder, [[2, 6], [2, 5, 7, 8, 1]],
                     lambda rows: decoder.initial_cache(rows, 12, encoded))
