"""The recipes' `--ema` option: the momentum of the weights' moving average.

Both recipes build their optimizer with Keras's `use_ema` when the momentum
is above 0; each chooses its own default (translation: 0.999 on a real
corpus; the char-LM: by the budget). `checked(ema)` is the one check of a
value a user gave.
"""


def checked(ema):
    """`ema` as a float, if it is a momentum in [0, 1) (0: off); else a ValueError."""
    if not 0.0 <= ema < 1.0:
        raise ValueError(f"`--ema` is a momentum in [0, 1) (0: off). Received: --ema {ema:g}")
    return float(ema)
