"""A CTranslate2 model directory from a model built from the package's layers.

`to_ctranslate2(model, source_tokenizer, target_tokenizer, path)` writes the
same weights as a CTranslate2 `TransformerSpec` (encoder–decoder) or
`TransformerDecoderModelSpec` (decoder-only: `to_ctranslate2(model,
tokenizer, None, path)`), so that the C++ engine decodes exactly what the
package decodes: greedy outputs equal token for token and teacher-forced
log-probabilities agree to float32 rounding. `model_spec(model)` is the
spec alone.

What is mapped (read from the graph by layer types, as cached decoding does):
LayerNorm or RMSNorm, pre- or post-norm, ReLU/GELU/SiLU and the gated
SwiGLU/GeGLU feed-forward networks, sinusoidal or learned positions (the
package's exact table is written, so CTranslate2's own, laid out
differently, is never used) or none, rotary positions in decoder-only
models (the package rotates half-split pairs: `rotary_interleave=False`),
grouped-query attention in decoder-only models and one or all key/value
heads in encoder–decoder ones, biases, tied or separate output projection.
What CTranslate2 cannot express (MoE, rotary positions or 1 < K < N
key/value heads in an encoder–decoder, blocks that differ from each other)
is a `ValueError` naming the layer.

The directory also holds what serving it as text needs
(`keras_transformer.export.ctranslate2_serving`): the tokenizers (when they
are the package's WordPiece or BPE ones) and `serving_config.json` (the
kind of model, `max_length` and the `DecodingConfig`). The decoding options
that make CTranslate2 search as the package does are in
`translate_options(decoding, max_length)` and `generate_options(...)`.

Requires the `ctranslate2` extra.
"""

import dataclasses
import json
import os

import keras
import numpy as np

from keras_transformer._keras_compat import all_layers
from keras_transformer._optional import require
from keras_transformer.data.special_tokens import (
    END_ID,
    PAD_ID,
    RESERVED_TOKENS,
    START_ID,
    UNK_ID,
)
from keras_transformer.layers import MoE, PositionwiseFFN, RMSNormalization
from keras_transformer.layers import activations as activations_lib
from keras_transformer.layers.positional_embedding import sinusoidal_positions
from keras_transformer.models.graph import read_structure

PAD_TOKEN = RESERVED_TOKENS[PAD_ID]
# What the directory holds besides CTranslate2's own files.
METADATA = "serving_config.json"

_DROPOUTS = (keras.layers.Dropout, keras.layers.GaussianDropout, keras.layers.GaussianNoise,
             keras.layers.AlphaDropout, keras.layers.Identity)


def _array(variable):
    return np.asarray(keras.ops.convert_to_numpy(variable), dtype=np.float32)


def _set_linear(spec, dense):
    """A `Dense` (or `(D, units)` kernel) into a CTranslate2 linear `(out, in)`."""
    spec.weight = np.ascontiguousarray(_array(dense.kernel).T)
    if dense.bias is not None:
        spec.bias = _array(dense.bias)


def _projection_kernel(einsum_dense):
    """An attention projection's `(D, N, H)` kernel as `(N·H, D)`, and its bias."""
    kernel = _array(einsum_dense.kernel)
    kernel = kernel.reshape(kernel.shape[0], -1).T
    bias = einsum_dense.bias
    return kernel, (None if bias is None else _array(bias).reshape(-1))


def _set_fused(spec, projections):
    kernels, biases = zip(*(_projection_kernel(p) for p in projections))
    spec.weight = np.ascontiguousarray(np.concatenate(kernels, axis=0))
    if biases[0] is not None:
        spec.bias = np.concatenate(biases, axis=0)


def _set_output(spec, attention):
    kernel = _array(attention._output_dense.kernel)  # [N, H, D]
    spec.weight = np.ascontiguousarray(kernel.reshape(-1, kernel.shape[-1]).T)
    if attention._output_dense.bias is not None:
        spec.bias = _array(attention._output_dense.bias)


def _set_norm(spec, norm):
    if isinstance(norm, RMSNormalization):
        spec.gamma = _array(norm.scale)
        return
    if isinstance(norm, keras.layers.LayerNormalization):
        spec.gamma = _array(norm.gamma) if norm.scale else np.ones(norm.gamma.shape, "float32")
        spec.beta = (_array(norm.beta) if norm.center
                     else np.zeros_like(spec.gamma))
        return
    raise ValueError(f"CTranslate2 takes LayerNormalization or RMSNormalization. "
                     f"Received: {type(norm).__name__} '{norm.name}'")


def _norm_name(norm):
    if isinstance(norm, RMSNormalization) or type(norm).__name__ == "RMSNormalization":
        return "rms"
    return "layer"


def _check_block(block, encoder_decoder):
    attention = block._self_attention
    if isinstance(block._feedforward, MoE):
        raise ValueError(f"CTranslate2 has no mixture of experts: block '{block.name}' has "
                         f"an MoE feed-forward layer '{block._feedforward.name}'.")
    if not isinstance(block._feedforward, PositionwiseFFN):
        raise ValueError(f"Block '{block.name}': unsupported feed-forward layer "
                         f"{type(block._feedforward).__name__}.")
    if encoder_decoder and attention.rotary:
        raise ValueError(f"Block '{block.name}' uses rotary positions, which CTranslate2 has "
                         "for decoder-only models only (TransformerSpec has none).")
    if encoder_decoder and attention._num_kv_heads not in (1, attention.num_heads):
        raise ValueError(f"Block '{block.name}' has {attention._num_kv_heads} key/value heads "
                         f"for {attention.num_heads} query heads; CTranslate2's "
                         "encoder–decoder models take one (multi-query) or all of them.")


def _activation(block):
    import ctranslate2

    Activation = ctranslate2.specs.Activation
    name = activations_lib.serialize(block._feedforward.activation, False)
    name = name if isinstance(name, str) else name.get("config", {}).get("name", name)
    table = {"relu": Activation.RELU, "gelu": Activation.GELU, "silu": Activation.SWISH,
             "swish": Activation.SWISH, "gelu_tanh": Activation.GELUTanh}
    if name not in table:
        raise ValueError(f"Block '{block.name}': CTranslate2 has no activation {name!r} "
                         f"(it has {sorted(table)}).")
    return table[name]


def _stack_parts(stack, side):
    """`(blocks, final_norm or None)` of one side, refusing what CTranslate2 lacks."""
    blocks, final_norm, reverse = [], None, False
    for kind, layer in stack.layers:
        if kind == "block":
            if final_norm is not None:
                raise ValueError(f"The {side}: a normalization '{final_norm.name}' stands "
                                 "between blocks; CTranslate2 has none there.")
            blocks.append(layer)
        elif kind == "reverse":
            reverse = True
        elif isinstance(layer, _DROPOUTS):
            continue
        elif isinstance(layer, (keras.layers.LayerNormalization, RMSNormalization)) and blocks:
            final_norm = layer
        elif isinstance(layer, keras.layers.Dense) and side == "decoder" and blocks:
            reverse = layer
        else:
            raise ValueError(f"The {side}: CTranslate2 has no place for layer "
                             f"'{layer.name}' ({type(layer).__name__}).")
    return blocks, final_norm, reverse


def _embedding_table(embedding):
    """The `(max_length, D)` position table the package adds, or None."""
    if not embedding.adds_positions:
        return None
    if embedding.positions == "learned":
        return _array(embedding.position_embeddings)
    positions = keras.ops.arange(embedding.max_length, dtype="int32")
    return _array(sinusoidal_positions(positions, embedding.embed_dim))


def _set_embeddings(stack_spec, embedding):
    if not embedding.scale:
        stack_spec.scale_embeddings = False
    table = _array(embedding.token_embeddings)
    target = stack_spec.embeddings
    (target[0] if isinstance(target, list) else target).weight = table
    positions = _embedding_table(embedding)
    if positions is not None:
        stack_spec.position_encodings.encodings = positions


def _set_attention(spec, attention, norm, self_attention):
    _set_norm(spec.layer_norm, norm)
    if self_attention:
        _set_fused(spec.linear[0], [attention._query_dense, attention._key_dense,
                                    attention._value_dense])
        _set_output(spec.linear[1], attention)
    else:
        _set_fused(spec.linear[0], [attention._query_dense])
        _set_fused(spec.linear[1], [attention._key_dense, attention._value_dense])
        _set_output(spec.linear[2], attention)


def _set_ffn(spec, block):
    ffn = block._feedforward
    _set_norm(spec.layer_norm, block._feedforward_norm)
    if ffn.gated:  # act(x·W_g) ⊙ (x·W₁): CTranslate2's linear_0 is the activated one
        _set_linear(spec.linear_0, ffn._gate_dense)
        _set_linear(spec.linear_0_noact, ffn._inner_dense)
    else:
        _set_linear(spec.linear_0, ffn._inner_dense)
    _set_linear(spec.linear_1, ffn._output_dense)


def _uniform(blocks, encoder_decoder):
    """What every block must share for CTranslate2, checked: a dict of it."""
    for block in blocks:
        _check_block(block, encoder_decoder)
    first = blocks[0]
    pre_norm = bool(first.norm_first)
    if any(bool(b.norm_first) != pre_norm or b.norm != first.norm for b in blocks):
        raise ValueError("CTranslate2 needs one normalization scheme for every block "
                         "(all pre-norm or all post-norm, one kind of norm).")
    epsilons = {float(b.layer_norm_epsilon) for b in blocks}
    if len(epsilons) != 1:
        raise ValueError(f"CTranslate2 needs one norm epsilon. Received: {sorted(epsilons)}")
    attention = [b._self_attention for b in blocks]
    heads = {(a.num_heads, a._num_kv_heads, a._head_dim) for a in attention}
    if len(heads) != 1:
        raise ValueError("CTranslate2 needs the same heads in every block. Received "
                         f"(query heads, key/value heads, head size): {sorted(heads)}")
    rotary = {(a.rotary, float(a.rotary_max_wavelength)) for a in attention}
    if len(rotary) != 1:
        raise ValueError("CTranslate2 needs rotary positions in every block or in none, "
                         f"with one wavelength. Received: {sorted(rotary)}")
    activation = _activation(first)
    if any(_activation(b) != activation or b._feedforward.gated != first._feedforward.gated
           for b in blocks):
        raise ValueError("CTranslate2 needs one feed-forward activation for every block.")
    ((num_heads, num_kv_heads, head_dim),) = heads
    ((rotary, wavelength),) = rotary
    return dict(pre_norm=pre_norm, norm=first.norm, epsilon=epsilons.pop(),
                num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim,
                rotary=rotary, wavelength=wavelength, activation=activation,
                gated=first._feedforward.gated)


def _check_final_norm(shared, norm, side):
    if shared["pre_norm"] and norm is None:
        raise ValueError(f"A pre-norm model needs a final normalization after the {side} "
                         "(the builders add it); CTranslate2 always applies one.")


def _set_stack_embedding(stack_spec, embedding, rotary, side):
    if rotary and embedding.adds_positions:
        raise ValueError(f"The {side} embedding '{embedding.name}' adds {embedding.positions} "
                         "positions and the blocks rotate by position too; CTranslate2 "
                         "takes one or the other.")
    _set_embeddings(stack_spec, embedding)
    if not rotary and not embedding.adds_positions:  # CTranslate2 always adds a table
        stack_spec.position_encodings.encodings = np.zeros(
            (embedding.max_length, embedding.embed_dim), "float32")


def _set_projection(spec, output, embedding):
    if output is True:  # tied to the (target) embedding
        spec.weight = _array(embedding.token_embeddings)
    elif isinstance(output, keras.layers.Dense):
        _set_linear(spec, output)
    else:
        raise ValueError("The decoder ends in neither the tied embedding nor a Dense layer.")


def transformer_spec(model):
    """The `ctranslate2.specs.TransformerSpec` of an encoder–decoder `model`, weights set.

    Raises:
        ValueError: the model is decoder-only (see `decoder_spec`), or has a
            part CTranslate2 cannot express (the message names the layer).
    """
    ctranslate2 = require("ctranslate2", "ctranslate2", "The CTranslate2 export")
    _check_float(model)
    structure = read_structure(model)
    if structure.encoder is None:
        raise ValueError(f"Model '{model.name}' is decoder-only: its spec is "
                         "`decoder_spec(model)` (TransformerDecoderModelSpec).")
    encoder_blocks, encoder_norm, _ = _stack_parts(structure.encoder, "encoder")
    decoder_blocks, decoder_norm, output = _stack_parts(structure.decoder, "decoder")
    shared = _uniform(encoder_blocks + decoder_blocks, encoder_decoder=True)
    _check_final_norm(shared, encoder_norm, "encoder")
    _check_final_norm(shared, decoder_norm, "decoder")
    spec = ctranslate2.specs.TransformerSpec.from_config(
        (len(encoder_blocks), len(decoder_blocks)), shared["num_heads"],
        pre_norm=shared["pre_norm"], activation=shared["activation"],
        ffn_glu=shared["gated"], rms_norm=shared["norm"] == "rms",
        multi_query_attention=shared["num_kv_heads"] == 1 < shared["num_heads"])
    spec.config.layer_norm_epsilon = shared["epsilon"]
    for side, stack, stack_spec, norm in (
            ("encoder", structure.encoder, spec.encoder, encoder_norm),
            ("decoder", structure.decoder, spec.decoder, decoder_norm)):
        _set_stack_embedding(stack_spec, stack.embedding, False, side)
        if norm is not None:
            _set_norm(stack_spec.layer_norm, norm)
    for layer_spec, block in zip(spec.encoder.layer, encoder_blocks):
        _set_attention(layer_spec.self_attention, block._self_attention,
                       block._self_attention_norm, True)
        _set_ffn(layer_spec.ffn, block)
    for layer_spec, block in zip(spec.decoder.layer, decoder_blocks):
        _set_attention(layer_spec.self_attention, block._self_attention,
                       block._self_attention_norm, True)
        _set_attention(layer_spec.attention, block._cross_attention,
                       block._cross_attention_norm, False)
        _set_ffn(layer_spec.ffn, block)
    _set_projection(spec.decoder.projection, output, structure.decoder.embedding)
    return spec


def decoder_spec(model):
    """The `ctranslate2.specs.TransformerDecoderModelSpec` of a decoder-only `model`.

    Raises:
        ValueError: the model has an encoder (see `transformer_spec`), or a
            part CTranslate2 cannot express (the message names the layer).
    """
    ctranslate2 = require("ctranslate2", "ctranslate2", "The CTranslate2 export")
    _check_float(model)
    structure = read_structure(model)
    if structure.encoder is not None:
        raise ValueError(f"Model '{model.name}' has an encoder: its spec is "
                         "`transformer_spec(model)` (TransformerSpec).")
    blocks, norm, output = _stack_parts(structure.decoder, "decoder")
    shared = _uniform(blocks, encoder_decoder=False)
    _check_final_norm(shared, norm, "decoder")
    grouped = shared["num_kv_heads"] != shared["num_heads"]
    spec = ctranslate2.specs.TransformerDecoderModelSpec.from_config(
        len(blocks), shared["num_heads"], pre_norm=shared["pre_norm"],
        activation=shared["activation"], ffn_glu=shared["gated"],
        rms_norm=shared["norm"] == "rms", no_final_norm=not shared["pre_norm"],
        rotary_dim=0 if shared["rotary"] else None, rotary_interleave=False,
        rotary_base=shared["wavelength"],
        num_heads_kv=shared["num_kv_heads"] if grouped else None)
    spec.config.layer_norm_epsilon = shared["epsilon"]
    _set_stack_embedding(spec.decoder, structure.decoder.embedding, shared["rotary"],
                         "decoder")
    if norm is not None:
        _set_norm(spec.decoder.layer_norm, norm)
    for layer_spec, block in zip(spec.decoder.layer, blocks):
        _set_attention(layer_spec.self_attention, block._self_attention,
                       block._self_attention_norm, True)
        _set_ffn(layer_spec.ffn, block)
    _set_projection(spec.decoder.projection, output, structure.decoder.embedding)
    return spec


def _check_float(model):
    quantized = [layer.name for layer in all_layers(model)
                 if getattr(layer, "quantization", None) or layer.quantization_mode]
    if quantized:
        raise ValueError(f"Model '{model.name}' has int8 layers {quantized[:3]}: export the "
                         "float32 model with `quantization='int8'` (CTranslate2 quantizes "
                         "the float32 weights itself).")


def model_spec(model):
    """`transformer_spec(model)` or `decoder_spec(model)`, by the model's structure."""
    if read_structure(model).encoder is None:
        return decoder_spec(model)
    return transformer_spec(model)


def vocabulary_tokens(tokenizer, size=None):
    """The tokenizer's vocabulary as CTranslate2 tokens: `get_vocabulary()` when
    it has one; otherwise (code points) the reserved tokens' names for ids
    0–3 and `<id>` for the others."""
    if hasattr(tokenizer, "get_vocabulary"):
        return [str(token) for token in tokenizer.get_vocabulary()]
    size = size or tokenizer.vocabulary_size()
    return [RESERVED_TOKENS[i] if i < len(RESERVED_TOKENS) else f"<{i}>"
            for i in range(size)]


def _set_special_tokens(config, vocabulary):
    config.bos_token = vocabulary[START_ID]
    config.eos_token = vocabulary[END_ID]
    config.unk_token = vocabulary[UNK_ID]


def to_ctranslate2(model, source_tokenizer, target_tokenizer, path, quantization=None, *,
                   max_length=None, decoding=None):
    """Writes `model` with its vocabularies as a CTranslate2 model directory.

    Args:
        model: a model built from the package's layers: encoder–decoder
            (`TransformerSpec`) or decoder-only (`TransformerDecoderModelSpec`).
        source_tokenizer, target_tokenizer: keras-hub tokenizers (the
            package's WordPiece or BPE ones; any with `get_vocabulary()` or
            `vocabulary_size()`). A decoder-only model has one: pass it as
            `source_tokenizer` and `target_tokenizer=None`.
        path: the directory to write (created; files in it are replaced).
        quantization: None (float32), or a CTranslate2 quantization such as
            `"int8"` applied to the weights when writing.
        max_length: int, what serving the directory decodes at most
            (default: the model's embedding length).
        decoding: the `DecodingConfig` serving the directory uses (default
            greedy).

    Returns:
        `path`.
    """
    from keras_transformer.generation.decoding import DecodingConfig

    spec = model_spec(model)
    structure = read_structure(model)
    decoder_only = structure.encoder is None
    if decoder_only:
        tokenizer = source_tokenizer if target_tokenizer is None else target_tokenizer
        vocabulary = vocabulary_tokens(tokenizer, structure.decoder.embedding.vocab_size)
        spec.register_vocabulary(vocabulary)
    else:
        if target_tokenizer is None:
            raise ValueError("An encoder–decoder model needs `target_tokenizer`. Received None.")
        spec.register_source_vocabulary(vocabulary_tokens(
            source_tokenizer, structure.encoder.embedding.vocab_size))
        vocabulary = vocabulary_tokens(target_tokenizer, structure.decoder.embedding.vocab_size)
        spec.register_target_vocabulary(vocabulary)
        spec.config.decoder_start_token = vocabulary[START_ID]
    _set_special_tokens(spec.config, vocabulary)
    spec.validate()
    spec.optimize(quantization=quantization)
    os.makedirs(path, exist_ok=True)
    spec.save(path)
    tokenizers = {"": source_tokenizer} if decoder_only else {
        "source_": source_tokenizer, "target_": target_tokenizer}
    saved = _save_tokenizers(tokenizers, path)
    metadata = {
        "kind": "text_generator" if decoder_only else "translator",
        "max_length": int(max_length or structure.decoder.embedding.max_length),
        "decoding": dataclasses.asdict(decoding or DecodingConfig()),
        "quantization": quantization or "float32",
        "tokenizers": saved,
    }
    with open(os.path.join(path, METADATA), "w") as handle:
        json.dump(metadata, handle, indent=2)
    return path


def export_ctranslate2(module, base_dir, version=None, quantization=None):
    """Writes a `Translator` or `TextGenerator` as a CTranslate2 directory at
    `base_dir/<version>/` (atomically, as `export_saved_model` does) and
    returns that path. Its model, tokenizers, `max_length` and decoding are
    the module's; `quantization` as in `to_ctranslate2`.
    """
    from keras_transformer.export.saved_model import write_version

    if hasattr(module, "source_tokenizer"):
        tokenizers = (module.source_tokenizer, module.target_tokenizer)
        max_length = module.max_length
    else:
        tokenizers = (module.tokenizer, None)
        max_length = module.max_length

    def write(staging, model_dir):
        to_ctranslate2(module.model, *tokenizers, model_dir, quantization,
                       max_length=max_length, decoding=module.decoding)

    return write_version(base_dir, version, write)


def _save_tokenizers(tokenizers, path):
    """The tokenizers saved under `path/<prefix>tokenizer/`: `{side: directory}`.

    The package's WordPiece and BPE tokenizers as `save_tokenizer` writes
    them; a `UnicodeCodepointTokenizer` as its configuration; any other is
    not saved (the directory then serves token ids only).
    """
    import keras_hub

    from keras_transformer.data import tokenizers as tk

    saved = {}
    for prefix, tokenizer in tokenizers.items():
        directory = f"{prefix}tokenizer"
        if isinstance(tokenizer, (keras_hub.tokenizers.WordPieceTokenizer,
                                  keras_hub.tokenizers.BytePairTokenizer)):
            tk.save_tokenizer(tokenizer, os.path.join(path, directory))
        elif isinstance(tokenizer, keras_hub.tokenizers.UnicodeCodepointTokenizer):
            os.makedirs(os.path.join(path, directory), exist_ok=True)
            with open(os.path.join(path, directory, "tokenizer.json"), "w") as handle:
                json.dump({"class": "UnicodeCodepointTokenizer", **tokenizer.get_config()},
                          handle, default=str)
        else:
            continue
        saved[prefix.rstrip("_") or "tokenizer"] = directory
    return saved


def translate_options(decoding, max_length):
    """`Translator.translate_batch` keyword arguments that search as `decoding` does.

    CTranslate2's beam ranks finished hypotheses by `score / length^α`
    (`length_penalty`) where the package uses GNMT's `((5 + length) / 6)^α`,
    so beam outputs can differ where two hypotheses are close; greedy is the
    same search. `[PAD]` is suppressed as in the package.
    """
    beam = decoding.beam_size if decoding.strategy == "beam" else 1
    options = dict(beam_size=beam, max_decoding_length=max_length, min_decoding_length=0,
                   suppress_sequences=[[PAD_TOKEN]], return_scores=False)
    if beam > 1:
        options["length_penalty"] = decoding.length_penalty
    if decoding.strategy == "sample":
        options.update(sampling_topk=decoding.top_k or 0,
                       sampling_topp=decoding.top_p, sampling_temperature=decoding.temperature)
    return options


def generate_options(decoding, max_new_tokens, vocabulary):
    """`Generator.generate_batch` keyword arguments that search as `decoding` does.

    CTranslate2 generates up to `max_new_tokens` after each prompt, where
    `TextGenerator`'s `max_length` counts every token, the prompt's
    included: for a batch, pass `max_length - shortest prompt` and cut each
    row to `max_length` tokens (greedy outputs are then the package's; a
    beam's length limit differs for the longer prompts). Sampling draws from
    CTranslate2's own random stream, so sampled text differs from the
    package's with the same seed.
    """
    beam = decoding.beam_size if decoding.strategy == "beam" else 1
    options = dict(beam_size=beam, max_length=max_new_tokens, min_length=0,
                   include_prompt_in_result=True, end_token=vocabulary[END_ID],
                   suppress_sequences=[[vocabulary[PAD_ID]]], return_scores=False)
    if beam > 1:
        options["length_penalty"] = decoding.length_penalty
    if decoding.strategy == "sample":
        options.update(sampling_topk=decoding.top_k or 0, sampling_topp=decoding.top_p,
                       sampling_temperature=decoding.temperature)
    return options
