"""Property-based tests (hypothesis) of the mask and attention invariants."""

import numpy as np
import pytest
from keras import ops
from hypothesis import given, settings
from hypothesis import strategies as st

from keras_transformer import MultiHeadAttention
from keras_transformer.layers import masks

# Runs under every Keras backend (CI: TensorFlow, then JAX); see tests/conftest.py.
pytestmark = pytest.mark.backend_neutral

shapes = st.tuples(st.integers(1, 3), st.integers(1, 6), st.integers(1, 6))  # B, T, S


@st.composite
def mask_cases(draw):
    batch, queries, keys = draw(shapes)
    bools = lambda *shape: st.lists(  # noqa: E731
        st.booleans(), min_size=int(np.prod(shape)), max_size=int(np.prod(shape))
    ).map(lambda values: np.array(values, bool).reshape(shape))
    query_mask = draw(st.none() | bools(batch, queries))
    value_mask = draw(st.none() | bools(batch, keys))
    attention_mask = draw(st.none() | bools(batch, queries, keys))
    causal = draw(st.booleans())
    offset = draw(st.integers(0, 4))
    return batch, queries, keys, query_mask, value_mask, attention_mask, causal, offset


def reference_mask(batch, queries, keys, query_mask, value_mask, attention_mask, causal, offset):
    merged = np.ones((batch, queries, keys), bool)
    if query_mask is not None:
        merged &= query_mask[:, :, None]
    if value_mask is not None:
        merged &= value_mask[:, None, :]
    if attention_mask is not None:
        merged &= attention_mask
    if causal:
        merged &= (np.arange(queries)[:, None] + offset) >= np.arange(keys)[None, :]
    return merged


@settings(max_examples=150, deadline=None)
@given(mask_cases())
def test_merged_mask_is_the_logical_and_of_its_parts(case):
    batch, queries, keys, query_mask, value_mask, attention_mask, causal, offset = case
    merged = masks.merge_attention_masks(queries, keys, query_mask, value_mask, attention_mask,
                                         causal, offset)
    expected = reference_mask(*case)
    if merged is None:
        assert expected.all()
    else:
        np.testing.assert_array_equal(np.broadcast_to(np.asarray(merged), expected.shape),
                                      expected)


ATTENTION = MultiHeadAttention(num_heads=2, head_dim=3)
ATTENTION.build((None, None, 6), (None, None, 6))


@settings(max_examples=40, deadline=None)
@given(mask_cases(), st.integers(0, 2**16))
def test_attention_respects_any_mask_and_stays_finite(case, seed):
    batch, queries, keys, query_mask, value_mask, attention_mask, causal, offset = case
    rng = np.random.default_rng(seed)
    query = rng.normal(size=(batch, queries, 6)).astype("float32")
    value = rng.normal(size=(batch, keys, 6)).astype("float32")
    attention_mask = reference_mask(batch, queries, keys, query_mask, value_mask,
                                    attention_mask, causal, offset)
    output, scores = ATTENTION(query, value, attention_mask=attention_mask,
                               return_attention_scores=True)
    output, scores = ops.convert_to_numpy(output), ops.convert_to_numpy(scores)
    assert np.isfinite(output).all() and np.isfinite(scores).all()
    # No probability on masked keys; each row sums to 1, or to 0 when it sees nothing.
    visible = attention_mask[:, None]
    assert np.all(scores[~np.broadcast_to(visible, scores.shape)] == 0)
    sums = scores.sum(-1)
    np.testing.assert_allclose(sums, np.broadcast_to(visible.any(-1), sums.shape).astype(float),
                               atol=1e-5)
    # Changing the masked-out values changes nothing.
    noise = rng.normal(size=value.shape).astype("float32")
    hidden_keys = ~attention_mask.any(1)  # keys no query may see, [B, S]
    changed = np.where(hidden_keys[:, :, None], value + noise, value)
    np.testing.assert_allclose(
        ops.convert_to_numpy(ATTENTION(query, changed, attention_mask=attention_mask)), output,
        atol=1e-5)


@settings(max_examples=60, deadline=None)
@given(mask_cases(), st.integers(0, 2**16))
def test_fused_attention_equals_the_materialized_path(case, seed):
    # Without scores or dropout the layer calls `keras.ops.dot_product_attention`;
    # asking for the scores takes the materialized softmax. Both must agree on
    # every mask, including queries that see no key (a zero row).
    batch, queries, keys, query_mask, value_mask, attention_mask, causal, offset = case
    rng = np.random.default_rng(seed)
    query = rng.normal(size=(batch, queries, 6)).astype("float32")
    value = rng.normal(size=(batch, keys, 6)).astype("float32")
    arguments = dict(query_mask=query_mask, value_mask=value_mask,
                     attention_mask=attention_mask, use_causal_mask=causal)
    fused = ops.convert_to_numpy(ATTENTION(query, value, **arguments))
    materialized, _ = ATTENTION(query, value, return_attention_scores=True, **arguments)
    np.testing.assert_allclose(fused, ops.convert_to_numpy(materialized), rtol=1e-5, atol=1e-5)
    # Self-attention too (the causal-only case uses the kernel's causal mode).
    self_arguments = dict(query_mask=query_mask, use_causal_mask=causal)
    fused = ops.convert_to_numpy(ATTENTION(query, **self_arguments))
    materialized, _ = ATTENTION(query, return_attention_scores=True, **self_arguments)
    np.testing.assert_allclose(fused, ops.convert_to_numpy(materialized), rtol=1e-5, atol=1e-5)
