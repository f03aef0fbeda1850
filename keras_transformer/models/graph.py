"""Reads the Transformer structure of a Keras model built from the package's layers.

`read_structure(model)` finds, by layer types and connections (never by layer
names), the shape that cached decoding needs:

    token ids → PositionalEmbedding → [EncoderBlock | position-wise layer]…   (encoder)
    token ids → PositionalEmbedding → [DecoderBlock | position-wise layer]…
              → Dense, or the tied PositionalEmbedding(reverse=True)         (decoder)

where the decoder blocks' `encoder_sequence` is the encoder stack's output
(encoder–decoder), or absent (decoder-only). Position-wise layers act on each
token alone (`Dropout`, `LayerNormalization`, `RMSNormalization`, `Dense`,
`Activation`, `PositionwiseFFN`, ...), so the cached step applies them to the
new token exactly as the full pass does.

The graph is read from the model's functional configuration (`get_config`:
each layer's inbound nodes), or from a `keras.Sequential`'s layer order. A
model of another shape gets a `ValueError` that says what was found and what
was expected; such a model can still decode and export by implementing the
cached-decoding protocol itself (see `keras_transformer.models.cached_decoding`).
"""

import dataclasses

import keras

from keras_transformer.layers import (
    DecoderBlock,
    EncoderBlock,
    MoE,
    PositionalEmbedding,
    PositionwiseFFN,
    RMSNormalization,
)

# Layers that act on each position alone (identity at inference for the
# dropout kinds), so that they run unchanged on one token at a time.
_POSITION_WISE = tuple(
    cls for cls in (
        keras.layers.Dropout, keras.layers.GaussianDropout, keras.layers.GaussianNoise,
        keras.layers.AlphaDropout, keras.layers.LayerNormalization,
        getattr(keras.layers, "RMSNormalization", None), keras.layers.UnitNormalization,
        keras.layers.Dense, keras.layers.Activation, keras.layers.ReLU,
        keras.layers.Softmax, keras.layers.Identity, PositionwiseFFN, MoE, RMSNormalization,
    ) if cls is not None
)
# Call arguments that carry masks the cached step recomputes from the ids, or
# training flags; any other keyword argument in the graph is refused.
_MASK_KWARGS = {"mask", "training", "padding_mask", "decoder_padding_mask",
                "encoder_padding_mask", "decoder_sequence_mask", "encoder_sequence_mask"}

EXPECTED = (
    "expected token ids → PositionalEmbedding → EncoderBlocks (encoder) and token ids → "
    "PositionalEmbedding → DecoderBlocks → an optional final norm → a Dense projection or "
    "the tied PositionalEmbedding(reverse=True) (decoder), with only position-wise layers "
    f"({', '.join(cls.__name__ for cls in _POSITION_WISE)}) in between. A model of another "
    "shape can implement the cached-decoding protocol (encode, initial_cache, "
    "call_with_cache) instead"
)


@dataclasses.dataclass
class Stack:
    """One side of the model: its embedding and what follows it, in order.

    `layers` holds `(kind, layer)` pairs: `"block"` (an `EncoderBlock` or
    `DecoderBlock`), `"layer"` (a position-wise layer) or `"reverse"` (the
    tied embedding as the output projection). `input_index` is the model
    input that feeds the embedding.
    """

    embedding: PositionalEmbedding
    input_index: int
    layers: list

    @property
    def blocks(self):
        return [layer for kind, layer in self.layers if kind == "block"]


@dataclasses.dataclass
class ModelStructure:
    """The decoder stack, and the encoder stack of an encoder–decoder model."""

    decoder: Stack
    encoder: Stack | None = None


class _Graph:
    """The inbound nodes of a functional model's configuration."""

    def __init__(self, model):
        self.model = model
        config = model.get_config()
        self.entries = {entry["name"]: entry for entry in config["layers"]}
        self.inputs = [ref[0] for ref in _refs_list(config["input_layers"])]
        self.outputs = _refs_list(config["output_layers"])

    def node(self, ref):
        """`(layer, args, kwargs)` of the node that produced tensor `ref`."""
        name, index = ref[0], ref[1]
        entry = self.entries[name]
        if entry["class_name"] == "InputLayer":
            return None, [], {}
        inbound = entry["inbound_nodes"][index]
        try:
            layer = self.model.get_layer(name)
        except ValueError:  # a `keras.ops` operation in the graph, not a layer
            _fail(self.model, f"the operation {self.describe(ref)}",
                  "(the cached step repeats layers only)")
        return layer, inbound.get("args", []), inbound.get("kwargs", {})

    def describe(self, ref):
        if ref is None:
            return "nothing"
        entry = self.entries[ref[0]]
        return f"'{ref[0]}' ({entry['class_name']})"


def _refs_list(value):
    """`[name, node, tensor]` or a list of them → a list of them."""
    if value and isinstance(value[0], str):
        return [value]
    return list(value)


def _tensor_ref(value):
    """The `[name, node_index, tensor_index]` of a serialized KerasTensor, else None."""
    if isinstance(value, dict) and value.get("class_name") == "__keras_tensor__":
        return value["config"]["keras_history"]
    return None


def _fail(model, found, where):
    raise ValueError(
        f"Cannot read the Transformer structure of model '{model.name}': found {found} "
        f"{where}; {EXPECTED}."
    )


def _walk(graph, ref, block_type):
    """From tensor `ref` back to a `PositionalEmbedding` fed by a model input.

    Returns `(stack, encoder_ref)`: the stack in forward order, and for
    decoder blocks the tensor their `encoder_sequence` came from (None when
    the blocks are decoder-only).
    """
    layers, encoder_refs = [], []
    while True:
        layer, args, kwargs = graph.node(ref)
        tensors = [_tensor_ref(arg) for arg in args]
        if layer is None:
            _fail(graph.model, "the model input " + graph.describe(ref),
                  "with no PositionalEmbedding before it")
        where = f"where the {block_type.__name__} stack is read (from the output backwards)"
        if isinstance(layer, PositionalEmbedding) and not kwargs.get("reverse"):
            source = tensors[0] if tensors else None
            if (source is None or graph.entries[source[0]]["class_name"] != "InputLayer"
                    or kwargs.get("start_index")):
                _fail(graph.model, f"PositionalEmbedding '{layer.name}' fed by "
                      f"{graph.describe(source)}", "instead of by a model input")
            layers.reverse()
            stack = Stack(layer, graph.inputs.index(source[0]), layers)
            if not stack.blocks:
                _fail(graph.model, f"no {block_type.__name__} after '{layer.name}'", where)
            return stack, (encoder_refs[0] if encoder_refs else None)
        extra = set(kwargs) - _MASK_KWARGS - {"reverse", "encoder_sequence"}
        if extra:
            _fail(graph.model, f"'{layer.name}' ({type(layer).__name__}) called with "
                  f"{sorted(extra)}", "(the cached step cannot repeat those arguments)")
        if isinstance(layer, PositionalEmbedding):  # reverse=True: the tied projection
            layers.append(("reverse", layer))
        elif isinstance(layer, block_type):
            layers.append(("block", layer))
            if block_type is DecoderBlock:
                encoder = tensors[1] if len(tensors) > 1 else _tensor_ref(
                    kwargs.get("encoder_sequence"))
                if encoder_refs and encoder != encoder_refs[0]:
                    _fail(graph.model, f"DecoderBlock '{layer.name}' attending to "
                          f"{graph.describe(encoder)}, not to {graph.describe(encoder_refs[0])}",
                          "(every decoder block must attend to the same encoder output)")
                encoder_refs.append(encoder)
        elif isinstance(layer, _POSITION_WISE):
            layers.append(("layer", layer))
        else:
            _fail(graph.model, f"'{layer.name}' ({type(layer).__name__})", where)
        allowed = 2 if layers[-1][0] == "block" and block_type is DecoderBlock else 1
        if not tensors or tensors[0] is None or len(tensors) > allowed:
            _fail(graph.model, f"'{layer.name}' ({type(layer).__name__}) with inputs "
                  f"{[graph.describe(t) for t in tensors]}", where)
        ref = tensors[0]


def _read_sequential(model):
    layers = list(model.layers)
    if not layers or not isinstance(layers[0], PositionalEmbedding):
        _fail(model, f"a Sequential model starting with "
              f"{type(layers[0]).__name__ if layers else 'no layer'}",
              "(a decoder-only Sequential model starts with its PositionalEmbedding)")
    stack = []
    for layer in layers[1:]:
        if isinstance(layer, DecoderBlock) and not layer.has_cross_attention:
            stack.append(("block", layer))
        elif isinstance(layer, _POSITION_WISE):
            stack.append(("layer", layer))
        else:
            _fail(model, f"'{layer.name}' ({type(layer).__name__})", "in the Sequential model")
    structure = Stack(layers[0], 0, stack)
    if not structure.blocks:
        _fail(model, "no DecoderBlock", "in the Sequential model")
    return ModelStructure(structure)


def read_structure(model):
    """The `ModelStructure` of `model`, read from its graph.

    Args:
        model: a functional `keras.Model` (or `keras.Sequential`) assembled
            from `PositionalEmbedding`, `EncoderBlock`/`DecoderBlock` and
            position-wise layers.

    Raises:
        ValueError: the model is not of that shape; the message names the
            layer where reading stopped.
    """
    if isinstance(model, keras.Sequential):
        return _read_sequential(model)
    try:
        graph = _Graph(model)
    except (KeyError, NotImplementedError, TypeError) as error:
        raise ValueError(
            f"Cannot read the Transformer structure of model '{model.name}' "
            f"({type(model).__name__}): it is not a functional model ({error}); {EXPECTED}."
        ) from None
    if len(graph.outputs) != 1:
        _fail(model, f"{len(graph.outputs)} outputs", "(one output, the logits, is expected)")
    decoder, encoder_ref = _walk(graph, graph.outputs[0], DecoderBlock)
    encoder = None
    if encoder_ref is not None:
        encoder, _ = _walk(graph, encoder_ref, EncoderBlock)
    return ModelStructure(decoder, encoder)
