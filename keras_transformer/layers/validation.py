"""Argument checks shared by the layers, with messages that say what was received."""


def check_positive_int(name, value):
    """Raises a ValueError unless `value` is an int >= 1."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"`{name}` must be a positive int. Received: {name}={value!r}")


def check_rate(name, value):
    """Raises a ValueError unless `value` is in [0, 1) (a dropout rate)."""
    if not 0.0 <= value < 1.0:
        raise ValueError(f"`{name}` must be in [0, 1). Received: {name}={value}")
