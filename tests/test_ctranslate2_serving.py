"""A CTranslate2 directory served like the SavedModel: same strings, same REST API."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_transformer import cli
from keras_transformer.data import tokenizers as tk
from keras_transformer.generation import DecodingConfig, TextGenerator
from keras_transformer.models import TransformerConfig, build_causal_lm

pytest.importorskip("ctranslate2")
from keras_transformer.export import export_ctranslate2  # noqa: E402
from keras_transformer.export.ctranslate2_serving import CTranslate2Model  # noqa: E402
from keras_transformer.export.server import ModelServer  # noqa: E402
from tests.helpers import make_translator  # noqa: E402

TEXTS = ["twenty-one books", "¿Dónde está el niño?", "", "seven plus five is twelve " * 40]


@pytest.fixture(scope="module")
def translator():
    return make_translator(DecodingConfig(), norm_first=True, norm="rms", activation="swiglu")


def _strings(tensor):
    return [t.decode("utf-8") for t in tensor.numpy()]


def test_a_ctranslate2_directory_translates_as_the_translator_does(translator, tmp_path):
    path = export_ctranslate2(translator, str(tmp_path / "translator"))
    assert path.endswith("/1")
    served = CTranslate2Model(path)
    ours = translator.translate(tf.constant(TEXTS))
    theirs = served.signatures["serving_default"](text=tf.constant(TEXTS))
    assert _strings(theirs["translation"]) == _strings(ours["translation"])
    np.testing.assert_array_equal(theirs["token_ids"].numpy(), ours["token_ids"].numpy())
    # Greedy scores: summed log-probabilities, [END] included; CTranslate2's
    # are taken after [PAD] is suppressed (renormalized without it), so they
    # are higher by the mass the model gives [PAD], never lower.
    ours_scores, their_scores = ours["scores"].numpy(), theirs["scores"].numpy()
    assert np.all(their_scores >= ours_scores - 1e-4)
    np.testing.assert_allclose(their_scores, ours_scores, rtol=0.02)
    assert _strings(theirs["translation"])[2] == "" and theirs["scores"].numpy()[2] == 0
    ids = served.signatures["translate_ids"](source_ids=translator.tokenize(tf.constant(TEXTS)))
    np.testing.assert_array_equal(ids["token_ids"].numpy(), ours["token_ids"].numpy())
    with pytest.raises(tf.errors.InvalidArgumentError, match="source vocabulary size"):
        served.translate_ids(np.array([[10_000]], "int32"))


def test_a_ctranslate2_directory_generates_as_the_text_generator_does(tmp_path):
    import keras_hub

    tokenizer = keras_hub.tokenizers.UnicodeCodepointTokenizer(vocabulary_size=128)
    keras.utils.set_random_seed(0)
    model = build_causal_lm(TransformerConfig(
        vocab_size=128, max_length=24, embed_dim=32, num_heads=4, ffn_dim=64,
        num_decoder_layers=2, dropout=0.0, norm_first=True, norm="rms", activation="swiglu",
        positions="rotary", num_key_value_heads=2))
    generator = TextGenerator(model, tokenizer, max_length=24, decoding=DecodingConfig())
    served = CTranslate2Model(export_ctranslate2(generator, str(tmp_path / "generator")))
    prompts = tf.constant(["ROMEO:", "a", "What light through yonder window breaks? " * 2])
    ours = generator.generate_text(prompts)
    theirs = served.signatures["serving_default"](prompt=prompts)
    assert _strings(theirs["text"]) == _strings(ours["text"])
    np.testing.assert_array_equal(theirs["token_ids"].numpy(), ours["token_ids"].numpy())
    with pytest.raises(tf.errors.InvalidArgumentError, match="empty prompt"):
        served.generate_text(tf.constant([""]))


def test_the_server_answers_from_a_ctranslate2_directory_with_the_same_api(translator,
                                                                           tmp_path):
    base = tmp_path / "served"
    export_ctranslate2(translator, str(base))
    server = ModelServer(str(base))
    try:
        body = json.dumps({"instances": TEXTS[:2]}).encode()
        predictions = server.predict("served", None, body)["predictions"]
        expected = _strings(translator.translate(tf.constant(TEXTS[:2]))["translation"])
        assert [p["translation"] for p in predictions] == expected
        assert set(predictions[0]) == {"translation", "token_ids", "scores"}
        assert server.status("served", None)["model_version_status"][0]["state"] == "AVAILABLE"
    finally:
        server.close()


def test_export_format_ctranslate2_then_translate_through_the_command(translator, tmp_path,
                                                                      capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    translator.model.save(str(run_dir / "best.keras"))
    tk.save_tokenizer(translator.source_tokenizer, str(run_dir / "source_vocabulary"))
    tk.save_tokenizer(translator.target_tokenizer, str(run_dir / "target_vocabulary"))
    (run_dir / "config.json").write_text(json.dumps({"max_length": 16}))
    saved = tmp_path / "saved_models"
    assert cli.main(["export", str(run_dir), "--name", "ct2", "--saved-models", str(saved),
                     "--format", "ctranslate2", "--beam-size", "1"]) == 0
    assert (saved / "ct2" / "1" / "model.bin").exists()
    capsys.readouterr()
    cli.main(["translate", str(saved / "ct2"), *TEXTS[:2]])
    assert capsys.readouterr().out.splitlines() == _strings(
        translator.translate(tf.constant(TEXTS[:2]))["translation"])
    # CTranslate2's own int8: the float32 weights quantized by the engine.
    assert cli.main(["export", str(run_dir), "--name", "ct2", "--saved-models", str(saved),
                     "--format", "ctranslate2", "--quantize", "int8"]) == 0
    with open(saved / "ct2" / "2" / "serving_config.json") as handle:
        assert json.load(handle)["quantization"] == "int8"
    from keras_transformer.models import quantize

    with pytest.raises(ValueError, match="has int8 layers"):
        export_ctranslate2(type(translator)(
            quantize(keras.models.clone_model(translator.model)), translator.source_tokenizer,
            translator.target_tokenizer, max_length=16), str(tmp_path / "refused"))
