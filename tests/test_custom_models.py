"""Models a user stacks from the layers decode, export and serve like the builders' models.

Structure is read from the graph (layer types and connections), never from
names: the models here have names of their own, inputs in an unusual order,
three decoder blocks, pre-LN with final norms, learned positions, an untied
`Dense` output and one MoE block. A model of its own shape implements the
cached-decoding protocol by hand.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from keras_transformer import DecoderBlock, EncoderBlock, PositionalEmbedding
from keras_transformer._keras_compat import all_layers
from keras_transformer.data import generate_pairs
from keras_transformer.data import tokenizers as tk
from keras_transformer.export import export_saved_model
from keras_transformer.generation import (
    DecodingConfig,
    TextGenerator,
    Translator,
    greedy_generate,
    greedy_translate,
)
from keras_transformer.models import read_structure
from tests.helpers import character_tokenizer, check_export_and_serve

MAX_LENGTH = 16
TEXTS = ["twenty-one books", "seven plus five is twelve", "", "I have three hundred trees."]
PROMPTS = ["ROMEO:", "To be", "a"]
MOE = {"num_experts": 4, "top_k": 2}


def user_translation_model(source_vocab, target_vocab, dim=32):
    """An encoder–decoder stacked by hand: inputs (target, source), custom names."""
    target = keras.Input((None,), dtype="int32", name="decoder_tokens")
    source = keras.Input((None,), dtype="int32", name="encoder_tokens")
    x = PositionalEmbedding(source_vocab, MAX_LENGTH, dim, positions="learned",
                            name="english")(source)
    x = keras.layers.Dropout(0.1, name="english_dropout")(x)
    x = EncoderBlock(4, 64, norm_first=True, name="reader_1")(x)
    x = EncoderBlock(4, 64, norm_first=True, name="reader_2")(x)
    memory = keras.layers.LayerNormalization(name="reader_norm")(x)
    y = PositionalEmbedding(target_vocab, MAX_LENGTH, dim, positions="learned",
                            name="spanish")(target)
    y = DecoderBlock(4, 64, norm_first=True, name="writer_1")(y, memory)
    y = DecoderBlock(4, 64, norm_first=True, moe=MOE, name="writer_2")(y, memory)
    y = DecoderBlock(4, 64, norm_first=True, name="writer_3")(y, encoder_sequence=memory)
    y = keras.layers.LayerNormalization(name="writer_norm")(y)
    logits = keras.layers.Dense(target_vocab, name="spanish_words")(y)
    return keras.Model([target, source], logits, name="my_translator")


def user_language_model(vocab, dim=32):
    """A decoder-only model stacked by hand, with custom names."""
    ids = keras.Input((None,), dtype="int32", name="characters")
    x = PositionalEmbedding(vocab, MAX_LENGTH, dim, positions="learned", name="chars")(ids)
    x = DecoderBlock(4, 64, norm_first=True, name="layer_a")(x)
    x = DecoderBlock(4, 64, norm_first=True, moe=MOE, name="layer_b")(x)
    x = DecoderBlock(4, 64, norm_first=True, name="layer_c")(x)
    x = keras.layers.LayerNormalization(name="last_norm")(x)
    logits = keras.layers.Dense(vocab, name="next_char")(x)
    return keras.Model(ids, logits, name="my_lm")


@pytest.fixture(scope="module")
def tokenizers():
    pairs = generate_pairs(300, seed=0)
    return (tk.train_wordpiece([en for en, _ in pairs], 200),
            tk.train_wordpiece([es for _, es in pairs], 200))


@pytest.fixture(scope="module")
def translator(tokenizers):
    source, target = tokenizers
    keras.utils.set_random_seed(3)
    model = user_translation_model(source.vocabulary_size(), target.vocabulary_size())
    return Translator(model, source, target, max_length=MAX_LENGTH)


@pytest.fixture(scope="module")
def generator():
    keras.utils.set_random_seed(4)
    return TextGenerator(user_language_model(128), character_tokenizer(), max_length=MAX_LENGTH,
                         decoding=DecodingConfig("greedy"))


def padded(ids, width):
    return np.pad(ids, ((0, 0), (0, width - ids.shape[1])))


def test_the_structure_is_read_from_the_graph_not_the_names(translator):
    structure = read_structure(translator.model)
    assert structure.decoder.embedding.name == "spanish"
    assert structure.encoder.embedding.name == "english"
    assert structure.decoder.input_index == 0 and structure.encoder.input_index == 1
    assert [block.name for block in structure.encoder.blocks] == ["reader_1", "reader_2"]
    assert [block.name for block in structure.decoder.blocks] == [
        "writer_1", "writer_2", "writer_3"]
    assert [layer.name for kind, layer in structure.decoder.layers if kind == "layer"] == [
        "writer_norm", "spanish_words"]


def test_cached_greedy_equals_the_full_pass_of_a_user_model(translator):
    source_ids = translator.tokenize(tf.constant(TEXTS)).numpy()
    cached = translator.translate_ids(tf.constant(source_ids))["token_ids"].numpy()
    reference = padded(greedy_translate(translator.model, source_ids, MAX_LENGTH), MAX_LENGTH)
    reference[TEXTS.index("")] = 0  # no source token: nothing to translate
    np.testing.assert_array_equal(cached, reference)


def test_beam_of_one_equals_greedy_and_a_translator_samples(translator):
    model, source, target = (translator.model, translator.source_tokenizer,
                             translator.target_tokenizer)
    texts = tf.constant(TEXTS)
    greedy = translator.translate(texts)
    beam = Translator(model, source, target, max_length=MAX_LENGTH,
                      decoding=DecodingConfig("beam", beam_size=1, length_penalty=0.0))
    one = beam.translate(texts)
    np.testing.assert_array_equal(one["token_ids"].numpy(), greedy["token_ids"].numpy())
    np.testing.assert_allclose(one["scores"].numpy(), greedy["scores"].numpy(), atol=1e-4)
    sampled = [Translator(model, source, target, max_length=MAX_LENGTH,
                          decoding=DecodingConfig("sample", temperature=2.0, seed=seed))
               .translate(texts)["token_ids"].numpy() for seed in (5, 5, 6)]
    np.testing.assert_array_equal(sampled[0], sampled[1])
    assert (sampled[0] != sampled[2]).any()
    # Beam search finds a sequence at least as probable as greedy's.
    four = Translator(model, source, target, max_length=MAX_LENGTH,
                      decoding=DecodingConfig("beam", beam_size=4, length_penalty=0.0))
    assert (four.translate(texts)["scores"].numpy() >= greedy["scores"].numpy() - 1e-4).all()


def test_cached_greedy_of_a_user_language_model_equals_the_full_pass(generator):
    prompt_ids = np.array([[ord(c) for c in "ROM"], [ord(c) for c in "To "]], "int32")
    lengths = tf.constant([3, 3])
    cached, _ = generator._search(tf.constant(padded(prompt_ids, MAX_LENGTH - 1)), lengths,
                                  tf.constant(0))
    reference = greedy_generate(generator.model, prompt_ids, MAX_LENGTH)
    np.testing.assert_array_equal(cached.numpy(), reference)
    beam = TextGenerator(generator.model, generator.tokenizer, max_length=MAX_LENGTH,
                         decoding=DecodingConfig("beam", beam_size=1, length_penalty=0.0))
    prompts = tf.constant(PROMPTS)
    np.testing.assert_array_equal(beam.generate_text(prompts)["token_ids"].numpy(),
                                  generator.generate_text(prompts)["token_ids"].numpy())


def test_a_user_translation_model_exports_and_serves(translator, tmp_path):
    check_export_and_serve(translator, TEXTS, "text", "translation", tmp_path)


def test_a_user_language_model_exports_and_serves(generator, tmp_path):
    check_export_and_serve(generator, PROMPTS, "prompt", "text", tmp_path)


def test_a_sequential_language_model_decodes():
    keras.utils.set_random_seed(5)
    model = keras.Sequential([keras.Input((None,), dtype="int32"),
                              PositionalEmbedding(128, MAX_LENGTH, 16),
                              DecoderBlock(2, 32), DecoderBlock(2, 32),
                              keras.layers.Dense(128)])
    generator = TextGenerator(model, character_tokenizer(), max_length=MAX_LENGTH,
                              decoding=DecodingConfig("greedy"))
    prompt = np.array([[ord(c) for c in "ab"]], "int32")
    cached, _ = generator._search(tf.constant(padded(prompt, MAX_LENGTH - 1)),
                                  tf.constant([2]), tf.constant(0))
    np.testing.assert_array_equal(cached.numpy(), greedy_generate(model, prompt, MAX_LENGTH))


@pytest.mark.parametrize("shape", ["conv_between_blocks", "op_between_blocks",
                                   "embedding_not_from_input", "no_blocks", "two_outputs"])
def test_a_model_of_another_shape_gets_a_clear_error(shape):
    ids = keras.Input((None,), dtype="int32", name="ids")
    x = PositionalEmbedding(50, MAX_LENGTH, 16, name="emb")(ids)
    outputs = None
    if shape == "conv_between_blocks":
        x = DecoderBlock(2, 32, name="first")(x)
        x = keras.layers.Conv1D(16, 3, padding="causal", name="my_conv")(x)
        x = DecoderBlock(2, 32, name="second")(x)
        found = "'my_conv' (Conv1D)"
    elif shape == "op_between_blocks":
        x = keras.ops.multiply(DecoderBlock(2, 32, name="first")(x), 2.0)
        x = DecoderBlock(2, 32, name="second")(x)
        found = "the operation 'multiply"
    elif shape == "embedding_not_from_input":
        shifted = keras.layers.Lambda(lambda t: t + 1, name="shift")(ids)
        x = DecoderBlock(2, 32)(PositionalEmbedding(50, MAX_LENGTH, 16, name="emb2")(shifted))
        found = "PositionalEmbedding 'emb2' fed by 'shift' (Lambda)"
    elif shape == "no_blocks":
        found = "no DecoderBlock after 'emb'"
    else:
        x = DecoderBlock(2, 32)(x)
        outputs = [keras.layers.Dense(50)(x), keras.layers.Dense(3)(x)]
        found = "2 outputs"
    model = keras.Model(ids, outputs or keras.layers.Dense(50, name="head")(x))
    with pytest.raises(ValueError) as error:
        TextGenerator(model, character_tokenizer(), max_length=8)
    assert found in str(error.value)
    assert "expected token ids → PositionalEmbedding" in str(error.value)
    assert "call_with_cache" in str(error.value)  # what to do instead


class ContextTranslator(keras.Model):
    """An encoder–decoder of its own shape: every target embedding also gets the
    mean of the encoder output. Not a shape the graph reader knows, so it
    implements the cached-decoding protocol by hand."""

    def __init__(self, source_vocab, target_vocab, dim=32, **kwargs):
        super().__init__(**kwargs)
        self.source_embedding = PositionalEmbedding(source_vocab, MAX_LENGTH, dim)
        self.encoder_block = EncoderBlock(4, 64)
        self.target_embedding = PositionalEmbedding(target_vocab, MAX_LENGTH, dim)
        self.decoder_block = DecoderBlock(4, 64)
        self.head = keras.layers.Dense(target_vocab)

    def call(self, inputs):
        source_ids, target_ids = inputs
        encoded = self.encode(source_ids)
        y = self.target_embedding(target_ids) + encoded["context"][:, None]
        y = self.decoder_block(y, encoded["memory"], encoder_padding_mask=encoded["source_mask"])
        return self.head(y)

    def encode(self, source_ids):
        mask = ops.not_equal(source_ids, 0)
        memory = self.encoder_block(self.source_embedding(source_ids), padding_mask=mask)
        weights = ops.cast(mask, memory.dtype)[..., None]
        context = ops.sum(memory * weights, 1) / ops.maximum(ops.sum(weights, 1), 1.0)
        return {"memory": memory, "source_mask": mask, "context": context}

    def initial_cache(self, batch_size, max_length, encoded=None):
        return {"self": self.decoder_block.initial_self_attention_cache(batch_size, max_length),
                "cross": self.decoder_block.compute_cross_attention_cache(encoded["memory"]),
                "source_mask": encoded["source_mask"], "context": encoded["context"]}

    def call_with_cache(self, token_ids, cache, index):
        y = self.target_embedding(token_ids, start_index=index) + cache["context"][:, None]
        y, self_cache, _ = self.decoder_block(
            y, decoder_padding_mask=ops.ones_like(token_ids, dtype="bool"),
            encoder_padding_mask=cache["source_mask"], self_attention_cache=cache["self"],
            self_attention_cache_index=index, cross_attention_cache=cache["cross"])
        return self.head(y), {**cache, "self": self_cache}


def test_a_model_implementing_the_protocol_decodes_and_exports(tokenizers, tmp_path):
    source, target = tokenizers
    keras.utils.set_random_seed(6)
    model = ContextTranslator(source.vocabulary_size(), target.vocabulary_size())
    source_ids = np.array([[5, 9, 7, 0, 0], [12, 4, 0, 0, 0]], "int32")
    model([source_ids, source_ids[:, :3]])  # build
    translator = Translator(model, source, target, max_length=MAX_LENGTH,
                            decoding=DecodingConfig("greedy"))
    cached = translator.translate_ids(tf.constant(source_ids))["token_ids"].numpy()
    np.testing.assert_array_equal(
        cached, padded(greedy_translate(model, padded(source_ids, MAX_LENGTH), MAX_LENGTH),
                       MAX_LENGTH))
    path = export_saved_model(translator, str(tmp_path / "context"))
    served = tf.saved_model.load(path).signatures["serving_default"](text=tf.constant(TEXTS))
    in_process = translator.translate(tf.constant(TEXTS))
    assert served["translation"].numpy().tolist() == in_process["translation"].numpy().tolist()


def test_float32_copy_of_a_user_model_trained_in_bfloat16():
    """The copy computes in float32 throughout (sublayers included), with the same weights."""
    from keras_transformer.models import float32_copy
    from keras_transformer.recipes import precision

    keras.utils.set_random_seed(5)
    with precision.dtype_policy("mixed_bfloat16"):
        mixed = user_translation_model(50, 60)
    copy = float32_copy(mixed)
    keras.utils.set_random_seed(6)
    reference = user_translation_model(50, 60)
    reference.set_weights(mixed.get_weights())

    def policies(model):
        return {layer.dtype_policy.name for layer in all_layers(model)}

    assert "mixed_bfloat16" in policies(mixed) and policies(copy) == {"float32"}
    rng = np.random.default_rng(0)
    inputs = [rng.integers(1, 60, (2, 6)), rng.integers(1, 50, (2, 9))]
    np.testing.assert_array_equal(ops.convert_to_numpy(copy(inputs)),
                                  ops.convert_to_numpy(reference(inputs)))
    assert not np.array_equal(ops.convert_to_numpy(mixed(inputs)),
                              ops.convert_to_numpy(reference(inputs)))
    assert float32_copy(reference) is reference


@keras.saving.register_keras_serializable(package="tests")
class Wrapped(keras.layers.Layer):
    """A user layer whose sublayer takes the global policy at construction."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.inner = keras.layers.Dense(units)

    def call(self, inputs):
        return ops.tanh(self.inner(inputs))

    def get_config(self):
        return {**super().get_config(), "units": self.units}


def test_float32_copy_looks_into_a_float32_layer_with_a_bfloat16_sublayer():
    """A float32 top-level layer does not hide the bfloat16 sublayer inside it."""
    from keras_transformer.models import float32_copy
    from keras_transformer.models.precision import dtype_policy

    keras.utils.set_random_seed(7)
    with dtype_policy("mixed_bfloat16"):
        inputs = keras.Input((5,))
        mixed = keras.Model(inputs, Wrapped(3, dtype="float32")(inputs))
    wrapper = mixed.layers[-1]
    assert (wrapper.dtype_policy.name, wrapper.inner.dtype_policy.name) == (
        "float32", "mixed_bfloat16")
    copy = float32_copy(mixed)
    assert copy is not mixed
    assert {layer.dtype_policy.name for layer in all_layers(copy)} == {"float32"}
    x = np.random.default_rng(0).normal(size=(4, 5)).astype("float32")
    expected = np.tanh(x @ mixed.get_weights()[0] + mixed.get_weights()[1])
    np.testing.assert_allclose(ops.convert_to_numpy(copy(x)), expected, rtol=1e-5, atol=1e-6)
