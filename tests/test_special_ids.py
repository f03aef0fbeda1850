"""Special token ids as properties of the model and the tokenizer
(`keras_transformer.data.SpecialIds`): the searches, the reference decoders,
`IdDecoder`, `Translator`, `TextGenerator`, the pipelines, the loss and the
embedding's padding mask all read them, for vocabularies whose id 0 is a real
token."""

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf

from keras_transformer.data import SpecialIds, special_ids_of
from keras_transformer.data import tokenizers as tk
from keras_transformer.data.pipelines import translation_dataset
from keras_transformer.generation import (
    DecodingConfig,
    IdDecoder,
    TextGenerator,
    Translator,
    greedy_generate,
    greedy_translate,
)
from keras_transformer.generation.search import beam_search, greedy_search, sample
from keras_transformer.layers import DecoderBlock, EncoderBlock, PositionalEmbedding
from keras_transformer.models import TransformerConfig, TransformerModel, build_causal_lm
from keras_transformer.training import MaskedSparseCategoricalCrossentropy

# A BART-like vocabulary: 0 is a real token, 1 pads, 2 starts and ends.
BART_LIKE = SpecialIds(start=2, end=2, pad=1, unknown=3, suppressed=(1,), stripped=(0,))


def test_special_ids_check_their_values_and_round_trip():
    assert SpecialIds() == SpecialIds(start=2, end=3, pad=0, unknown=1, suppressed=(0,))
    assert SpecialIds().removed == (0, 1, 2, 3)
    assert SpecialIds().label_padding == 0
    gpt2_like = SpecialIds(start=9, end=9, pad=9, suppressed=())
    assert gpt2_like.label_padding == -1  # the end token is learned, not skipped
    assert SpecialIds.from_dict(BART_LIKE.to_dict()) == BART_LIKE
    with pytest.raises(ValueError, match="end id 3 cannot be suppressed"):
        SpecialIds(suppressed=(0, 3))
    with pytest.raises(ValueError, match="`pad` must be an int >= 0. Received: pad=-1"):
        SpecialIds(pad=-1)
    with pytest.raises(ValueError, match=r"Unknown SpecialIds fields \['eos'\]"):
        SpecialIds.from_dict({"eos": 3})


def _bpe_vocabulary(*special):
    tokens = ["!", "a", "b", "Ġ", "Ġa", "Ġb", "ab"]
    vocabulary = {token: index for index, token in enumerate(tokens)}
    for token in special:
        vocabulary[token] = len(vocabulary)
    return vocabulary, ["a b", "Ġ a", "Ġ b"]


def test_keras_hub_tokenizers_name_their_special_ids():
    vocabulary, merges = _bpe_vocabulary("<|endoftext|>")
    gpt2 = special_ids_of(keras_hub.models.GPT2Tokenizer(vocabulary=vocabulary,
                                                         merges=merges))
    end = vocabulary["<|endoftext|>"]
    # keras-hub says pad_token_id = 0, GPT-2's "!": padding is the end token instead.
    assert gpt2 == SpecialIds(start=end, end=end, pad=end, unknown=None, suppressed=(),
                              prompt_start=True, stripped=())
    vocabulary, merges = _bpe_vocabulary("<s>", "<pad>", "</s>", "<unk>", "<mask>")
    bart = special_ids_of(keras_hub.models.BartTokenizer(vocabulary=vocabulary,
                                                         merges=merges))
    assert (bart.start, bart.end, bart.pad, bart.suppressed) == (
        vocabulary["<s>"], vocabulary["</s>"], vocabulary["<pad>"], (vocabulary["<pad>"],))
    # The package's own vocabularies keep the reserved ids.
    assert special_ids_of(tk.train_wordpiece(["a b c", "b c d"], 20)) == SpecialIds()
    assert special_ids_of(None) == SpecialIds()


class _ScriptedStepper:
    """Over 8 ids: from any token, 6 is the most likely and 4 the next; after
    4, id 0 (the end here) is the most likely."""

    def step(self, token_ids, index, state):
        usual = tf.math.log([[0.01, 0.01, 0.01, 0.01, 0.3, 0.01, 0.6, 0.05]])
        after_4 = tf.math.log([[0.9, 0.01, 0.01, 0.01, 0.01, 0.01, 0.04, 0.01]])
        table = tf.concat([usual] * 4 + [after_4] + [usual] * 3, 0)
        return tf.gather(table, token_ids), state

    def repeat(self, state, k):
        return state

    def gather(self, state, indices):
        return state


@pytest.mark.parametrize("search", ["greedy", "beam", "sample"])
def test_the_searches_end_pad_and_suppress_with_the_ids_given(search):
    special = SpecialIds(start=7, end=0, pad=5, unknown=None, suppressed=(6,), stripped=())
    run = {"greedy": greedy_search,
           "beam": lambda *a, **k: beam_search(*a, beam_size=2, **k),
           "sample": lambda *a, **k: sample(*a, top_k=1, **k)}[search]
    ids, _ = run(_ScriptedStepper(), {}, tf.constant([7, 7]), 5, special_ids=special)
    # 6 is never chosen, 0 ends the row, 5 fills it afterwards.
    np.testing.assert_array_equal(ids.numpy(), [[4, 0, 5, 5, 5]] * 2)
    # With the package's ids, 6 is chosen and nothing ends.
    ids, _ = run(_ScriptedStepper(), {}, tf.constant([2]), 3)
    np.testing.assert_array_equal(ids.numpy(), [[6, 6, 6]])


def bart_like_model(vocab_size=40, max_length=12):
    """An encoder–decoder stacked from the layers by hand, padding with id 1."""
    keras.utils.set_random_seed(3)
    source_ids = keras.Input((None,), dtype="int32", name="source_ids")
    target_ids = keras.Input((None,), dtype="int32", name="target_ids")
    embed = dict(vocab_size=vocab_size, max_length=max_length, embed_dim=16, padding_id=1)
    x = PositionalEmbedding(**embed, name="source_embedding")(source_ids)
    x = EncoderBlock(2, 32, dropout=0.0)(x)
    y = PositionalEmbedding(**embed, name="target_embedding")(target_ids)
    y = DecoderBlock(2, 32, dropout=0.0)(y, x)
    logits = keras.layers.Dense(vocab_size, name="logits")(y)
    return keras.Model([source_ids, target_ids], logits)


def test_an_encoder_decoder_whose_id_0_is_a_token_decodes_like_full_passes():
    model = bart_like_model()
    model.special_ids = BART_LIKE  # a plain functional model carries them as an attribute
    rng = np.random.default_rng(0)
    source = rng.integers(4, 40, size=(4, 9)).astype("int32")
    source[:, 0] = 0  # a real token
    source[1, 5:] = 1  # padding
    source[2, 3:] = 1
    decoder = IdDecoder(model, max_length=8)
    assert decoder.special_ids == BART_LIKE
    ids, _ = decoder(source)
    np.testing.assert_array_equal(ids, greedy_translate(model, source, 8,
                                                        special_ids=BART_LIKE))
    assert (ids != 1).any() and not (ids[:, :1] == 1).any()
    # Padding is masked: more of it changes nothing.
    wider, _ = decoder(np.pad(source, ((0, 0), (0, 3)), constant_values=1))
    np.testing.assert_array_equal(wider, ids)


def test_the_translator_reads_the_model_ids_for_padding_and_text():
    model = bart_like_model(vocab_size=128, max_length=16)
    model.special_ids = BART_LIKE
    characters = keras_hub.tokenizers.UnicodeCodepointTokenizer(
        vocabulary_size=128, lowercase=False, replacement_char=3)
    translator = Translator(model, characters, characters, max_length=10,
                            decoding=DecodingConfig("greedy"))
    assert translator.special_ids == BART_LIKE
    text = tf.constant(["abc", "a longer one", ""])
    source = translator.tokenize(text).numpy()
    assert (source[0, 3:] == 1).all()  # padded with the model's padding id
    out = translator.translate(text)
    expected = greedy_translate(model, source, 10, special_ids=BART_LIKE)
    ids = out["token_ids"].numpy()
    np.testing.assert_array_equal(ids[:2, : expected.shape[1]], expected[:2])
    assert (ids[:2, expected.shape[1]:] == 1).all()
    assert (ids[2] == 1).all()  # no source token: nothing
    for row in range(2):
        kept = []
        for token in expected[row]:
            if token == 2:
                break
            if token not in (0, 1):
                kept.append(int(token))
        assert out["translation"][row].numpy().decode() == "".join(map(chr, kept))


def test_a_gpt2_like_language_model_starts_prompts_and_stops_at_its_end_id():
    end = 127  # start = end = pad, as GPT-2's <|endoftext|>
    special = SpecialIds(start=end, end=end, pad=end, unknown=None, suppressed=(),
                         prompt_start=True, stripped=())
    tf.random.set_seed(4)
    config = TransformerConfig(vocab_size=128, max_length=16, embed_dim=16, num_heads=2,
                               ffn_dim=32, num_encoder_layers=0, num_decoder_layers=1,
                               dropout=0.0, norm_first=True)
    model = build_causal_lm(config)
    model = TransformerModel(model.input, model.output, special_ids=special)
    characters = keras_hub.tokenizers.UnicodeCodepointTokenizer(
        vocabulary_size=128, lowercase=False, replacement_char=126)
    generator = TextGenerator(model, characters, max_length=10,
                              decoding=DecodingConfig("greedy"))
    assert generator.special_ids == special
    prompts = ["ab", "", "a prompt longer than the window"]
    out = generator.generate(tf.constant(prompts), tf.constant(0))
    for row, prompt in enumerate(prompts):
        ids = [end] + [ord(c) for c in prompt][-8:]  # the start id, then the last 8
        expected = greedy_generate(model, np.array([ids], "int32"), 10,
                                   special_ids=special)[0]
        np.testing.assert_array_equal(out["token_ids"].numpy()[row, : len(expected)],
                                      expected)
        text = expected.tolist()
        text = text[: text.index(end)] if end in text else text
        assert out["text"][row].numpy().decode() == "".join(map(chr, text))


def test_a_transformer_model_keeps_its_special_ids_through_saving(tmp_path):
    config = TransformerConfig(vocab_size=30, max_length=8, embed_dim=8, num_heads=2,
                               ffn_dim=16, num_encoder_layers=0, num_decoder_layers=1)
    plain = build_causal_lm(config)
    assert plain.special_ids is None and plain.decoding_traits().special_ids is None
    model = TransformerModel(plain.input, plain.output, special_ids=BART_LIKE.to_dict())
    assert model.special_ids == BART_LIKE
    assert model.decoding_traits().special_ids == BART_LIKE
    model.save(tmp_path / "m.keras")
    reloaded = keras.saving.load_model(tmp_path / "m.keras")
    assert isinstance(reloaded, TransformerModel) and reloaded.special_ids == BART_LIKE
    assert special_ids_of(reloaded) == BART_LIKE


def test_pipelines_pad_and_frame_targets_with_the_ids_given():
    characters = keras_hub.tokenizers.UnicodeCodepointTokenizer(
        vocabulary_size=128, lowercase=False)
    pairs = [("ab", "x"), ("abcd", "xyz")]
    (source, target_in), labels = next(iter(translation_dataset(
        pairs, characters, characters, batch_size=2, bucket_boundaries=None,
        special_ids=SpecialIds(start=5, end=6, pad=7, suppressed=()))))
    np.testing.assert_array_equal(source.numpy(), [[97, 98, 7, 7], [97, 98, 99, 100]])
    np.testing.assert_array_equal(target_in.numpy(), [[5, 120, 7, 7], [5, 120, 121, 122]])
    np.testing.assert_array_equal(labels.numpy(), [[120, 6, 7, 7], [120, 121, 122, 6]])
    # When padding is also the end token, label padding is -1 (the end is learned).
    _, labels = next(iter(translation_dataset(
        pairs, characters, characters, batch_size=2, bucket_boundaries=None,
        special_ids=SpecialIds(start=6, end=6, pad=6, suppressed=()))))
    np.testing.assert_array_equal(labels.numpy(), [[120, 6, -1, -1], [120, 121, 122, 6]])


def test_the_loss_skips_negative_labels_and_the_pad_id():
    logits = np.random.default_rng(0).normal(size=(1, 3, 5)).astype("float32")
    real = MaskedSparseCategoricalCrossentropy(pad_id=None)([[2, 4, -1]], logits)
    alone = MaskedSparseCategoricalCrossentropy(pad_id=None)([[2, 4]], logits[:, :2])
    np.testing.assert_allclose(float(real), float(alone), rtol=1e-6)
    # pad_id=None learns id 0; the default skips it.
    with_zero = MaskedSparseCategoricalCrossentropy(pad_id=None)([[2, 4, 0]], logits)
    skipped = MaskedSparseCategoricalCrossentropy()([[2, 4, 0]], logits)
    assert float(with_zero) != pytest.approx(float(alone))
    np.testing.assert_allclose(float(skipped), float(alone), rtol=1e-6)


def test_the_embedding_masks_its_padding_id():
    layer = PositionalEmbedding(10, 8, 4, padding_id=1)
    ids = np.array([[0, 5, 1, 1]], "int32")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer.compute_mask(ids)),
                                  [[True, True, False, False]])
    again = PositionalEmbedding.from_config(layer.get_config())
    assert again.padding_id == 1 and again.mask_id == 1
    assert PositionalEmbedding(10, 8, 4).mask_id == 0
    assert PositionalEmbedding(10, 8, 4, mask_zero=False).compute_mask(ids) is None
    with pytest.raises(ValueError, match=r"`padding_id` must be None or an id in \[0, 10\)"):
        PositionalEmbedding(10, 8, 4, padding_id=10)
