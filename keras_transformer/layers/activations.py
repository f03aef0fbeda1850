"""Feed-forward activations, the gated ones (GLU variants, Shazeer 2020) included.

`"swiglu"` and `"geglu"` make a feed-forward network gated:
`(act(x·W_g + b_g) ⊙ (x·W₁ + b₁))·W₂ + b₂`, with `act` SiLU (Swish) or GELU.
Any other activation (a Keras name or a callable) is the usual
`act(x·W₁ + b₁)·W₂ + b₂`.
"""

import keras

GATED = {"swiglu": "silu", "geglu": "gelu"}


def resolve(activation):
    """`(gated, function)` for an activation name or callable."""
    if isinstance(activation, str) and activation.lower() in GATED:
        return True, keras.activations.get(GATED[activation.lower()])
    return False, keras.activations.get(activation)


def serialize(activation, gated):
    """The config value: the GLU name when gated, else Keras's serialization."""
    if gated:
        name = keras.activations.serialize(activation)
        return {value: key for key, value in GATED.items()}[name]
    return keras.activations.serialize(activation)
