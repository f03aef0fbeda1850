"""Int8 weights in the package's layers, kept through `get_config` and `.keras`.

Keras quantizes its own `Dense` and `EinsumDense` (`layer.quantize("int8")`:
per-output-channel int8 kernels, and per token the activations, by absolute
maximum), and `model.quantize("int8")` reaches them inside the package's
layers. What Keras does not do is rebuild them quantized when a model is
loaded: a layer that makes its projections in `build()` has to say so in its
own configuration. The package's layers that hold projections
(`MultiHeadAttention`, `PositionwiseFFN`, the blocks) take a `quantization`
argument (None or `"int8"`), build their projections with an int8 dtype
policy when it is set, and report the mode their projections actually have
in `get_config()`, however they were quantized. So a quantized model saves
to `.keras` and loads back quantized.
"""

import keras

MODES = ("int8",)


def check_mode(quantization):
    """`quantization` if it is None or a supported mode, else a ValueError."""
    if quantization is not None and quantization not in MODES:
        raise ValueError(f"`quantization` must be None or one of {MODES}. "
                         f"Received: quantization={quantization!r}")
    return quantization


def projection_policy(layer, quantization):
    """The dtype policy of `layer`'s projections: its own, or its int8 form."""
    if quantization is None:
        return layer.dtype_policy
    return keras.dtype_policies.get(f"{quantization}_from_{layer.dtype_policy.name}")


def mode_of(layer, projections):
    """The quantization of `projections` (None, or their one shared mode);
    `layer.quantization` while they are not made yet (None entries)."""
    projections = [projection for projection in projections if projection is not None]
    if not projections:
        return layer.quantization
    modes = {projection.quantization_mode for projection in projections}
    if len(modes) != 1:
        raise ValueError(f"Layer '{layer.name}' has projections quantized differently "
                         f"({sorted(map(str, modes))}); quantize all of them or none.")
    return modes.pop()
