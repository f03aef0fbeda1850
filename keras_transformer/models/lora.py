"""Low-rank adaptation (LoRA) of a model stacked from the layers.

`enable_lora(model, rank)` does what keras-hub's `backbone.enable_lora(rank)`
does: every weight of the model is frozen, and the query and value
projections of every attention layer get a trainable low-rank update
(Keras's `EinsumDense.enable_lora`: `kernel + (α/r)·A·B`, `A` random, `B`
zero, so the model is unchanged until it trains). `fit` then trains the
`A`/`B` pairs (and the biases of those projections, as in keras-hub). The
model decodes, saves and exports as before: the update is part of each
projection's forward pass, in the cached steps too.

    model = from_keras_hub("gpt2_base_en")
    enable_lora(model, rank=4)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=...)
    model.fit(dataset)
"""

from keras_transformer._keras_compat import all_layers

# The names of `MultiHeadAttention`'s query and value projections (those of
# Keras's `MultiHeadAttention` and of keras-hub's Llama attention too).
DEFAULT_TARGETS = ("query", "value")


def enable_lora(model, rank, target_layer_names=DEFAULT_TARGETS):
    """Freezes `model` and gives the layers named `target_layer_names` LoRA.

    Args:
        model: a Keras model (any model stacked from the package's layers).
        rank: int ≥ 1, the rank of each update.
        target_layer_names: names of the layers that get LoRA (default: the
            attention layers' `"query"` and `"value"` projections).

    Returns:
        The layers that got LoRA.

    Raises:
        ValueError: `rank` is not a positive int, or no layer of the model
            has one of the names (with LoRA) — what was looked for is said.
    """
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"`rank` must be an int >= 1. Received: rank={rank!r}")
    layers = all_layers(model, include_self=False)
    model.trainable = True
    for layer in layers:
        layer.trainable = False
    enabled = []
    for layer in layers:
        if layer.name in target_layer_names and callable(getattr(layer, "enable_lora", None)):
            layer.trainable = True
            layer.enable_lora(rank)
            enabled.append(layer)
    if not enabled:
        raise ValueError(f"No layer of model '{model.name}' is named one of "
                         f"{list(target_layer_names)} with `enable_lora`; nothing to adapt.")
    return enabled
