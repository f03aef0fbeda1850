"""Pretrained weights: keras-hub backbones rebuilt from the package's layers.

`from_keras_hub(backbone_or_preset)` reads a keras-hub `Backbone` (or a
`CausalLM` task, or a preset that `keras_hub.models.Backbone.from_preset`
accepts: a local directory, `"gpt2_base_en"` or `"hf://..."` where the network
allows) and returns a functional `TransformerModel` stacked from
`PositionalEmbedding`, `DecoderBlock`s and a final norm, with the backbone's
weights copied in: `model(token_ids)` returns the same logits as the
backbone's task model.

Covered:
- **GPT-2** (`GPT2Backbone`): learned positions, pre-LN LayerNorm, GELU with
  the tanh approximation, biases, tied output.
- **The Llama family** (`LlamaBackbone`, `Llama3Backbone`, `MistralBackbone`,
  `QwenBackbone` (Qwen2)): RMSNorm, SwiGLU, grouped-query attention, rotary
  positions with the preset's wavelength and scaling (Llama 3.1's frequency
  adjustment; Mistral's and Qwen2's linear `rope_scaling_factor`), Mistral's
  sliding window, Qwen2's query/key/value biases, no other biases, tied or
  untied output as the backbone says.
- **BART** (`BartBackbone`), an encoder–decoder called as the builders'
  translators are (`model([source_ids, target_ids])`): learned positions, the
  embedding LayerNorm on each side, post-LN blocks with exact GELU, the
  output tied to the decoder's token table; padding masked by `<pad>`
  (`PositionalEmbedding(padding_id=...)`). BART ties the encoder's token
  table to the decoder's; here the encoder's starts as a copy.
Any other backbone is a `ValueError` naming it and what the package lacks
for it (T5's relative position bias, Gemma's soft-capping, ...).

Special ids. Token id 0 is a real token in these vocabularies (GPT-2's `!`),
so the embedding is built with `mask_zero=False`: the model computes no
padding mask, and a caller right-pads a batch (causal attention never reads
ahead, so the logits at real positions do not depend on the padding). The
model's `special_ids` (a `SpecialIds`, saved with it) are the tokenizer's:
the one given, else the task's preprocessor's, else the preset's; a bare
GPT-2 backbone gets GPT-2's convention (`<|endoftext|>`, the last id, starts
prompts, ends generation and pads); a bare Llama-family backbone gets none,
and `TextGenerator` then reads the tokenizer it is given.
"""

import os

import keras

from keras_transformer._optional import require
from keras_transformer.data.special_tokens import SpecialIds, special_ids_of
from keras_transformer.layers import (
    DecoderBlock,
    EncoderBlock,
    PositionalEmbedding,
    RMSNormalization,
)
from keras_transformer.models.builders import TransformerModel


# Rotary models have no position table to bound their length: the cache and
# the searches accept this many positions unless `max_length` says otherwise.
DEFAULT_ROTARY_MAX_LENGTH = 2048


def from_keras_hub(backbone_or_preset, tokenizer=None, max_length=None):
    """A functional model of the package's layers with a keras-hub backbone's weights.

    Args:
        backbone_or_preset: a `keras_hub.models.Backbone`, a task holding one
            (`keras_hub.models.CausalLM`), or a preset handle for
            `keras_hub.models.Backbone.from_preset` (a local directory written
            by `save_to_preset`, or a name where the network allows).
        tokenizer: optional keras-hub tokenizer whose special ids the model
            takes (default: the task's or the preset's, when there is one).
        max_length: int, the most positions the model accepts (its cache and
            the searches' `max_length`). Default: GPT-2's
            `max_sequence_length`; 2048 for rotary models (any length the
            memory allows).

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
    family = type(backbone).__name__
    convert = _CONVERTERS.get(family)
    if convert is None:
        missing = _MISSING.get(family, "a converter for it")
        raise ValueError(
            f"keras_transformer cannot import a {family}: the package lacks {missing}. "
            f"It imports {sorted(_CONVERTERS)}.")
    tokenizer = tokenizer or preset_tokenizer(backbone_or_preset)
    special = special_ids_of(tokenizer) if tokenizer is not None else None
    if family in _FAMILY_SPECIAL_IDS:
        special = _FAMILY_SPECIAL_IDS[family](backbone, special)
    model = convert(backbone, max_length, special)
    model.special_ids = special
    return model


def import_preset(backbone_or_preset, output_dir, max_length=None, tokenizer=None):
    """Writes a language-model run directory for a keras-hub model.

    `output_dir` gets `model.keras` (`from_keras_hub`'s model, its special
    ids inside), `tokenizer/` (the preset's or task's, or `tokenizer`) and
    `config.json`; `export`, `translate`, `generate`, `serve` (after
    `export`) and the char-lm recipe's `--init-from` read it. What
    `keras-transformer import` runs. Returns `output_dir`.

    Raises:
        ValueError: no tokenizer (a bare backbone, or a preset saved without
            one, and no `tokenizer`).
    """
    from keras_transformer.generation.text_generator import save_language_model_run

    tokenizer = tokenizer or preset_tokenizer(backbone_or_preset)
    if tokenizer is None:
        raise ValueError(f"{backbone_or_preset!r} has no tokenizer (a bare backbone, or a "
                         "preset saved without one); pass `tokenizer=`.")
    model = from_keras_hub(backbone_or_preset, tokenizer=tokenizer, max_length=max_length)
    if model.is_encoder_decoder:
        raise ValueError(f"{model.name} is an encoder–decoder: `import` writes language-model "
                         "runs; translate with `Translator(from_keras_hub(...), tokenizer, "
                         "tokenizer, max_length=...)` instead.")
    source = (os.fspath(backbone_or_preset)
              if isinstance(backbone_or_preset, (str, os.PathLike))
              else type(backbone_or_preset).__name__)
    save_language_model_run(model, tokenizer, output_dir,
                            {"imported_from": source, "max_length": model.max_length,
                             "special_ids": model.special_ids.to_dict()})
    return output_dir


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


def _gpt2(backbone, max_length=None, special_ids=None):
    """GPT-2: learned positions, pre-LN LayerNorm (eps 1e-5), tanh GELU, tied output."""
    if max_length is not None and max_length > backbone.max_sequence_length:
        raise ValueError(f"GPT-2's learned positions stop at {backbone.max_sequence_length}. "
                         f"Received: max_length={max_length}")
    embedding = PositionalEmbedding(
        backbone.vocabulary_size, max_length or backbone.max_sequence_length,
        backbone.hidden_dim,
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
    embedding.position_embeddings.assign(
        backbone.position_embedding.position_embeddings[: embedding.max_length])
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


def _gpt2_special_ids(backbone, from_tokenizer):
    """The tokenizer's, else GPT-2's convention: the vocabulary ends with
    `<|endoftext|>`, which starts, ends and pads."""
    if from_tokenizer is not None:
        return from_tokenizer
    end = backbone.vocabulary_size - 1
    return SpecialIds(start=end, end=end, pad=end, unknown=None, suppressed=(),
                      prompt_start=True, stripped=())


def _rotary_scaling(backbone):
    """The preset's rotary frequency scaling, as a `rope_scaling` dict (or None)."""
    adjustment = getattr(backbone, "rope_frequency_adjustment_factor", None)
    if adjustment is not None:  # Llama 3.1
        return {"rope_type": "llama3", "factor": adjustment,
                "low_freq_factor": backbone.rope_low_freq_factor,
                "high_freq_factor": backbone.rope_high_freq_factor,
                "original_max_position_embeddings":
                    backbone.rope_pretraining_sequence_length}
    # keras-hub's Llama rotary layer never reads `rope_position_scaling_factor`
    # (its `_get_inverse_freq` ignores it): the same logits mean ignoring it too.
    factor = getattr(backbone, "rope_scaling_factor", 1.0)
    return None if factor == 1.0 else {"rope_type": "linear", "factor": factor}


def _llama_family(backbone, max_length=None, special_ids=None):
    """Llama, Llama 3, Mistral, Qwen2: RMSNorm, SwiGLU, GQA, rotary, no biases
    (Qwen2: query/key/value biases), tied or untied output."""
    family = type(backbone).__name__
    if getattr(backbone, "use_sliding_window_attention", False):
        raise ValueError(f"keras_transformer cannot import a {family} with "
                         "`use_sliding_window_attention=True` yet (Qwen's window counts "
                         "positions its own way); import it with the window off.")
    epsilon = backbone.layer_norm_epsilon
    embedding = PositionalEmbedding(
        backbone.vocabulary_size, max_length or DEFAULT_ROTARY_MAX_LENGTH, backbone.hidden_dim,
        positions="rotary", scale=False, mask_zero=False, name="token_embedding")
    token_ids = keras.Input((None,), dtype="int32", name="token_ids")
    x = keras.layers.Dropout(backbone.dropout, name="embedding_dropout")(embedding(token_ids))
    blocks = []
    for i in range(backbone.num_layers):
        block = DecoderBlock(
            backbone.num_query_heads, backbone.intermediate_dim, dropout=backbone.dropout,
            norm_first=True, norm="rms", layer_norm_epsilon=epsilon, activation="swiglu",
            head_dim=getattr(backbone, "head_dim", None),
            num_key_value_heads=backbone.num_key_value_heads, rotary=True,
            rotary_max_wavelength=backbone.rope_max_wavelength,
            rotary_scaling=_rotary_scaling(backbone),
            sliding_window=getattr(backbone, "sliding_window", None),
            use_bias="qkv" if family == "QwenBackbone" else False,
            name=f"decoder_block_{i}")
        x = block(x)
        blocks.append(block)
    final_norm = RMSNormalization(epsilon=epsilon, name="final_norm")
    x = final_norm(x)
    hub_embedding = backbone.token_embedding
    if hub_embedding.tie_weights:
        logits = embedding(x, reverse=True)
        output = None
    else:
        output = keras.layers.Dense(backbone.vocabulary_size, use_bias=False,
                                    dtype="float32", name="logits")
        logits = output(x)
    model = TransformerModel(token_ids, logits, name=backbone.name)

    embedding.token_embeddings.assign(hub_embedding.embeddings)
    if output is not None:
        output.kernel.assign(hub_embedding.reverse_embeddings)
    for ours, theirs in zip(blocks, backbone.transformer_layers):
        attention, hub_attention = ours._self_attention, theirs._self_attention_layer
        pairs = [(attention._query_dense, hub_attention._query_dense),
                 (attention._key_dense, hub_attention._key_dense),
                 (attention._value_dense, hub_attention._value_dense),
                 (attention._output_dense, hub_attention._output_dense),
                 (ours._self_attention_norm, theirs._self_attention_layernorm),
                 (ours._feedforward._inner_dense, theirs._feedforward_intermediate_dense),
                 (ours._feedforward._gate_dense, theirs._feedforward_gate_dense),
                 (ours._feedforward._output_dense, theirs._feedforward_output_dense),
                 (ours._feedforward_norm, theirs._feedforward_layernorm)]
        for mine, hub in pairs:
            mine.set_weights(hub.get_weights())
    final_norm.set_weights(backbone.layer_norm.get_weights())
    return model


def _bart(backbone, max_length=None, special_ids=None):
    """BART: an encoder–decoder, learned positions, an embedding LayerNorm on
    each side, post-LN blocks with exact GELU, the output tied to the token
    embedding, padding masked by the vocabulary's padding id."""
    if max_length is not None and max_length > backbone.max_sequence_length:
        raise ValueError(f"BART's learned positions stop at {backbone.max_sequence_length}. "
                         f"Received: max_length={max_length}")
    length = max_length or backbone.max_sequence_length
    vocabulary, width = backbone.vocabulary_size, backbone.hidden_dim
    # BART shares one token table between encoder and decoder; each
    # PositionalEmbedding holds its own, so the encoder's starts as a copy
    # (fine-tuning then trains the two apart).
    embed = dict(positions="learned", scale=False, padding_id=special_ids.pad)
    source_embedding = PositionalEmbedding(vocabulary, length, width,
                                           name="source_embedding", **embed)
    target_embedding = PositionalEmbedding(vocabulary, length, width,
                                           name="target_embedding", **embed)
    source_ids = keras.Input((None,), dtype="int32", name="source_ids")
    target_ids = keras.Input((None,), dtype="int32", name="target_ids")
    block = dict(num_heads=backbone.num_heads, ffn_dim=backbone.intermediate_dim,
                 dropout=backbone.dropout, norm_first=False, layer_norm_epsilon=1e-5,
                 activation="gelu")
    source_norm = keras.layers.LayerNormalization(epsilon=1e-5, name="source_embedding_norm")
    x = keras.layers.Dropout(backbone.dropout, name="source_dropout")(
        source_norm(source_embedding(source_ids)))
    encoder_blocks = [EncoderBlock(**block, name=f"encoder_block_{i}")
                      for i in range(backbone.num_layers)]
    for encoder_block in encoder_blocks:
        x = encoder_block(x)
    target_norm = keras.layers.LayerNormalization(epsilon=1e-5, name="target_embedding_norm")
    y = keras.layers.Dropout(backbone.dropout, name="target_dropout")(
        target_norm(target_embedding(target_ids)))
    decoder_blocks = [DecoderBlock(**block, name=f"decoder_block_{i}")
                      for i in range(backbone.num_layers)]
    for decoder_block in decoder_blocks:
        y = decoder_block(y, x)
    logits = target_embedding(y, reverse=True)
    model = TransformerModel([source_ids, target_ids], logits, name=backbone.name)

    for embedding, positions in ((source_embedding, backbone.encoder_position_embedding),
                                 (target_embedding, backbone.decoder_position_embedding)):
        embedding.token_embeddings.assign(backbone.token_embedding.embeddings)
        embedding.position_embeddings.assign(positions.position_embeddings[:length])
    source_norm.set_weights(backbone.encoder_embeddings_layer_norm.get_weights())
    target_norm.set_weights(backbone.decoder_embeddings_layer_norm.get_weights())
    for ours, theirs in zip(encoder_blocks + decoder_blocks,
                            backbone.encoder_transformer_layers
                            + backbone.decoder_transformer_layers):
        pairs = [(ours._self_attention, theirs._self_attention_layer),
                 (ours._self_attention_norm, theirs._self_attention_layer_norm),
                 (ours._feedforward._inner_dense, theirs._feedforward_intermediate_dense),
                 (ours._feedforward._output_dense, theirs._feedforward_output_dense),
                 (ours._feedforward_norm, theirs._feedforward_layer_norm)]
        if isinstance(ours, DecoderBlock):
            pairs += [(ours._cross_attention, theirs._cross_attention_layer),
                      (ours._cross_attention_norm, theirs._cross_attention_layer_norm)]
        for mine, hub in pairs:
            mine.set_weights(hub.get_weights())
    return model


def _bart_special_ids(backbone, from_tokenizer):
    """BART's decoder starts from `</s>` (keras-hub's preprocessor packs
    `</s> <s> tokens </s>`), ends with `</s>`, pads with `<pad>`; `<s>` is
    not shown. The tokenizer's ids, else BART's vocabulary's (`<s>`=0,
    `<pad>`=1, `</s>`=2)."""
    start, pad, end = ((from_tokenizer.start, from_tokenizer.pad, from_tokenizer.end)
                       if from_tokenizer is not None else (0, 1, 2))
    return SpecialIds(start=end, end=end, pad=pad, unknown=None, suppressed=(pad,),
                      stripped=(start,))


_CONVERTERS = {"GPT2Backbone": _gpt2, "LlamaBackbone": _llama_family,
               "Llama3Backbone": _llama_family, "MistralBackbone": _llama_family,
               "QwenBackbone": _llama_family, "BartBackbone": _bart}
_FAMILY_SPECIAL_IDS = {"GPT2Backbone": _gpt2_special_ids, "BartBackbone": _bart_special_ids}

# What the layers lack for the backbones that people ask for next.
_MISSING = {
    "T5Backbone": "T5's relative position bias (learned, bucketed, added to the "
                  "attention logits) and its unscaled attention",
    "GemmaBackbone": "Gemma's RMSNorm with (1 + scale) weights and its embedding scaled "
                     "by sqrt(hidden_dim) in the input's dtype; Gemma 2 also its attention "
                     "and final logit soft-capping and its post-attention and post-FFN norms",
    "Gemma3Backbone": "Gemma's RMSNorm with (1 + scale) weights, query/key norms, "
                      "alternating local and global attention with two rotary wavelengths, "
                      "and its post-attention and post-FFN norms",
    "MixtralBackbone": "a converter of Mixtral's experts into `MoE` (its top-2 router "
                       "renormalizes the chosen gates, as `MoE` does not)",
    "QwenMoeBackbone": "a converter of Qwen-MoE's experts into `MoE`, and its shared "
                       "expert with a gate of its own",
    "FalconBackbone": "Falcon's parallel attention and feed-forward (one norm, one residual)",
    "GPTNeoXBackbone": "GPT-NeoX's parallel residual and rotary embedding on part of each "
                       "head",
    "Phi3Backbone": "Phi-3's fused query/key/value and gate/up kernels and its "
                    "'su'/'longrope' rotary scaling",
    "BloomBackbone": "BLOOM's ALiBi position bias",
    "OPTBackbone": "a converter (OPT's learned positions start at offset 2)",
    "BertBackbone": "a decoder: BERT is an encoder alone, with nothing to decode",
    "WhisperBackbone": "an audio front end (log-mel features and convolutions)",
}
