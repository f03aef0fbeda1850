"""Pretrained weights: keras-hub backbones rebuilt from the package's layers.

`from_keras_hub(backbone_or_preset)` reads a keras-hub `Backbone` (or a
`CausalLM` task, or a preset that `keras_hub.models.Backbone.from_preset`
accepts: a local directory, `"gpt2_base_en"` or `"hf://..."` where the network
allows) and returns a functional `TransformerModel` stacked from
`PositionalEmbedding`, `DecoderBlock` and a final norm, with the backbone's
weights copied in: `model(token_ids)` returns the same logits as the
backbone's task model.

Covered so far: **GPT-2** (`GPT2Backbone`: learned positions, pre-LN
LayerNorm, GELU with the tanh approximation, biases, tied output). Any other
backbone is a `ValueError` naming it.

Special ids. Token id 0 is a real token in these vocabularies (GPT-2's `!`),
so the embedding is built with `mask_zero=False`: the model computes no
padding mask, and a caller right-pads a batch (causal attention never reads
ahead, so the logits at real positions do not depend on the padding). The
model's `special_ids` (a `SpecialIds`, saved with it) are the tokenizer's:
the one given, else the task's preprocessor's, else the preset's; a bare
backbone gets its family's convention (GPT-2: `<|endoftext|>`, the last id,
starts prompts, ends generation and pads). The searches, `TextGenerator` and
the exports read them.
"""

import os

import keras

from keras_transformer._optional import require
from keras_transformer.data.special_tokens import SpecialIds, special_ids_of
from keras_transformer.layers import DecoderBlock, PositionalEmbedding
from keras_transformer.models.builders import TransformerModel


def from_keras_hub(backbone_or_preset, tokenizer=None):
    """A functional model of the package's layers with a keras-hub backbone's weights.

    Args:
        backbone_or_preset: a `keras_hub.models.Backbone`, a task holding one
            (`keras_hub.models.CausalLM`), or a preset handle for
            `keras_hub.models.Backbone.from_preset` (a local directory written
            by `save_to_preset`, or a name where the network allows).
        tokenizer: optional keras-hub tokenizer whose special ids the model
            takes (default: the task's or the preset's, when there is one).

    Returns:
        A `TransformerModel`: `model(token_ids)` → float32 logits
        `(B, T, vocabulary_size)`, equal to the keras-hub task model's, with
        `special_ids` set (see the module docstring).

    Raises:
        ValueError: a backbone the layers cannot express yet, named.
        TypeError: an argument that is neither a backbone, a task nor a preset.
    """
    keras_hub = require("keras_hub", "data", "Importing keras-hub models")
    backbone = _backbone(backbone_or_preset, keras_hub)
    convert = _CONVERTERS.get(type(backbone).__name__)
    if convert is None:
        raise ValueError(
            f"keras_transformer cannot import a {type(backbone).__name__} yet; it imports "
            f"{sorted(_CONVERTERS)}.")
    model = convert(backbone)
    tokenizer = tokenizer or preset_tokenizer(backbone_or_preset)
    model.special_ids = (special_ids_of(tokenizer) if tokenizer is not None
                         else _FAMILY_SPECIAL_IDS[type(backbone).__name__](backbone))
    return model


def preset_tokenizer(task_or_preset):
    """The keras-hub tokenizer of a task (its preprocessor's) or of a preset
    (`keras_hub.models.Tokenizer.from_preset`), or None where there is none
    (a bare backbone, a preset saved without a tokenizer)."""
    preprocessor = getattr(task_or_preset, "preprocessor", None)
    if preprocessor is not None:
        return getattr(preprocessor, "tokenizer", None)
    if isinstance(task_or_preset, (str, os.PathLike)):
        keras_hub = require("keras_hub", "data", "Importing keras-hub tokenizers")
        path = os.fspath(task_or_preset)
        if os.path.isdir(path) and not os.path.exists(os.path.join(path, "tokenizer.json")):
            return None
        return keras_hub.models.Tokenizer.from_preset(path)
    return None


def _backbone(value, keras_hub):
    if isinstance(value, keras_hub.models.Backbone):
        return value
    if isinstance(getattr(value, "backbone", None), keras_hub.models.Backbone):
        return value.backbone
    if isinstance(value, (str, os.PathLike)):
        return keras_hub.models.Backbone.from_preset(os.fspath(value))
    raise TypeError("`from_keras_hub` takes a keras-hub Backbone, a task holding one, or a "
                    f"preset handle. Received: {type(value).__name__}")


def _gpt2(backbone):
    """GPT-2: learned positions, pre-LN LayerNorm (eps 1e-5), tanh GELU, tied output."""
    embedding = PositionalEmbedding(
        backbone.vocabulary_size, backbone.max_sequence_length, backbone.hidden_dim,
        positions="learned", scale=False, mask_zero=False, name="token_embedding")
    token_ids = keras.Input((None,), dtype="int32", name="token_ids")
    x = keras.layers.Dropout(backbone.dropout, name="embedding_dropout")(embedding(token_ids))
    blocks = []
    for i in range(backbone.num_layers):
        block = DecoderBlock(backbone.num_heads, backbone.intermediate_dim,
                             dropout=backbone.dropout, norm_first=True,
                             layer_norm_epsilon=1e-5, activation="gelu_tanh",
                             name=f"decoder_block_{i}")
        x = block(x)
        blocks.append(block)
    final_norm = keras.layers.LayerNormalization(epsilon=1e-5, name="final_norm")
    logits = embedding(final_norm(x), reverse=True)
    model = TransformerModel(token_ids, logits, name=backbone.name)

    embedding.token_embeddings.assign(backbone.token_embedding.embeddings)
    embedding.position_embeddings.assign(backbone.position_embedding.position_embeddings)
    for ours, theirs in zip(blocks, backbone.transformer_layers):
        for mine, hub in ((ours._self_attention, theirs._self_attention_layer),
                          (ours._self_attention_norm, theirs._self_attention_layer_norm),
                          (ours._feedforward._inner_dense,
                           theirs._feedforward_intermediate_dense),
                          (ours._feedforward._output_dense, theirs._feedforward_output_dense),
                          (ours._feedforward_norm, theirs._feedforward_layer_norm)):
            mine.set_weights(hub.get_weights())
    final_norm.set_weights(backbone.layer_norm.get_weights())
    return model


def _gpt2_special_ids(backbone):
    """GPT-2's vocabulary ends with `<|endoftext|>`: it starts, ends and pads."""
    end = backbone.vocabulary_size - 1
    return SpecialIds(start=end, end=end, pad=end, unknown=None, suppressed=(),
                      prompt_start=True, stripped=())


_CONVERTERS = {"GPT2Backbone": _gpt2}
_FAMILY_SPECIAL_IDS = {"GPT2Backbone": _gpt2_special_ids}
