"""A CTranslate2 model directory from a model built from the package's layers.

`to_ctranslate2(model, source_tokenizer, target_tokenizer, path)` writes the
same weights as a CTranslate2 `TransformerSpec` (encoder–decoder) so that the
C++ engine decodes exactly what the package decodes: greedy outputs equal
token for token and teacher-forced log-probabilities agree to float32
rounding. `benchmarks/decode_engines.py` uses it to compare the package's
decoding with the engine's on the same weights.

What is mapped (read from the graph by layer types, as cached decoding does):
LayerNorm or RMSNorm, pre- or post-norm, ReLU/GELU/SiLU and the gated
SwiGLU/GeGLU feed-forward networks, sinusoidal or learned positions (the
package's exact table is written, so CTranslate2's own, laid out
differently, is never used), biases, tied or separate output projection.
What CTranslate2 cannot express, or this mapping does not yet cover (MoE,
rotary positions, grouped-query attention in an encoder–decoder,
decoder-only models), is a `ValueError` naming the layer.

The decoding options that make CTranslate2 search as the package does are
in `translate_options(decoding, max_length)`.

Requires the `ctranslate2` extra.
"""

import os

import keras
import numpy as np

from keras_transformer._optional import require
from keras_transformer.data.special_tokens import RESERVED_TOKENS
from keras_transformer.layers import MoE, PositionwiseFFN, RMSNormalization
from keras_transformer.layers.positional_embedding import sinusoidal_positions
from keras_transformer.models.graph import read_structure

PAD_TOKEN, UNK_TOKEN, START_TOKEN, END_TOKEN = RESERVED_TOKENS

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


def _check_block(block):
    attention = block._self_attention
    if isinstance(block._feedforward, MoE):
        raise ValueError(f"CTranslate2 has no mixture of experts: block '{block.name}' has "
                         f"an MoE feed-forward layer '{block._feedforward.name}'.")
    if not isinstance(block._feedforward, PositionwiseFFN):
        raise ValueError(f"Block '{block.name}': unsupported feed-forward layer "
                         f"{type(block._feedforward).__name__}.")
    if attention.rotary:
        raise ValueError(f"Block '{block.name}' uses rotary positions, which this CTranslate2 "
                         "mapping does not cover yet.")
    if attention._num_kv_heads != attention.num_heads:
        raise ValueError(f"Block '{block.name}' uses grouped-query attention, which "
                         "CTranslate2's encoder–decoder models do not have.")


def _activation(block):
    import ctranslate2

    Activation = ctranslate2.specs.Activation
    name = keras.activations.serialize(block._feedforward.activation)
    name = name if isinstance(name, str) else name.get("config", {}).get("name", name)
    table = {"relu": Activation.RELU, "gelu": Activation.GELU, "silu": Activation.SWISH,
             "swish": Activation.SWISH}
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
    if embedding.positions == "none":
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


def transformer_spec(model):
    """The `ctranslate2.specs.TransformerSpec` of an encoder–decoder `model`, weights set.

    Raises:
        ValueError: the model is decoder-only, or has a part CTranslate2
            cannot express (the message names the layer).
    """
    ctranslate2 = require("ctranslate2", "ctranslate2", "The CTranslate2 export")
    structure = read_structure(model)
    if structure.encoder is None:
        raise ValueError(f"Model '{model.name}' is decoder-only; this mapping covers "
                         "encoder–decoder models (TransformerSpec).")
    encoder_blocks, encoder_norm, _ = _stack_parts(structure.encoder, "encoder")
    decoder_blocks, decoder_norm, output = _stack_parts(structure.decoder, "decoder")
    blocks = encoder_blocks + decoder_blocks
    for block in blocks:
        _check_block(block)
    first = blocks[0]
    pre_norm = bool(first.norm_first)
    if any(bool(b.norm_first) != pre_norm or b.norm != first.norm for b in blocks):
        raise ValueError("CTranslate2 needs one normalization scheme for every block "
                         "(all pre-norm or all post-norm, one kind of norm).")
    if pre_norm and (encoder_norm is None or decoder_norm is None):
        raise ValueError("A pre-norm model needs a final normalization after each stack "
                         "(the builders add it); CTranslate2 always applies one.")
    heads = {b._self_attention.num_heads for b in blocks}
    if len(heads) != 1:
        raise ValueError(f"CTranslate2 needs one number of heads. Received: {sorted(heads)}")
    activation = _activation(first)
    if any(_activation(b) != activation or b._feedforward.gated != first._feedforward.gated
           for b in blocks):
        raise ValueError("CTranslate2 needs one feed-forward activation for every block.")

    spec = ctranslate2.specs.TransformerSpec.from_config(
        (len(encoder_blocks), len(decoder_blocks)), heads.pop(), pre_norm=pre_norm,
        activation=activation, ffn_glu=first._feedforward.gated, rms_norm=first.norm == "rms")
    spec.config.layer_norm_epsilon = float(first.layer_norm_epsilon)
    for side, stack, stack_spec, norm in (
            ("encoder", structure.encoder, spec.encoder, encoder_norm),
            ("decoder", structure.decoder, spec.decoder, decoder_norm)):
        if stack.embedding.positions == "none":
            raise ValueError(f"The {side} embedding adds no positions; CTranslate2's "
                             "TransformerSpec always adds some.")
        _set_embeddings(stack_spec, stack.embedding)
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
    if output is True:  # tied to the target embedding
        spec.decoder.projection.weight = _array(structure.decoder.embedding.token_embeddings)
    elif isinstance(output, keras.layers.Dense):
        _set_linear(spec.decoder.projection, output)
    else:
        raise ValueError("The decoder ends in neither the tied embedding nor a Dense layer.")
    spec.config.bos_token = START_TOKEN
    spec.config.eos_token = END_TOKEN
    spec.config.unk_token = UNK_TOKEN
    spec.config.decoder_start_token = START_TOKEN
    return spec


def to_ctranslate2(model, source_tokenizer, target_tokenizer, path, quantization=None):
    """Writes `model` with its vocabularies as a CTranslate2 model directory.

    Args:
        model: an encoder–decoder model built from the package's layers.
        source_tokenizer, target_tokenizer: keras-hub tokenizers with
            `get_vocabulary()` (the package's WordPiece or BPE tokenizers).
        path: the directory to write (created; files in it are replaced).
        quantization: None (float32), or a CTranslate2 quantization such as
            `"int8"` applied to the weights when writing.

    Returns:
        `path`.
    """
    spec = transformer_spec(model)
    spec.register_source_vocabulary(list(source_tokenizer.get_vocabulary()))
    spec.register_target_vocabulary(list(target_tokenizer.get_vocabulary()))
    spec.validate()
    spec.optimize(quantization=quantization)
    os.makedirs(path, exist_ok=True)
    spec.save(path)
    return path


def translate_options(decoding, max_length):
    """`translate_batch` keyword arguments that search as `decoding` does.

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
    return options

