"""Wrong dtypes to every layer: a TypeError naming the argument and what it received."""

import numpy as np
import pytest
import tensorflow as tf

import keras

from keras_transformer import (
    DecoderBlock,
    EncoderBlock,
    MoE,
    MultiHeadAttention,
    PositionalEmbedding,
    PositionwiseFFN,
)

B, T, D = 2, 5, 8
FEATURES = np.random.default_rng(0).normal(size=(B, T, D)).astype("float32")
IDS = np.arange(B * T).reshape(B, T).astype("int32") % 7 + 1
BOOL_MASK = np.ones((B, T), bool)

# Feature-like tensors of a wrong dtype: token ids given to a feature layer,
# booleans, strings.
WRONG_FEATURES = {
    "int32": FEATURES.astype("int32"),
    "int64": FEATURES.astype("int64"),
    "bool": FEATURES > 0,
    "string": tf.fill((B, T, D), "x"),
}

FEATURE_LAYERS = {
    "MultiHeadAttention.query": (lambda x: MultiHeadAttention(2, 4)(x, FEATURES), "query"),
    "MultiHeadAttention.value": (lambda x: MultiHeadAttention(2, 4)(FEATURES, x), "value"),
    "PositionwiseFFN": (lambda x: PositionwiseFFN(16)(x), "inputs"),
    "MoE": (lambda x: MoE(num_experts=4, expert_dim=8)(x), "inputs"),
    "EncoderBlock": (lambda x: EncoderBlock(2, 16)(x), "inputs"),
    "DecoderBlock.decoder_sequence": (lambda x: DecoderBlock(2, 16)(x, FEATURES),
                                      "decoder_sequence"),
    "DecoderBlock.encoder_sequence": (lambda x: DecoderBlock(2, 16)(FEATURES, x),
                                      "encoder_sequence"),
}


@pytest.mark.parametrize("dtype", sorted(WRONG_FEATURES))
@pytest.mark.parametrize("layer", sorted(FEATURE_LAYERS))
def test_feature_layers_refuse_non_float_inputs(layer, dtype):
    call, argument = FEATURE_LAYERS[layer]
    with pytest.raises(TypeError, match=rf"`{argument}` must hold floating-point .*"
                                        rf"{argument}.dtype={dtype}"):
        call(WRONG_FEATURES[dtype])


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float64"])
@pytest.mark.parametrize("layer", sorted(FEATURE_LAYERS))
def test_other_float_dtypes_are_cast_to_the_layer_dtype(layer, dtype):
    call, _ = FEATURE_LAYERS[layer]
    output = call(tf.cast(FEATURES, dtype))
    output = output[0] if isinstance(output, tuple) else output
    assert output.dtype == tf.float32 and np.isfinite(output.numpy()).all()


@pytest.mark.parametrize("ids", [IDS.astype("float32"), IDS.astype("float32") + 0.5,
                                 IDS > 3, tf.fill((B, T), "7")],
                         ids=["float32", "fractional", "bool", "string"])
def test_positional_embedding_refuses_non_integer_ids(ids):
    dtype = tf.convert_to_tensor(ids).dtype.name
    with pytest.raises(TypeError, match=rf"`token_ids` must be integer .*"
                                        rf"token_ids.dtype={dtype}.*dtype=\"int32\""):
        PositionalEmbedding(vocab_size=10, max_length=T, embed_dim=D)(ids)


@pytest.mark.parametrize("dtype", ["int32", "int64", "uint8"])
def test_positional_embedding_takes_any_integer_ids(dtype):
    layer = PositionalEmbedding(vocab_size=10, max_length=T, embed_dim=D)
    np.testing.assert_allclose(layer(IDS.astype(dtype)), layer(IDS), rtol=0, atol=0)


MASK_ARGUMENTS = {
    "MultiHeadAttention.attention_mask": (
        lambda m: MultiHeadAttention(2, 4)(FEATURES, FEATURES, attention_mask=m), (B, T, T)),
    "MultiHeadAttention.query_mask": (
        lambda m: MultiHeadAttention(2, 4)(FEATURES, FEATURES, query_mask=m), (B, T)),
    "MultiHeadAttention.value_mask": (
        lambda m: MultiHeadAttention(2, 4)(FEATURES, FEATURES, value_mask=m), (B, T)),
    "EncoderBlock.padding_mask": (lambda m: EncoderBlock(2, 16)(FEATURES, padding_mask=m),
                                  (B, T)),
    "EncoderBlock.attention_mask": (
        lambda m: EncoderBlock(2, 16)(FEATURES, attention_mask=m), (B, T, T)),
    "DecoderBlock.decoder_padding_mask": (
        lambda m: DecoderBlock(2, 16)(FEATURES, FEATURES, decoder_padding_mask=m), (B, T)),
    "DecoderBlock.encoder_padding_mask": (
        lambda m: DecoderBlock(2, 16)(FEATURES, FEATURES, encoder_padding_mask=m), (B, T)),
    "MoE.padding_mask": (lambda m: MoE(num_experts=4, expert_dim=8)(FEATURES, padding_mask=m),
                         (B, T)),
}


@pytest.mark.parametrize("dtype", ["float32", "float64", "string"])
@pytest.mark.parametrize("argument", sorted(MASK_ARGUMENTS))
def test_masks_must_be_bool_or_integer(argument, dtype):
    call, shape = MASK_ARGUMENTS[argument]
    mask = tf.fill(shape, "1") if dtype == "string" else np.ones(shape, dtype)
    name = argument.split(".")[1]
    received = "float" if dtype.startswith("float") else dtype  # Keras casts NumPy float64
    with pytest.raises(TypeError, match=rf"`{name}` must be a bool mask.*{name}.dtype={received}"):
        call(mask)


@pytest.mark.parametrize("argument", sorted(MASK_ARGUMENTS))
def test_integer_masks_read_as_keras_reads_them(argument):
    call, shape = MASK_ARGUMENTS[argument]
    mask = np.ones(shape, bool)
    mask[0, -2:] = False  # padding at the end of row 0 (or its last two keys)

    def first_output(m):
        keras.utils.set_random_seed(0)  # the same initial weights for each call
        output = call(m)
        return np.asarray(output[0] if isinstance(output, tuple) else output)

    np.testing.assert_array_equal(first_output(mask.astype("int32")), first_output(mask))
    assert not np.allclose(first_output(np.ones(shape, bool)), first_output(mask))
