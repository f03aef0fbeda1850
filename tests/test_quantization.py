"""Int8 weights: every projection and token table, kept through `.keras`, decoded."""

import json
import warnings

import keras
import numpy as np
import pytest

from keras_transformer._keras_compat import all_layers
from keras_transformer.generation import IdDecoder
from keras_transformer.layers import MultiHeadAttention, PositionalEmbedding, PositionwiseFFN
from keras_transformer.models import (
    TransformerConfig,
    build_causal_lm,
    build_transformer,
    quantize,
)
from keras_transformer.models.precision import dtype_policy
from tests.backend import tensorflow_only

# Runs under every Keras backend (CI: TensorFlow, then JAX); see tests/conftest.py.
pytestmark = pytest.mark.backend_neutral

V, L = 60, 16
SIZES = dict(vocab_size=V, max_length=L, embed_dim=32, num_heads=4, ffn_dim=64,
             num_decoder_layers=2, dropout=0.0)


def _relative_error(ours, reference):
    ours, reference = np.asarray(ours, "float64"), np.asarray(reference, "float64")
    return np.abs(ours - reference).max() / np.abs(reference).max()


def test_the_token_table_in_int8_looks_up_and_projects_close_to_float32():
    keras.utils.set_random_seed(0)
    layer = PositionalEmbedding(V, L, 32)
    ids = np.array([[5, 7, 9, 0], [59, 1, 2, 3]])
    hidden = keras.random.normal((2, 4, 32))
    embedded, logits = layer(ids), layer(hidden, reverse=True)
    layer.quantize("int8")
    assert layer.token_embeddings.dtype == "int8" and layer.quantization == "int8"
    assert _relative_error(layer(ids), embedded) < 0.01
    assert _relative_error(layer(hidden, reverse=True), logits) < 0.02
    assert layer.get_config()["quantization"] == "int8"
    with pytest.raises(NotImplementedError, match="int8 only"):
        layer.quantize("int4")


def test_layers_built_with_quantization_hold_int8_kernels_and_say_so():
    attention = MultiHeadAttention(num_heads=4, quantization="int8")
    attention(keras.random.normal((2, 5, 32)))
    ffn = PositionwiseFFN(64, activation="swiglu", quantization="int8")
    ffn(keras.random.normal((2, 5, 32)))
    for layer in (attention, ffn):
        assert layer.get_config()["quantization"] == "int8"
        kernels = [v for v in layer.weights if "kernel" in v.path and "scale" not in v.path]
        assert kernels and all(v.dtype == "int8" for v in kernels)
    with pytest.raises(ValueError, match="`quantization` must be None or one of"):
        MultiHeadAttention(num_heads=4, quantization="int4")
    # Quantized by Keras itself (model.quantize reaches the projections):
    # the configuration reports what the projections are.
    plain = PositionwiseFFN(64)
    plain(keras.random.normal((2, 5, 32)))
    assert plain.get_config()["quantization"] is None
    plain._inner_dense.quantize("int8")
    with pytest.raises(ValueError, match="quantized differently"):
        plain.get_config()
    plain._output_dense.quantize("int8")
    assert plain.get_config()["quantization"] == "int8"


@pytest.mark.parametrize("build, inputs, options", [
    (build_transformer, "pair", {"source_vocab_size": V, "num_encoder_layers": 2}),
    (build_causal_lm, "ids", {"positions": "rotary", "num_key_value_heads": 2}),
    (build_causal_lm, "ids", {"tie_embeddings": False, "positions": "learned"}),
], ids=["encoder-decoder", "causal-rotary-gqa", "causal-untied"])
def test_a_quantized_model_is_int8_throughout_reloads_and_decodes(build, inputs, options,
                                                                  tmp_path):
    keras.utils.set_random_seed(0)
    model = build(TransformerConfig(**SIZES, norm_first=True, norm="rms",
                                    activation="swiglu", **options))
    rng = np.random.default_rng(0)
    ids = rng.integers(4, V, size=(3, 6)).astype("int32")
    x = [ids, ids] if inputs == "pair" else ids
    reference = np.asarray(model(x))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # none for the norms and dropouts
        assert quantize(model) is model
    quantized = np.asarray(model(x))
    assert _relative_error(quantized, reference) < 0.05
    # Every projection and every token table is int8.
    for layer in all_layers(model):
        if isinstance(layer, (keras.layers.Dense, keras.layers.EinsumDense)):
            assert layer.quantization_mode == "int8", layer.path
        if isinstance(layer, PositionalEmbedding):
            assert layer.token_embeddings.dtype == "int8", layer.path
    path = str(tmp_path / "quantized.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(np.asarray(reloaded(x)), quantized)
    assert sum(v.dtype == "int8" for v in reloaded.weights) == sum(
        v.dtype == "int8" for v in model.weights)
    if inputs == "pair":
        ours, theirs = IdDecoder(model, 8)(ids)[0], IdDecoder(reloaded, 8)(ids)[0]
    else:
        lengths = np.array([1, 3, 6])
        ours = IdDecoder(model, 8)(ids, lengths)[0]
        theirs = IdDecoder(reloaded, 8)(ids, lengths)[0]
    np.testing.assert_array_equal(ours, theirs)


def test_what_stays_float32_is_said():
    keras.utils.set_random_seed(0)
    model = build_causal_lm(TransformerConfig(**SIZES, moe={"num_experts": 2}))
    with pytest.warns(UserWarning, match=r"MoE layers \['decoder_block_1_moe'\] stay float32"):
        quantize(model)
    with dtype_policy("mixed_bfloat16"):
        mixed = build_causal_lm(TransformerConfig(**SIZES))
    with pytest.raises(ValueError, match="float32_copy"):
        quantize(mixed)
    with pytest.raises(ValueError, match=r"`mode` must be one of \('int8',\)"):
        quantize(model, "int4")


@tensorflow_only
def test_an_int8_saved_model_translates_as_the_quantized_translator(tmp_path, capsys):
    import tensorflow as tf

    from keras_transformer import cli
    from keras_transformer.data import generate_pairs
    from keras_transformer.data import tokenizers as tk
    from keras_transformer.export import export_saved_model
    from keras_transformer.generation import DecodingConfig, load_translator

    pairs = generate_pairs(300, seed=0)
    source = tk.train_wordpiece([en for en, _ in pairs], 200)
    target = tk.train_wordpiece([es for _, es in pairs], 200)
    keras.utils.set_random_seed(0)
    model = build_transformer(TransformerConfig(
        vocab_size=target.vocabulary_size(), source_vocab_size=source.vocabulary_size(),
        max_length=16, embed_dim=32, num_heads=2, ffn_dim=64, num_encoder_layers=1,
        num_decoder_layers=1, dropout=0.0))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    model.save(str(run_dir / "best.keras"))
    tk.save_tokenizer(source, str(run_dir / "source_vocabulary"))
    tk.save_tokenizer(target, str(run_dir / "target_vocabulary"))
    (run_dir / "config.json").write_text(json.dumps({"max_length": 16}))

    translator = load_translator(str(run_dir), quantization="int8",
                                 decoding=DecodingConfig("beam", beam_size=2))
    assert translator.model.get_layer("target_embedding").token_embeddings.dtype == "int8"
    texts = tf.constant(["twenty-one books", "seven houses", ""])
    expected = translator.translate(texts)
    served = tf.saved_model.load(export_saved_model(translator, str(tmp_path / "int8")))
    answer = served.signatures["serving_default"](text=texts)
    np.testing.assert_array_equal(answer["token_ids"].numpy(), expected["token_ids"].numpy())
    assert any(v.dtype == tf.int8 for v in served._model_variables)

    saved = tmp_path / "saved_models"
    assert cli.main(["export", str(run_dir), "--name", "int8", "--saved-models", str(saved),
                     "--quantize", "int8", "--beam-size", "2"]) == 0
    capsys.readouterr()
    cli.main(["translate", str(saved / "int8"), "twenty-one books"])
    assert capsys.readouterr().out.splitlines() == [
        expected["translation"].numpy()[0].decode("utf-8")]
