"""The Llama family from keras-hub rebuilt from the layers (`from_keras_hub`):
Llama, Llama 3.1 (frequency adjustment), Mistral (sliding window, linear
rotary scaling), Qwen2 (query/key/value biases, tied output): the same
logits, the same greedy tokens as keras-hub's `CausalLM.generate`, and the
package's cached greedy equal to its full-pass greedy."""

import keras
import keras_hub
import numpy as np
import pytest

from keras_transformer.data import SpecialIds
from keras_transformer.generation import DecodingConfig, IdDecoder, greedy_generate
from keras_transformer.models import from_keras_hub, read_structure

VOCABULARY = 60
SMALL = dict(vocabulary_size=VOCABULARY, num_layers=2, num_query_heads=4, hidden_dim=32,
             intermediate_dim=48, num_key_value_heads=2, layer_norm_epsilon=1e-5)
FAMILIES = {
    "llama": lambda: keras_hub.models.LlamaBackbone(**SMALL, rope_max_wavelength=500),
    # keras-hub's Llama rotary layer ignores the position scaling factor.
    "llama_position_scaling": lambda: keras_hub.models.LlamaBackbone(
        **SMALL, rope_position_scaling_factor=4.0),
    # head_dim 8, wavelengths 6.3, 63, 628, 6283 against 64 / 1 and 64 / 4:
    # one kept, one blended, two divided.
    "llama3_1": lambda: keras_hub.models.Llama3Backbone(
        **SMALL, rope_max_wavelength=10000, rope_frequency_adjustment_factor=8.0,
        rope_low_freq_factor=1.0, rope_high_freq_factor=4.0,
        rope_pretraining_sequence_length=64),
    "mistral": lambda: keras_hub.models.MistralBackbone(
        **SMALL, sliding_window=3, rope_scaling_factor=2.0),
    "qwen2": lambda: keras_hub.models.QwenBackbone(**SMALL, tie_word_embeddings=True),
}
CAUSAL_LM = {"llama": "LlamaCausalLM", "llama_position_scaling": "LlamaCausalLM",
             "llama3_1": "Llama3CausalLM", "mistral": "MistralCausalLM",
             "qwen2": "QwenCausalLM"}


def small_backbone(family):
    keras.utils.set_random_seed(0)
    backbone = FAMILIES[family]()
    # Random norms and biases too, so that one left at its initial value shows;
    # kernels larger than keras-hub's 0.02, so that attention is far from
    # uniform and the rotary details (wavelength, scaling, window) show.
    rng = np.random.default_rng(1)
    for weight in backbone.weights:
        if "layernorm" in weight.path or "bias" in weight.path:
            weight.assign(rng.normal(1.0, 0.2, weight.shape))
        elif "kernel" in weight.path:
            weight.assign(rng.normal(0.0, 0.25, weight.shape))
    return backbone


def hub_logits(backbone, ids, padding):
    hidden = backbone({"token_ids": ids, "padding_mask": padding})
    return keras.ops.convert_to_numpy(backbone.token_embedding(hidden, reverse=True))


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family_preset(request, tmp_path_factory):
    backbone = small_backbone(request.param)
    path = tmp_path_factory.mktemp("presets") / request.param
    backbone.save_to_preset(str(path))
    return request.param, backbone, str(path)


def test_a_llama_family_preset_gives_keras_hub_logits(family_preset):
    family, backbone, path = family_preset
    model = from_keras_hub(path)
    ids = np.random.default_rng(2).integers(0, VOCABULARY, size=(3, 10)).astype("int32")
    ids[0, :2] = 0  # id 0 is a real token
    padding = np.ones_like(ids)
    padding[1, 6:] = 0  # right padding
    ours = keras.ops.convert_to_numpy(model(ids))
    theirs = hub_logits(backbone, ids, padding)
    real = padding.astype(bool)
    np.testing.assert_allclose(ours[real], theirs[real], atol=1e-4)
    assert np.abs(theirs).max() > 0.1  # not a degenerate comparison
    block = read_structure(model).decoder.blocks[0]
    assert block.norm == "rms" and block.num_key_value_heads == 2 and block.rotary
    assert block.use_bias == ("qkv" if family == "qwen2" else False)


def test_a_llama_family_model_generates_what_keras_hub_generates(family_preset):
    family, backbone, _ = family_preset
    special = SpecialIds(start=1, end=2, pad=0, unknown=None, suppressed=(),
                         prompt_start=True, stripped=())
    task = getattr(keras_hub.models, CAUSAL_LM[family])(backbone=backbone, preprocessor=None)
    task.compile(sampler="greedy")
    prompts = np.array([[1, 7, 9, 11], [1, 5, 0, 0], [1, 30, 31, 0]], "int32")
    lengths = np.array([4, 2, 3], "int32")
    width = 14
    token_ids = np.pad(prompts, ((0, 0), (0, width - prompts.shape[1])))
    padding = (np.arange(width)[None] < lengths[:, None]).astype("int32")
    theirs = task.generate({"token_ids": token_ids, "padding_mask": padding},
                           stop_token_ids=(special.end,))
    theirs = np.asarray(theirs["token_ids"])
    model = from_keras_hub(backbone)
    decoder = IdDecoder(model, max_length=width - 1, decoding=DecodingConfig("greedy"),
                        special_ids=special)
    ours, _ = decoder(prompts, lengths)
    generated = 0
    for row in range(len(prompts)):
        expected = theirs[row, 1:].tolist()
        if special.end in expected:  # keras-hub leaves what follows the end as it was
            expected = expected[: expected.index(special.end) + 1]
        assert ours[row, : len(expected)].tolist() == expected
        generated += len(expected) - (lengths[row] - 1)
    assert generated > 3  # not a degenerate comparison
    # The package's cached greedy equals its full-pass greedy.
    np.testing.assert_array_equal(ours[:1], greedy_generate(model, prompts[:1], width,
                                                            special))


def test_the_llama_family_options_reach_the_layers(family_preset):
    family, backbone, _ = family_preset
    model = from_keras_hub(backbone, max_length=64)
    attention = read_structure(model).decoder.blocks[0]._self_attention
    assert model.max_length == 64 and model.special_ids is None
    if family == "llama3_1":
        assert attention.rotary_scaling["rope_type"] == "llama3"
    elif family == "mistral":
        assert attention.rotary_scaling == {"rope_type": "linear", "factor": 2.0}
        assert attention.sliding_window == 3
    else:
        assert attention.rotary_scaling is None and attention.sliding_window is None
    # The configuration travels through saving.
    config = attention.get_config()
    again = type(attention).from_config(config)
    assert again.rotary_scaling == attention.rotary_scaling
    assert again.use_bias == attention.use_bias


def small_bart():
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.BartBackbone(
        vocabulary_size=VOCABULARY, num_layers=2, num_heads=2, hidden_dim=16,
        intermediate_dim=32, max_sequence_length=16, dropout=0.0)
    rng = np.random.default_rng(1)
    for weight in backbone.weights:
        if "layer_norm" in weight.path or "bias" in weight.path or "beta" in weight.path:
            weight.assign(rng.normal(1.0, 0.2, weight.shape))
        elif "kernel" in weight.path:
            weight.assign(rng.normal(0.0, 0.3, weight.shape))
    return backbone


def test_bart_becomes_a_translator_shaped_model_with_keras_hubs_logits(tmp_path):
    backbone = small_bart()
    backbone.save_to_preset(str(tmp_path / "bart"))
    model = from_keras_hub(str(tmp_path / "bart"))
    assert model.is_encoder_decoder
    # BART's vocabulary: <s>=0 (not shown), <pad>=1, </s>=2 starts and ends.
    assert model.special_ids == SpecialIds(start=2, end=2, pad=1, unknown=None,
                                           suppressed=(1,), stripped=(0,))
    rng = np.random.default_rng(2)
    source = rng.integers(3, VOCABULARY, size=(3, 9)).astype("int32")
    source[:, 0] = 0  # <s>, a real token
    source[1, 5:] = 1  # padding
    target = rng.integers(3, VOCABULARY, size=(3, 7)).astype("int32")
    target[:, 0] = 2
    target[2, 4:] = 1
    source_padding, target_padding = (source != 1).astype("int32"), (target != 1)
    hidden = backbone({"encoder_token_ids": source, "encoder_padding_mask": source_padding,
                       "decoder_token_ids": target,
                       "decoder_padding_mask": target_padding.astype("int32")})
    theirs = keras.ops.convert_to_numpy(
        backbone.token_embedding(hidden["decoder_sequence_output"], reverse=True))
    ours = keras.ops.convert_to_numpy(model([source, target]))
    np.testing.assert_allclose(ours[target_padding], theirs[target_padding], atol=1e-4)
    assert np.abs(theirs).max() > 0.1
    # The package's cached greedy equals its full-pass greedy, padding masked.
    from keras_transformer.generation import greedy_translate

    ids, _ = IdDecoder(model, max_length=10, decoding=DecodingConfig("greedy"))(source)
    np.testing.assert_array_equal(ids, greedy_translate(model, source, 10,
                                                        special_ids=model.special_ids))
    with pytest.raises(ValueError, match="encoder–decoder"):
        from keras_transformer.models import import_preset

        import_preset(str(tmp_path / "bart"), str(tmp_path / "run"),
                      tokenizer=object())


def sentencepiece_llama_tokenizer():
    """A SentencePiece vocabulary of Llama's kind (<unk>=0, <s>=1, </s>=2), trained here."""
    import io

    import sentencepiece

    from keras_transformer.data import generate_pairs

    proto = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter([english for english, _ in generate_pairs(300, seed=0)]),
        model_writer=proto, vocab_size=VOCABULARY, model_type="bpe", unk_id=0, bos_id=1,
        eos_id=2, pad_id=-1, minloglevel=2)
    return keras_hub.models.LlamaTokenizer(proto=proto.getvalue())


def test_a_llama_with_its_sentencepiece_tokenizer_exports_and_serves_text(tmp_path):
    from keras_transformer.data import tokenizers as tk
    from keras_transformer.generation import TextGenerator
    from tests.helpers import check_export_and_serve

    tokenizer = sentencepiece_llama_tokenizer()
    # `small_backbone` seeds TensorFlow after the tokenizer is made, which
    # clears the eager kernels that own its tensorflow-text resource: the
    # generator must make it again (`tokenizers.ready_for_graphs`).
    model = from_keras_hub(small_backbone("llama"), tokenizer=tokenizer, max_length=16)
    assert (model.special_ids.start, model.special_ids.end) == (1, 2)
    # The run directory keeps it in keras-hub's preset layout.
    tk.save_tokenizer(tokenizer, str(tmp_path / "tokenizer"))
    again = tk.load_tokenizer(str(tmp_path / "tokenizer"))
    assert np.asarray(again("one book")).tolist() == np.asarray(tokenizer("one book")).tolist()
    generator = TextGenerator(model, tokenizer, max_length=12,
                              decoding=DecodingConfig("greedy"))
    check_export_and_serve(generator, ["one book", "three houses", ""], "prompt", "text",
                           tmp_path)
