"""The options of current decoders: RMSNorm, SwiGLU/GeGLU, grouped-query
attention and rotary embeddings, by value against Keras's and keras-hub's
layers, and together in a Mixtral-shaped decoder."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_transformer import (
    DecoderBlock,
    EncoderBlock,
    MoE,
    MultiHeadAttention,
    PositionwiseFFN,
    RMSNormalization,
)
from keras_transformer.generation import IdDecoder, greedy_generate
from keras_transformer.layers.rotary import apply_rotary
from keras_transformer.models import TransformerConfig, build_causal_lm
from tests.backend import tensorflow_only
from tests.layer_checks import run_layer_checks

# Runs under every Keras backend (CI: TensorFlow, then JAX); see tests/conftest.py.
pytestmark = pytest.mark.backend_neutral

rng = np.random.default_rng(0)
B, T, S, D = 2, 7, 5, 16


def _np(x):
    return ops.convert_to_numpy(x)


def test_rms_normalization_equals_keras_and_keeps_float32_statistics():
    if not hasattr(keras.layers, "RMSNormalization"):
        pytest.skip("keras.layers.RMSNormalization needs Keras >= 3.9")
    x = rng.normal(size=(B, T, D)).astype("float32") * 3
    ours = RMSNormalization(epsilon=1e-6)
    theirs = keras.layers.RMSNormalization(epsilon=1e-6)
    ours(x), theirs(x)
    scale = rng.normal(size=(D,)).astype("float32")
    ours.set_weights([scale])
    theirs.set_weights([scale])
    np.testing.assert_allclose(_np(ours(x)), _np(theirs(x)), rtol=1e-5, atol=1e-5)
    # Large float16 inputs: x² overflows float16, the float32 statistics do not.
    keras.mixed_precision.set_global_policy("mixed_float16")
    half = RMSNormalization()
    out = _np(half(x * 1000))
    assert out.dtype == np.float16 and np.isfinite(out).all()
    np.testing.assert_allclose(out, _np(RMSNormalization(dtype="float32")(x)), atol=2e-2)


def test_rms_normalization_common_checks(tmp_path):
    run_layer_checks(RMSNormalization, {"epsilon": 1e-5},
                     {"inputs": rng.normal(size=(B, T, D)).astype("float32")},
                     expected_trainable_weights=1, tmp_path=tmp_path)


def test_rotary_equals_keras_hubs_rotary_embedding():
    keras_hub = pytest.importorskip("keras_hub")
    heads = rng.normal(size=(B, T, 4, 8)).astype("float32")
    reference = keras_hub.layers.RotaryEmbedding(max_wavelength=10000)
    for start in (0, 5):
        np.testing.assert_allclose(_np(apply_rotary(heads, start)),
                                   _np(reference(heads, start_index=start)), atol=1e-5)


def test_rotary_attention_depends_on_relative_positions_and_caches():
    layer = MultiHeadAttention(num_heads=2, rotary=True)
    x = rng.normal(size=(1, T, D)).astype("float32")
    out = _np(layer(x, use_causal_mask=True))
    # The same tokens later in the sequence: only distances matter to the scores.
    _, scores = layer(x, return_attention_scores=True)
    rotated_q = apply_rotary(layer._query_dense(x), 3)
    rotated_k = apply_rotary(layer._key_dense(x), 3)
    shifted = ops.softmax(ops.einsum("btnh,bsnh->bnts", rotated_q, rotated_k)
                          / np.sqrt(D // 2))
    np.testing.assert_allclose(_np(shifted), _np(scores), atol=1e-5)
    # Cached steps continue the positions: the step at t equals the full pass.
    cache = layer.initial_cache(1, T)
    for t in range(T):
        step, cache = layer(x[:, t : t + 1], cache=cache, cache_index=t, use_causal_mask=True)
        np.testing.assert_allclose(_np(step), out[:, t : t + 1], atol=1e-5)


@pytest.mark.parametrize("kv_heads", [1, 2])
@pytest.mark.parametrize("causal", [False, True])
def test_grouped_query_attention_equals_keras(kv_heads, causal):
    query = rng.normal(size=(B, T, D)).astype("float32")
    value = query if causal else rng.normal(size=(B, S, D)).astype("float32")
    mask = rng.random((B, T, value.shape[1])) > 0.3
    ours = MultiHeadAttention(num_heads=4, num_key_value_heads=kv_heads)
    theirs = keras.layers.GroupQueryAttention(head_dim=D // 4, num_query_heads=4,
                                                num_key_value_heads=kv_heads)
    ours(query, value)
    theirs(query, value)
    assert [w.shape for w in ours.get_weights()] == [w.shape for w in theirs.get_weights()]
    theirs.set_weights(ours.get_weights())
    expected = _np(theirs(query, value, attention_mask=mask, use_causal_mask=causal))
    got = _np(ours(query, value, attention_mask=mask, use_causal_mask=causal))
    # Keras gives a query with no visible key uniform attention; ours a zero row.
    seen = (mask & (np.tril(np.ones((T, value.shape[1]), bool)) if causal else mask)).any(-1)
    np.testing.assert_allclose(got[seen], expected[seen], atol=1e-5)
    # The cache holds the key/value heads only: num_heads / kv_heads times smaller.
    assert tuple(ours.initial_cache(B, 10).shape) == (B, 2, 10, kv_heads, D // 4)


def test_gated_feed_forward_by_formula():
    x = rng.normal(size=(B, T, D)).astype("float32")
    for name, act in (("swiglu", lambda z: z / (1 + np.exp(-z))),
                      ("geglu", lambda z: _np(keras.activations.gelu(z)))):
        ffn = PositionwiseFFN(32, activation=name)
        out = _np(ffn(x))
        (w1, b1), (wg, bg), (w2, b2) = (
            (_np(layer.kernel), _np(layer.bias))
            for layer in (ffn._inner_dense, ffn._gate_dense, ffn._output_dense))
        expected = (act(x @ wg + bg) * (x @ w1 + b1)) @ w2 + b2
        np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
        assert PositionwiseFFN.from_config(ffn.get_config()).gated


def test_gated_experts_equal_the_dense_mixture():
    # Capacity for every token: the sparse dispatch equals every expert weighted
    # by the renormalized top-2 gates.
    x = rng.normal(size=(B, T, D)).astype("float32")
    layer = MoE(num_experts=4, expert_dim=8, top_k=2, activation="swiglu", capacity_factor=4.0)
    out = _np(layer(x, training=False))
    routing = layer.compute_routing(x)
    gates = np.zeros((B, T, 4), "float32")
    np.put_along_axis(gates, _np(routing["expert_index"]), _np(routing["gates"]), axis=-1)
    w = {v.name: _np(v) for v in layer.trainable_weights}
    silu = lambda z: z / (1 + np.exp(-z))  # noqa: E731
    hidden = (silu(np.einsum("btd,edf->btef", x, w["gate_kernel"]) + w["gate_bias"])
              * (np.einsum("btd,edf->btef", x, w["inner_kernel"]) + w["inner_bias"]))
    experts = np.einsum("btef,efd->bted", hidden, w["output_kernel"]) + w["output_bias"]
    np.testing.assert_allclose(out, np.einsum("bte,bted->btd", gates, experts), atol=1e-4)


def test_blocks_take_the_options_and_round_trip():
    options = dict(norm="rms", activation="swiglu", num_key_value_heads=2, rotary=True)
    x = rng.normal(size=(B, T, D)).astype("float32")
    for block in (EncoderBlock(4, 32, **options), DecoderBlock(4, 32, **options)):
        out = _np(block(x))
        clone = block.__class__.from_config(block.get_config())
        clone(x)
        clone.set_weights(block.get_weights())
        np.testing.assert_allclose(_np(clone(x)), out, atol=1e-5)
        assert isinstance(block._self_attention_norm, RMSNormalization)
        assert block._self_attention.num_key_value_heads == 2 and block._self_attention.rotary
    with pytest.raises(ValueError, match="num_key_value_heads"):
        DecoderBlock(4, 32, num_key_value_heads=3)
    with pytest.raises(ValueError, match="norm"):
        DecoderBlock(4, 32, norm="batch")


MIXTRAL_LIKE = dict(vocab_size=40, max_length=16, embed_dim=32, num_heads=4,
                    num_key_value_heads=2, ffn_dim=48, num_decoder_layers=2, dropout=0.0,
                    norm_first=True, norm="rms", activation="swiglu", positions="rotary",
                    tie_embeddings=False, moe={"num_experts": 4, "top_k": 2}, moe_every=2)


def test_a_mixtral_shaped_decoder_is_causal_caches_and_reloads(tmp_path):
    keras.utils.set_random_seed(0)
    model = build_causal_lm(TransformerConfig(**MIXTRAL_LIKE))
    ids = rng.integers(4, 40, size=(3, 12)).astype("int32")
    changed = ids.copy()
    changed[:, 7:] = rng.integers(4, 40, size=(3, 5))
    a, b = _np(model(ids)), _np(model(changed))
    np.testing.assert_allclose(a[:, :7], b[:, :7], atol=1e-5)  # no causal leakage
    assert not np.allclose(a[:, 7:], b[:, 7:])
    # Cached decoding (rotary positions from the cache index) ≡ full passes.
    prompts = ids[:, :3]
    cached, _ = IdDecoder(model, max_length=15)(prompts)
    np.testing.assert_array_equal(cached, greedy_generate(model, prompts, 16))
    model.save(tmp_path / "mixtral.keras")
    restored = keras.saving.load_model(tmp_path / "mixtral.keras")
    np.testing.assert_allclose(_np(restored(ids)), a, atol=1e-5)
    assert restored.get_layer("decoder_block_1")._feedforward.gated


@tensorflow_only
def test_a_mixtral_shaped_decoder_exports_and_serves(tmp_path):
    from keras_transformer.generation import DecodingConfig, TextGenerator
    from tests.helpers import check_export_and_serve, character_tokenizer

    keras.utils.set_random_seed(1)
    model = build_causal_lm(TransformerConfig(**dict(MIXTRAL_LIKE, vocab_size=128)))
    generator = TextGenerator(model, character_tokenizer(), max_length=16,
                              decoding=DecodingConfig("greedy"))
    check_export_and_serve(generator, ["ab", "hello", "x"], "prompt", "text", tmp_path)
