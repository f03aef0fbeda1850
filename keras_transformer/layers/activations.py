"""Feed-forward activations, the gated ones (GLU variants, Shazeer 2020) included.

`"swiglu"` and `"geglu"` make a feed-forward network gated:
`(act(x·W_g + b_g) ⊙ (x·W₁ + b₁))·W₂ + b₂`, with `act` SiLU (Swish) or GELU.
Any other activation (a Keras name or a callable) is the usual
`act(x·W₁ + b₁)·W₂ + b₂`. `"gelu_tanh"` is GELU with the tanh approximation
(GPT-2's; keras-hub's `gelu_approximate`), which Keras names no string for.
"""

import keras

GATED = {"swiglu": "silu", "geglu": "gelu"}


@keras.saving.register_keras_serializable(package="keras_transformer")
def gelu_tanh(x):
    """GELU with the tanh approximation: `keras.activations.gelu(x, approximate=True)`."""
    return keras.activations.gelu(x, approximate=True)


# Activations the package names itself (Keras has no string for them).
NAMED = {"gelu_tanh": gelu_tanh}


def resolve(activation):
    """`(gated, function)` for an activation name or callable."""
    if isinstance(activation, str) and activation.lower() in GATED:
        return True, keras.activations.get(GATED[activation.lower()])
    if isinstance(activation, str) and activation.lower() in NAMED:
        return False, NAMED[activation.lower()]
    return False, keras.activations.get(activation)


def serialize(activation, gated):
    """The config value: the GLU name when gated, else Keras's serialization."""
    if gated:
        name = keras.activations.serialize(activation)
        return {value: key for key, value in GATED.items()}[name]
    for name, function in NAMED.items():
        if activation is function:
            return name
    return keras.activations.serialize(activation)
