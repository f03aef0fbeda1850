import numpy as np
import pytest

import keras
from keras import ops

from keras_transformer import MultiHeadAttention
from tests.backend import BACKEND, compiled, gradients
from tests.layer_checks import run_layer_checks

# Runs under every Keras backend (CI: TensorFlow, then JAX); see tests/conftest.py.
pytestmark = pytest.mark.backend_neutral

B, T, S, D, N = 2, 5, 7, 16, 4


def _np(x):
    return ops.convert_to_numpy(x)


def _data(seed=0):
    rng = np.random.default_rng(seed)
    query = rng.normal(size=(B, T, D)).astype("float32")
    value = rng.normal(size=(B, S, D)).astype("float32")
    return query, value


# Target and source of different lengths, with padding at the end.
QUERY_MASK = np.array([[True] * T, [True] * 3 + [False] * 2])
VALUE_MASK = np.array([[True] * S, [True] * 4 + [False] * 3])


def _copied_pair(query, value=None):
    """Our layer and Keras's, built on the same shapes, with the same weights."""
    value = query if value is None else value
    reference = keras.layers.MultiHeadAttention(num_heads=N, key_dim=D // N)
    reference(query, value)
    ours = MultiHeadAttention(num_heads=N)
    ours(query, value)
    ours.set_weights(reference.get_weights())
    return ours, reference


def test_head_dim_is_embed_dim_over_num_heads_not_embed_dim():
    layer = MultiHeadAttention(num_heads=N)
    layer(np.zeros((1, 3, D), "float32"))
    kernel_shapes = [tuple(w.shape) for w in layer.trainable_weights if w.ndim == 3]
    assert kernel_shapes == [(D, N, D // N)] * 3 + [(N, D // N, D)]
    assert layer.count_params() == 4 * D * D + 4 * D


def test_self_attention_equals_keras_with_padding_and_causal_masks():
    query, _ = _data()
    ours, reference = _copied_pair(query)
    expected = reference(
        query, query, query_mask=QUERY_MASK, value_mask=QUERY_MASK, use_causal_mask=True
    )
    got = ours(query, query_mask=QUERY_MASK, use_causal_mask=True)
    # Padded query rows differ by design (ours attend to nothing); real rows agree.
    np.testing.assert_allclose(_np(got)[QUERY_MASK], _np(expected)[QUERY_MASK], atol=1e-5)


def test_cross_attention_equals_keras_with_source_and_target_of_different_lengths():
    query, value = _data()
    ours, reference = _copied_pair(query, value)
    expected, expected_scores = reference(
        query,
        value,
        query_mask=QUERY_MASK,
        value_mask=VALUE_MASK,
        return_attention_scores=True,
    )
    got, scores = ours(
        query,
        value,
        query_mask=QUERY_MASK,
        value_mask=VALUE_MASK,
        return_attention_scores=True,
    )
    assert tuple(scores.shape) == (B, N, T, S)
    np.testing.assert_allclose(_np(got)[QUERY_MASK], _np(expected)[QUERY_MASK], atol=1e-5)
    real = np.broadcast_to(QUERY_MASK[:, None, :, None], scores.shape)
    np.testing.assert_allclose(_np(scores)[real], _np(expected_scores)[real], atol=1e-5)


def test_attention_equals_numpy_reference():
    query, value = _data()
    layer = MultiHeadAttention(num_heads=N, head_dim=3, use_bias=True)
    got = _np(layer(query, value, value_mask=VALUE_MASK))
    wq, bq, wk, bk, wv, bv, wo, bo = [_np(w) for w in layer.get_weights()]
    q = np.einsum("btd,dnh->btnh", query, wq) + bq
    k = np.einsum("bsd,dnh->bsnh", value, wk) + bk
    v = np.einsum("bsd,dnh->bsnh", value, wv) + bv
    logits = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(3)
    logits = np.where(VALUE_MASK[:, None, None, :], logits, -np.inf)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    expected = np.einsum("btnh,nhd->btd", np.einsum("bnts,bsnh->btnh", probs, v), wo) + bo
    np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_causal_leakage_future_tokens_change_nothing_before_them(dropout):
    query, _ = _data()
    layer = MultiHeadAttention(num_heads=N, dropout=dropout)
    t = 2
    changed = query.copy()
    changed[:, t + 1 :] += np.random.default_rng(1).normal(size=changed[:, t + 1 :].shape)
    out, scores = layer(query, use_causal_mask=True, return_attention_scores=True)
    out2, scores2 = layer(
        changed, use_causal_mask=True, return_attention_scores=True, training=False
    )
    np.testing.assert_allclose(_np(out)[:, : t + 1], _np(out2)[:, : t + 1], atol=1e-6)
    assert not np.allclose(_np(out)[:, t + 1 :], _np(out2)[:, t + 1 :])
    # No probability on any future key.
    future = np.triu(np.ones((T, T), bool), k=1)
    assert np.all(_np(scores)[:, :, future] == 0.0)
    np.testing.assert_allclose(_np(scores).sum(-1), 1.0, atol=1e-6)


def test_padding_leakage_in_self_and_cross_attention():
    query, value = _data()
    layer = MultiHeadAttention(num_heads=N)
    rng = np.random.default_rng(2)
    noisy_query = np.where(QUERY_MASK[..., None], query, rng.normal(size=query.shape))
    noisy_value = np.where(VALUE_MASK[..., None], value, rng.normal(size=value.shape))
    self_a = layer(query, query_mask=QUERY_MASK)
    self_b = layer(noisy_query.astype("float32"), query_mask=QUERY_MASK)
    np.testing.assert_allclose(_np(self_a)[QUERY_MASK], _np(self_b)[QUERY_MASK], atol=1e-6)

    cross = MultiHeadAttention(num_heads=N)
    cross_a = cross(query, value, query_mask=QUERY_MASK, value_mask=VALUE_MASK)
    cross_b = cross(
        noisy_query.astype("float32"),
        noisy_value.astype("float32"),
        query_mask=QUERY_MASK,
        value_mask=VALUE_MASK,
    )
    np.testing.assert_allclose(_np(cross_a)[QUERY_MASK], _np(cross_b)[QUERY_MASK], atol=1e-6)


def _embedded(ids, layer):
    return layer(ids)  # the Keras mask `ids != 0` rides along with the output


def test_implicit_keras_mask_equals_explicit_mask_eagerly_and_in_a_model():
    ids_q = np.array([[3, 4, 5, 6, 7], [3, 4, 5, 0, 0]])
    ids_v = np.array([[1, 2, 3, 4, 5, 6, 7], [1, 2, 3, 4, 0, 0, 0]])
    embedding = keras.layers.Embedding(10, D, mask_zero=True)
    query, value = _embedded(ids_q, embedding), _embedded(ids_v, embedding)
    layer = MultiHeadAttention(num_heads=N)
    q_mask, v_mask = ids_q != 0, ids_v != 0
    # Self-attention (one tensor argument: Keras fills `mask`).
    np.testing.assert_array_equal(
        _np(layer(query, use_causal_mask=True)),
        _np(layer(query, query_mask=q_mask, use_causal_mask=True)),
    )
    # Cross-attention (two tensor arguments: Keras fills query_mask/value_mask).
    np.testing.assert_array_equal(
        _np(layer(query, value)), _np(layer(query, value, query_mask=q_mask, value_mask=v_mask))
    )
    # In a functional model.
    inputs_q, inputs_v = keras.Input((None,), dtype="int32"), keras.Input((None,), dtype="int32")
    out = layer(embedding(inputs_q), embedding(inputs_v))
    model = keras.Model([inputs_q, inputs_v], out)
    np.testing.assert_allclose(
        _np(model([ids_q, ids_v])),
        _np(layer(query, value, query_mask=q_mask, value_mask=v_mask)),
        atol=1e-6,
    )
    # And the mask goes on to the next layer: the output carries the query's.
    assert tuple(layer.compute_mask(query, ops.convert_to_tensor(q_mask)).shape) == (B, T)


def test_fully_masked_rows_are_finite_with_finite_gradients():
    query, value = _data()
    layer = MultiHeadAttention(num_heads=N)
    nothing = np.zeros((B, S), bool)
    out, scores = layer(query, value, value_mask=nothing, return_attention_scores=True)
    assert np.all(np.isfinite(_np(out)))
    assert np.all(_np(scores) == 0.0)
    # Output is the output projection's bias alone.
    np.testing.assert_allclose(_np(out), np.broadcast_to(_np(layer.weights[-1]), out.shape))

    input_grads, variable_grads = gradients(
        lambda x: ops.sum(layer(x, value, value_mask=nothing) ** 2),
        layer.trainable_variables, [query],
    )
    assert all(np.all(np.isfinite(g)) for g in input_grads + variable_grads if g is not None)


def test_cached_self_attention_step_by_step_equals_full_causal_pass():
    query, _ = _data()
    layer = MultiHeadAttention(num_heads=N)
    full = _np(layer(query, use_causal_mask=True))
    cache = layer.initial_cache(B, T + 3)  # longer than needed: tail stays masked
    steps = []
    for t in range(T):
        out, cache = layer(
            query[:, t : t + 1], cache=cache, cache_index=t, use_causal_mask=True
        )
        steps.append(_np(out))
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=1e-5)


def test_cached_prefill_chunk_then_single_steps():
    query, _ = _data()
    layer = MultiHeadAttention(num_heads=N)
    full = _np(layer(query, use_causal_mask=True))
    cache = layer.initial_cache(B, T)
    out, cache = layer(query[:, :3], cache=cache, cache_index=0, use_causal_mask=True)
    np.testing.assert_allclose(_np(out), full[:, :3], atol=1e-5)
    out, cache = layer(query[:, 3:], cache=cache, cache_index=3, use_causal_mask=True)
    np.testing.assert_allclose(_np(out), full[:, 3:], atol=1e-5)


def test_precomputed_cross_attention_cache_equals_uncached():
    query, value = _data()
    layer = MultiHeadAttention(num_heads=N)
    expected = _np(layer(query, value, value_mask=VALUE_MASK))
    cache = layer.compute_key_value_cache(value)
    assert tuple(cache.shape) == (B, 2, S, N, D // N)
    got, same_cache = layer(query, cache=cache, value_mask=VALUE_MASK)
    np.testing.assert_allclose(_np(got), expected, atol=1e-6)
    assert same_cache is cache
    with pytest.raises(ValueError, match="`value` must be None"):
        layer(query, value, cache=cache)


@pytest.mark.parametrize("num_key_value_heads", [None, 2])
def test_a_cross_attention_cache_serves_groups_of_query_rows(num_key_value_heads):
    """Beam search keeps one cache row per sentence for its k consecutive beams:
    the same outputs and scores as the cache repeated for every beam."""
    k = 3
    query, value = _data()
    beams = np.random.default_rng(5).normal(size=(B * k, 2, D)).astype("float32")
    beam_mask = np.ones((B * k, 2), bool)
    beam_mask[1, 1] = False  # a padded query position in one beam
    layer = MultiHeadAttention(num_heads=N, num_key_value_heads=num_key_value_heads)
    layer(query, value)
    cache = layer.compute_key_value_cache(value)  # [B, 2, S, K, H]
    repeated = ops.repeat(cache, k, axis=0)
    expected, _, expected_scores = layer(
        beams, cache=repeated, query_mask=beam_mask,
        value_mask=np.repeat(VALUE_MASK, k, axis=0), return_attention_scores=True)
    got, _, scores = layer(beams, cache=cache, query_mask=beam_mask, value_mask=VALUE_MASK,
                           return_attention_scores=True)
    np.testing.assert_allclose(_np(got), _np(expected), atol=1e-6)
    np.testing.assert_allclose(_np(scores), _np(expected_scores), atol=1e-6)
    fused = layer(beams, cache=cache, query_mask=beam_mask, value_mask=VALUE_MASK)[0]
    np.testing.assert_allclose(_np(fused), _np(expected), atol=1e-5)


def test_cached_step_under_xla_with_a_tensor_cache_index():
    query, _ = _data()
    layer = MultiHeadAttention(num_heads=N)
    full = _np(layer(query, use_causal_mask=True))

    traces = []

    def step(x, cache, index):
        traces.append(1)
        return layer(x, cache=cache, cache_index=index, use_causal_mask=True)

    step = compiled(step)
    cache = layer.initial_cache(B, T)
    for t in range(T):
        out, cache = step(query[:, t : t + 1], cache, ops.convert_to_tensor(t, "int32"))
        np.testing.assert_allclose(_np(out), full[:, t : t + 1], atol=1e-5)
    if BACKEND in ("tensorflow", "jax"):
        # One compiled function for every step: the shapes are static.
        assert len(traces) == 1


def test_return_attention_scores_in_a_functional_model():
    query = keras.Input((None, D))
    value = keras.Input((S, D))
    out, scores = MultiHeadAttention(num_heads=N)(query, value, return_attention_scores=True)
    assert tuple(out.shape) == (None, None, D)
    assert tuple(scores.shape) == (None, N, None, S)
    model = keras.Model([query, value], [out, scores])
    q, v = _data()
    out, scores = model([q, v])
    assert tuple(scores.shape) == (B, N, T, S)


def test_non_divisible_heads_is_a_value_error_naming_what_it_received():
    with pytest.raises(ValueError, match="embed_dim=10, num_heads=3"):
        MultiHeadAttention(num_heads=3)(np.zeros((1, 2, 10), "float32"))
    # With an explicit head_dim any width works: embed_dim ≠ num_heads × head_dim.
    out = MultiHeadAttention(num_heads=3, head_dim=4)(np.zeros((1, 2, 10), "float32"))
    assert tuple(out.shape) == (1, 2, 10)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_heads": 0}, "num_heads=0"),
        ({"num_heads": 2, "head_dim": -1}, "head_dim=-1"),
        ({"num_heads": 2, "dropout": 1.0}, "dropout=1.0"),
    ],
)
def test_bad_configuration_is_a_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MultiHeadAttention(**kwargs)


def test_bad_inputs_are_a_value_error_naming_what_was_received():
    layer = MultiHeadAttention(num_heads=N)
    with pytest.raises(ValueError, match=r"query_shape=\(5, 16\)"):
        layer(np.zeros((5, D), "float32"))
    query, value = _data()
    with pytest.raises(ValueError, match=r"value_mask.shape=\(2, 5\)"):
        MultiHeadAttention(num_heads=N)(query, value, value_mask=QUERY_MASK)


def test_common_layer_checks(tmp_path):
    query, value = _data()
    run_layer_checks(
        MultiHeadAttention,
        {"num_heads": N, "dropout": 0.1},
        {"query": query, "value": value},
        expected_trainable_weights=8,
        tmp_path=tmp_path,
    )
    run_layer_checks(
        MultiHeadAttention,
        {"num_heads": N, "use_bias": False},
        {"query": query},
        call_kwargs={"use_causal_mask": True},
        expected_trainable_weights=4,
    )


def test_no_scores_and_no_dropout_take_the_fused_kernel(monkeypatch):
    # The blocks pass `return_attention_scores` through: unless scores are asked
    # for, or attention dropout is active, the materialized path never runs.
    from keras_transformer import DecoderBlock, EncoderBlock

    def refuse(*args, **kwargs):
        raise AssertionError("the materialized attention path ran")

    x = np.random.default_rng(0).normal(size=(2, 5, 8)).astype("float32")
    encoder = EncoderBlock(num_heads=2, ffn_dim=16, dropout=0.1)
    decoder = DecoderBlock(num_heads=2, ffn_dim=16, dropout=0.1)
    encoder(x), decoder(x, x)  # build
    monkeypatch.setattr(MultiHeadAttention, "_attend", refuse)
    encoder(x, training=False)
    decoder(x, x, training=False)
    with pytest.raises(AssertionError, match="materialized"):
        encoder(x, training=True)  # attention dropout needs the probabilities
    with pytest.raises(AssertionError, match="materialized"):
        decoder(x, x, return_attention_scores=True)


@pytest.mark.parametrize("num_key_value_heads, sliding_window", [(None, None), (2, None),
                                                                  (1, 3)])
def test_one_query_steps_equal_the_materialized_attention(num_key_value_heads, sliding_window,
                                                         monkeypatch):
    # A decoding step (one query per row) reads the cache as products and sums
    # (`_attend_one_query`, keys not repeated across a group's query heads):
    # its output equals the materialized path's, rows at different positions,
    # masked keys and all.
    layer = MultiHeadAttention(num_heads=N, num_key_value_heads=num_key_value_heads,
                               sliding_window=sliding_window)
    rng = np.random.default_rng(3)
    value = rng.normal(size=(B, S, D)).astype("float32")
    query = rng.normal(size=(B, 1, D)).astype("float32")
    layer(value, use_causal_mask=True)  # build
    cache = layer.initial_cache(B, S)
    _, cache = layer(value, cache=cache, cache_index=0, use_causal_mask=True)
    index = np.array([4, 2], "int32")  # each row's own position
    key_mask = np.array([[True] * S, [True, False] + [True] * (S - 2)])
    kwargs = dict(value_mask=key_mask, cache=cache, cache_index=index, use_causal_mask=True)
    fast, fast_cache = layer(query, **kwargs)
    materialized, slow_cache, scores = layer(query, return_attention_scores=True, **kwargs)
    np.testing.assert_allclose(_np(fast), _np(materialized), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(_np(fast_cache), _np(slow_cache))
    assert _np(scores)[1, :, 0, 1].max() == 0  # the masked key was masked
    if BACKEND in ("tensorflow", "jax"):
        calls = []
        original = MultiHeadAttention._attend_one_query

        def spy(self, *args):
            calls.append(1)
            return original(self, *args)

        monkeypatch.setattr(MultiHeadAttention, "_attend_one_query", spy)
        layer(query, **kwargs)
        assert calls, "a one-query step should read the cache as products and sums"
