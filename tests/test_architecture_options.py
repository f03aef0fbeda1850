"""The options pretrained architectures need, layer by layer: the rotary
wavelength and frequency scaling (linear, Llama 3.1's), Mistral's sliding
window, Qwen2's query/key/value-only biases, Llama's bias-free projections."""

import numpy as np
import pytest
from keras import ops

from keras_transformer import DecoderBlock, MultiHeadAttention
from keras_transformer.layers import BlockOptions
from keras_transformer.layers.masks import causal_mask
from keras_transformer.layers.rotary import check_scaling, inverse_frequencies
from keras_transformer.models import TransformerConfig, build_causal_lm
from tests.layer_checks import run_layer_checks

# Runs under every Keras backend (CI: TensorFlow, then JAX); see tests/conftest.py.
pytestmark = pytest.mark.backend_neutral

LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 64}


def test_sliding_window_keeps_the_most_recent_keys_itself_included():
    mask = ops.convert_to_numpy(causal_mask(4, 6, offset=2, sliding_window=2))[0]
    expected = [[0, 1, 1, 0, 0, 0],   # query at position 2 sees 1 and 2
                [0, 0, 1, 1, 0, 0],
                [0, 0, 0, 1, 1, 0],
                [0, 0, 0, 0, 1, 1]]
    np.testing.assert_array_equal(mask, np.array(expected, bool))


def test_rotary_frequencies_by_formula():
    plain = ops.convert_to_numpy(inverse_frequencies(8, 10000))
    np.testing.assert_allclose(plain, 10000.0 ** -(np.arange(0, 8, 2) / 8), rtol=1e-6)
    linear = inverse_frequencies(8, 10000, {"rope_type": "linear", "factor": 4.0})
    np.testing.assert_allclose(ops.convert_to_numpy(linear), plain / 4, rtol=1e-6)
    # Wavelengths 6.3 (kept), 63 (blended), 628 and 6283 (divided by 8).
    llama3 = ops.convert_to_numpy(inverse_frequencies(8, 10000, LLAMA3))
    smooth = (64 / (2 * np.pi / plain[1]) - 1) / 3
    expected = [plain[0], (1 - smooth) * plain[1] / 8 + smooth * plain[1], plain[2] / 8,
                plain[3] / 8]
    np.testing.assert_allclose(llama3, expected, rtol=1e-5)


@pytest.mark.parametrize("scaling, message", [
    ({"rope_type": "yarn", "factor": 2}, "rope_type` one of"),
    ({"rope_type": "linear"}, r"takes exactly \['factor'\]"),
    ({"rope_type": "linear", "factor": 0}, "must be > 0"),
    ({**LLAMA3, "high_freq_factor": 0.5}, "must exceed"),
])
def test_bad_rotary_scaling_is_refused_with_what_was_received(scaling, message):
    with pytest.raises(ValueError, match=message):
        check_scaling(scaling)
    with pytest.raises(ValueError, match=message):
        BlockOptions(num_heads=2, ffn_dim=8, rotary=True, rotary_scaling=scaling)


def test_biases_everywhere_nowhere_or_in_the_input_projections_only():
    x = np.random.default_rng(0).normal(size=(2, 5, 16)).astype("float32")

    def biases(use_bias):
        layer = MultiHeadAttention(4, use_bias=use_bias)
        layer(x)
        return sorted(w.path.split("/")[-2] for w in layer.weights if "bias" in w.path)

    assert biases(True) == ["attention_output", "key", "query", "value"]
    assert biases("qkv") == ["key", "query", "value"]
    assert biases(False) == []
    with pytest.raises(ValueError, match="Received: use_bias='all'"):
        MultiHeadAttention(4, use_bias="all")
    block = DecoderBlock(4, 32, use_bias=False, dropout=0.0)
    block(x)
    assert not [w for w in block.weights if "bias" in w.path and "norm" not in w.path]


def test_a_llama_shaped_block_with_every_option_passes_the_layer_checks(tmp_path):
    options = dict(num_heads=4, ffn_dim=32, norm="rms", activation="swiglu",
                   norm_first=True, num_key_value_heads=2, rotary=True,
                   rotary_max_wavelength=500, rotary_scaling=LLAMA3, sliding_window=3,
                   use_bias="qkv", dropout=0.0)
    inputs = {"decoder_sequence": np.random.default_rng(1).normal(size=(2, 6, 16))
              .astype("float32")}
    # Query, key, value: kernel and bias; output: kernel; 2 RMSNorm scales;
    # inner, gate and output kernels of the feed-forward network.
    run_layer_checks(DecoderBlock, options, inputs, expected_trainable_weights=12,
                     tmp_path=tmp_path)


@pytest.mark.parametrize("options", [
    dict(sliding_window=3),
    dict(rotary_scaling=LLAMA3, rotary_max_wavelength=10000),
    dict(rotary_scaling={"rope_type": "linear", "factor": 2.0}, use_bias="qkv"),
])
def test_cached_decoding_equals_full_passes_with_each_option(options):
    from keras_transformer.generation import DecodingConfig, IdDecoder, greedy_generate

    config = TransformerConfig(vocab_size=40, max_length=16, embed_dim=16, num_heads=4,
                               ffn_dim=32, num_encoder_layers=0, num_decoder_layers=2,
                               dropout=0.0, norm_first=True, norm="rms",
                               activation="swiglu", positions="rotary",
                               num_key_value_heads=2, **{"use_bias": False, **options})
    model = build_causal_lm(config)
    prompts = np.array([[5, 9, 11], [7, 8, 30]], "int32")
    ids, _ = IdDecoder(model, max_length=12, decoding=DecodingConfig("greedy"))(prompts)
    np.testing.assert_array_equal(ids, greedy_generate(model, prompts, 13))
