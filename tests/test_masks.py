import numpy as np
import pytest
from keras import ops

from keras_transformer.layers import masks

# Runs under every Keras backend (CI: TensorFlow, then JAX); see tests/conftest.py.
pytestmark = pytest.mark.backend_neutral


def _np(x):
    return ops.convert_to_numpy(x)


def test_causal_mask_exact_values():
    expected = np.array(
        [[True, False, False, False], [True, True, False, False], [True, True, True, False]]
    )
    np.testing.assert_array_equal(_np(masks.causal_mask(3, 4)), expected[None])


def test_causal_mask_offset_for_a_step_against_a_longer_cache():
    # Query step 2 of 5 cache slots sees slots 0, 1, 2.
    np.testing.assert_array_equal(
        _np(masks.causal_mask(1, 5, offset=2)), [[[True, True, True, False, False]]]
    )
    # A chunk of two queries at positions 3 and 4.
    np.testing.assert_array_equal(
        _np(masks.causal_mask(2, 5, offset=3)),
        [[[True, True, True, True, False], [True, True, True, True, True]]],
    )


def test_merge_is_the_logical_and_of_every_mask():
    query_mask = np.array([[True, True, False]])
    value_mask = np.array([[True, False, True, True]])
    attention_mask = np.ones((1, 3, 4), bool)
    attention_mask[0, 1, 0] = False
    merged = masks.merge_attention_masks(
        3,
        4,
        query_mask=query_mask,
        value_mask=value_mask,
        attention_mask=attention_mask,
        use_causal_mask=True,
        causal_offset=1,
    )
    causal = np.arange(4)[None, :] <= np.arange(3)[:, None] + 1
    expected = query_mask[:, :, None] & value_mask[:, None, :] & attention_mask & causal
    np.testing.assert_array_equal(_np(merged), expected)
    # Spot-check by hand: query 0 (position 1) sees keys 0 (and 1, padded).
    np.testing.assert_array_equal(_np(merged)[0, 0], [True, False, False, False])
    np.testing.assert_array_equal(_np(merged)[0, 2], [False] * 4)  # padded query


def test_merge_of_nothing_is_none_and_of_causal_alone_broadcasts():
    assert masks.merge_attention_masks(3, 3) is None
    assert tuple(masks.merge_attention_masks(3, 3, use_causal_mask=True).shape) == (1, 3, 3)


def test_value_mask_of_a_different_length_than_the_queries():
    # Source of 5 tokens, target of 2: the mask is (B, 2, 5), not (B, 2, 2).
    value_mask = np.array([[True, True, True, False, False]])
    merged = _np(masks.merge_attention_masks(2, 5, value_mask=value_mask))
    np.testing.assert_array_equal(
        np.broadcast_to(merged, (1, 2, 5)), np.repeat(value_mask[:, None, :], 2, axis=1)
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"query_mask": np.ones((2, 4), bool)}, r"query_mask.shape=\(2, 4\)"),
        ({"value_mask": np.ones((2, 3), bool)}, r"value_mask.shape=\(2, 3\)"),
        ({"attention_mask": np.ones((2, 3, 3), bool)}, r"attention_mask.shape=\(2, 3, 3\)"),
        ({"query_mask": np.ones((2, 3, 1), bool)}, r"must have shape \(None, 3\)"),
    ],
)
def test_masks_of_the_wrong_shape_are_a_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        masks.merge_attention_masks(3, 5, **kwargs)


def test_first_mask_prefers_the_explicit_one():
    a, b = np.array([[True]]), np.array([[False]])
    assert masks.first_mask(None, a, b) is a
    assert masks.first_mask(None, None) is None
