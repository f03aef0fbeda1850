"""keras-hub backbones rebuilt from the layers: the same logits, and the package's
cached decoding on them (`keras_transformer.models.from_keras_hub`)."""

import keras
import keras_hub
import numpy as np
import pytest

import tensorflow as tf

from keras_transformer.data import SpecialIds
from keras_transformer.generation import DecodingConfig, IdDecoder, TextGenerator, greedy_generate
from keras_transformer.models import from_keras_hub, read_structure
from tests.helpers import gpt2_tokenizer, small_gpt2


def hub_logits(backbone, ids, padding):
    hidden = backbone({"token_ids": ids, "padding_mask": padding})
    return keras.ops.convert_to_numpy(backbone.token_embedding(hidden, reverse=True))


@pytest.fixture(scope="module")
def gpt2_preset(tmp_path_factory):
    backbone = small_gpt2()
    path = tmp_path_factory.mktemp("presets") / "gpt2_small"
    backbone.save_to_preset(str(path))
    return backbone, str(path)


def test_gpt2_from_a_preset_gives_keras_hub_logits(gpt2_preset):
    backbone, path = gpt2_preset
    model = from_keras_hub(path)
    ids = np.random.default_rng(2).integers(0, 50, size=(3, 10)).astype("int32")
    ids[0, :2] = 0  # id 0 is a real token here (GPT-2's "!")
    padding = np.ones_like(ids)
    padding[1, 6:] = 0  # right padding: real positions see no padded key
    ours = keras.ops.convert_to_numpy(model(ids))
    theirs = hub_logits(backbone, ids, padding)
    real = padding.astype(bool)
    np.testing.assert_allclose(ours[real], theirs[real], atol=1e-4)
    assert np.abs(theirs).max() > 0.1  # not a degenerate comparison


def test_gpt2_from_a_backbone_or_a_task_is_the_same_model(gpt2_preset):
    backbone, _ = gpt2_preset
    ids = np.arange(1, 9, dtype="int32")[None]
    from_backbone = keras.ops.convert_to_numpy(from_keras_hub(backbone)(ids))
    task = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(from_keras_hub(task)(ids)),
                                  from_backbone)


def test_an_imported_gpt2_decodes_with_the_cache_as_with_full_passes(gpt2_preset):
    backbone, _ = gpt2_preset
    model = from_keras_hub(backbone)
    structure = read_structure(model)
    assert len(structure.decoder.blocks) == 2 and structure.encoder is None
    prompts = np.random.default_rng(3).integers(4, 50, size=(4, 3)).astype("int32")
    cached, _ = IdDecoder(model, max_length=9, decoding=DecodingConfig("greedy"))(prompts)
    np.testing.assert_array_equal(np.asarray(cached),
                                  greedy_generate(model, prompts, 10, model.special_ids))


def test_a_backbone_it_cannot_import_is_named():
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=20, num_layers=1, num_heads=2, hidden_dim=8, intermediate_dim=16,
        max_sequence_length=8)
    with pytest.raises(ValueError, match="BertBackbone: .*nothing to decode.*GPT2Backbone"):
        from_keras_hub(backbone)
    t5 = keras_hub.models.T5Backbone(vocabulary_size=20, num_layers=1, num_heads=2,
                                     hidden_dim=8, intermediate_dim=16, key_value_dim=4)
    with pytest.raises(ValueError, match="T5Backbone: .*relative position bias"):
        from_keras_hub(t5)
    gemma2 = keras_hub.models.GemmaBackbone(
        vocabulary_size=20, num_layers=1, num_query_heads=2, num_key_value_heads=1,
        hidden_dim=8, intermediate_dim=16, head_dim=4, attention_logit_soft_cap=50.0,
        final_logit_soft_cap=30.0)
    with pytest.raises(ValueError, match="GemmaBackbone: .*soft-capping"):
        from_keras_hub(gemma2)
    with pytest.raises(TypeError, match="Received: int"):
        from_keras_hub(3)


def test_an_imported_gpt2_saves_and_reloads(gpt2_preset, tmp_path):
    backbone, _ = gpt2_preset
    model = from_keras_hub(backbone)
    model.save(tmp_path / "gpt2.keras")
    reloaded = keras.saving.load_model(tmp_path / "gpt2.keras")
    ids = np.array([[0, 4, 9, 16, 25]], "int32")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(reloaded(ids)),
                               keras.ops.convert_to_numpy(model(ids)), atol=1e-6)


def test_an_imported_gpt2_takes_its_special_ids_from_the_tokenizer_or_the_family(
        gpt2_preset, tmp_path):
    backbone, _ = gpt2_preset
    gpt2 = SpecialIds(start=49, end=49, pad=49, unknown=None, suppressed=(),
                      prompt_start=True, stripped=())
    assert from_keras_hub(backbone).special_ids == gpt2  # the family's convention
    tokenizer = gpt2_tokenizer()
    task = keras_hub.models.GPT2CausalLM(
        backbone=backbone,
        preprocessor=keras_hub.models.GPT2CausalLMPreprocessor(tokenizer, sequence_length=8))
    assert from_keras_hub(task).special_ids == gpt2
    task.save_to_preset(str(tmp_path / "task"))
    assert from_keras_hub(str(tmp_path / "task")).special_ids == gpt2


@pytest.mark.parametrize("batch", [["ab cd"], ["ab cd", "gh", "a b c d e"]])
def test_an_imported_gpt2_generates_what_keras_hub_generates(gpt2_preset, batch):
    backbone, _ = gpt2_preset
    tokenizer = gpt2_tokenizer()
    task = keras_hub.models.GPT2CausalLM(
        backbone=backbone,
        preprocessor=keras_hub.models.GPT2CausalLMPreprocessor(tokenizer, sequence_length=12))
    task.compile(sampler="greedy")
    theirs = task.generate(batch, max_length=12)
    generator = TextGenerator(from_keras_hub(task), tokenizer, max_length=12,
                              decoding=DecodingConfig("greedy"))
    ours = generator.generate_text(tf.constant(batch))["text"].numpy()
    assert [text.decode() for text in ours] == list(theirs)
    # Not a degenerate comparison: something was generated past the prompts.
    assert any(len(t) > len(p) for t, p in zip(theirs, batch))


def test_an_imported_gpt2_with_its_tokenizer_exports_and_serves_text(gpt2_preset, tmp_path):
    from tests.helpers import check_export_and_serve

    backbone, _ = gpt2_preset
    tokenizer = gpt2_tokenizer()
    generator = TextGenerator(from_keras_hub(backbone, tokenizer=tokenizer), tokenizer,
                              max_length=10, decoding=DecodingConfig("greedy"))
    check_export_and_serve(generator, ["ab cd", "gh", ""], "prompt", "text", tmp_path)
