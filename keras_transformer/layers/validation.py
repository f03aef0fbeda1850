"""Argument checks shared by the layers, with messages that say what was received."""

import keras


def check_positive_int(name, value):
    """Raises a ValueError unless `value` is an int >= 1."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"`{name}` must be a positive int. Received: {name}={value!r}")


def check_rate(name, value):
    """Raises a ValueError unless `value` is in [0, 1) (a dropout rate)."""
    if not 0.0 <= value < 1.0:
        raise ValueError(f"`{name}` must be in [0, 1). Received: {name}={value}")


def check_key_value_heads(num_heads, num_key_value_heads):
    """Raises a ValueError unless `num_key_value_heads` is None or divides `num_heads`."""
    if num_key_value_heads is None:
        return
    if (not isinstance(num_key_value_heads, int) or isinstance(num_key_value_heads, bool)
            or num_key_value_heads < 1 or num_heads % num_key_value_heads):
        raise ValueError(
            "`num_key_value_heads` must be None or a positive divisor of `num_heads`. "
            f"Received: num_key_value_heads={num_key_value_heads!r}, num_heads={num_heads}")


def check_floating(name, tensor):
    """Raises a TypeError unless `tensor` holds floating-point features.

    Keras casts float inputs to the layer's compute dtype (float16, bfloat16,
    float64 are fine); integer or string inputs to a feature layer are almost
    always token ids that skipped the embedding.
    """
    if tensor is None:
        return
    dtype = keras.backend.standardize_dtype(tensor.dtype)
    if not keras.backend.is_float_dtype(dtype):
        raise TypeError(
            f"`{name}` must hold floating-point features of shape (batch, length, dim), "
            f"such as `PositionalEmbedding`'s output. Received: {name}.dtype={dtype}"
            + (" (token ids? embed them first)" if "int" in dtype else "")
        )


def check_token_ids(name, tensor):
    """Raises a TypeError unless `tensor` holds integer token ids.

    Float ids are refused rather than truncated (`1.7` would silently read row
    1): declare `keras.Input(shape=(None,), dtype="int32")`, or cast ids that
    are whole numbers with `ops.cast(ids, "int32")`.
    """
    dtype = keras.backend.standardize_dtype(tensor.dtype)
    if not (dtype.startswith("int") or dtype.startswith("uint")):
        raise TypeError(
            f"`{name}` must be integer token ids (int32 or int64). Received: "
            f"{name}.dtype={dtype}. Tokenize text first; declare "
            "`keras.Input(shape=(None,), dtype=\"int32\")`, or cast whole-number ids with "
            "`ops.cast(ids, \"int32\")`."
        )
