"""Int8 weights for a whole model stacked from the package's layers.

`quantize(model)` is Keras's `model.quantize("int8")` for models of the
package's layers: every `Dense` and `EinsumDense` projection (attention,
feed-forward networks, a separate output layer) and every
`PositionalEmbedding` token table (the tied output projection with it) get
int8 weights with one scale per output channel, and their inputs are
quantized per token when they run, as CTranslate2's int8 does. What has no
projection to quantize (norms, dropout, the input layers) stays as it is,
without Keras's warning for each. An `MoE` layer stays float32, router and
experts (they are the layer's own `(E, D, F)` kernels, run by a dispatch
einsum that has no int8 form here yet), and is named in one warning.

The layers record the mode in their configuration
(`keras_transformer.layers.quantization`), so the quantized model saves to
`.keras`, loads back quantized, decodes with `IdDecoder`, `Translator` and
`TextGenerator`, and exports as a SavedModel whose projections are int8.

    model = keras_transformer.models.quantize(model)   # in place; returns it
"""

import warnings

from keras_transformer._keras_compat import all_layers
from keras_transformer.layers import MoE
from keras_transformer.layers.quantization import MODES

_NOTHING_TO_QUANTIZE = r"Layer \w+ does not have a `quantize` method implemented"


def quantize(model, mode="int8"):
    """Quantizes `model`'s projections and token tables in place; returns `model`.

    Args:
        model: a built Keras model stacked from the package's layers (or any
            model: its Keras layers are quantized as `model.quantize` does).
        mode: `"int8"`.

    Raises:
        ValueError: another mode, or a model computing in 16 bits (quantize
            its `float32_copy`).
    """
    if mode not in MODES:
        raise ValueError(f"`mode` must be one of {MODES}. Received: mode={mode!r}")
    mixed = sorted({layer.dtype_policy.name for layer in all_layers(model)
                    if layer.dtype_policy.name.startswith("mixed")})
    if mixed:
        raise ValueError(f"Model '{model.name}' computes under {mixed}; quantize its "
                         "float32 copy (`keras_transformer.models.float32_copy(model)`).")
    experts = [layer.name for layer in all_layers(model) if isinstance(layer, MoE)]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_NOTHING_TO_QUANTIZE)
        model.quantize(mode)
    if experts:
        warnings.warn(f"The MoE layers {experts} stay float32 (router and experts: their "
                      "kernels have no int8 form yet); the model's other projections are "
                      "int8.", stacklevel=2)
    return model
