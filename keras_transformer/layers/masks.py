"""Masks: the one place where keras_transformer builds, checks and merges them.

One convention everywhere in the package: masks are boolean and **True means
"attend"** (or "this token is real"). Integer masks are read as Keras reads
them (nonzero = attend); floating-point masks are refused with a TypeError
(`check_mask_shape`), since additive (0 / -inf) and "1 = masked" float masks
would be misread.

- padding mask `(B, T)`: True at real tokens, False at padding.
- attention mask `(B, T, S)`: True where query position `t` may attend to key
  position `s`.
- causal mask: key `s` is visible to query `t` iff `s <= t + offset`, where
  `offset` is the position of the first query (the cache index when decoding
  one step at a time against a longer key/value cache).

Every layer merges its masks with `merge_attention_masks`, so the rules live
here once and are tested here with exact values.
"""

import keras
from keras import ops

from keras_transformer.layers.positions import position_ids


def first_mask(*masks):
    """Returns the first mask that is not None (explicit masks come first).

    Layers accept an explicit padding mask and the implicit Keras mask that
    Keras passes in for them; the explicit one wins when both are given.
    """
    for mask in masks:
        if mask is not None:
            return mask
    return None


def check_mask_shape(name, mask, expected_shape):
    """Raises when `mask` cannot be a mask of `expected_shape`.

    Raises:
        ValueError: the shape does not match.
        TypeError: the mask is not bool or integer. Integer masks are read
            as Keras does (nonzero = attend); floating-point masks are refused,
            because the two float conventions in circulation, additive masks
            (0 / -inf) and the TensorFlow tutorial's "1 = masked", would both
            be silently misread.

    Args:
        name: the argument's name, for the message.
        mask: the mask tensor, or None (nothing to check).
        expected_shape: tuple of sizes; None (or a dynamic size) matches any.
    """
    if mask is None:
        return
    dtype = keras.backend.standardize_dtype(mask.dtype)
    if not (dtype == "bool" or dtype.startswith("int") or dtype.startswith("uint")):
        raise TypeError(
            f"`{name}` must be a bool mask, True = attend (or real token). Received: "
            f"{name}.dtype={dtype}. An additive mask (0 / -inf) or a '1 = masked' mask "
            "would be misread; convert it, e.g. `mask = additive == 0`."
        )
    shape = tuple(mask.shape)
    expected_shape = tuple(d if isinstance(d, int) else None for d in expected_shape)
    mismatch = len(shape) != len(expected_shape) or any(
        got is not None and want is not None and got != want
        for got, want in zip(shape, expected_shape)
    )
    if mismatch:
        raise ValueError(
            f"`{name}` must have shape {_shape_str(expected_shape)}. "
            f"Received: {name}.shape={_shape_str(shape)}"
        )


def causal_mask(query_length, key_length, offset=0, sliding_window=None):
    """Boolean causal mask of shape `(1, T, S)`.

    Args:
        query_length: T, the number of query positions.
        key_length: S, the number of key positions.
        offset: int or scalar tensor, the position of the first query. When a
            single decoding step `t` attends to a cache of length S, pass
            `offset=t`. Or a `(B,)` int tensor, one offset per row.
        sliding_window: int or None. When set, a query also sees only the
            `sliding_window` most recent keys, itself included (Mistral's
            sliding-window attention): `offset + t - s < sliding_window`.

    Returns:
        `(1, T, S)` bool tensor (`(B, T, S)` for per-row offsets), True where
        key position `s <= offset + t` (and within the window).
    """
    query_positions = position_ids(offset, query_length)  # [1 or B, T]
    key_positions = ops.arange(key_length, dtype="int32")
    distance = query_positions[:, :, None] - key_positions[None, None, :]
    mask = ops.greater_equal(distance, 0)
    if sliding_window is not None:
        mask = ops.logical_and(mask, ops.less(distance, int(sliding_window)))
    return mask


def merge_attention_masks(
    query_length,
    key_length,
    query_mask=None,
    value_mask=None,
    attention_mask=None,
    use_causal_mask=False,
    causal_offset=0,
    sliding_window=None,
):
    """Merges every kind of mask into one `(B, T, S)` boolean mask.

    The result is the logical AND of:
    `query_mask[:, :, None]`, `value_mask[:, None, :]`, `attention_mask` and
    the causal mask (offset by `causal_offset`). Masks that are None are left
    out; when all are None the result is None (attend everywhere).

    Args:
        query_length: T, an int or (for dynamic shapes) a scalar tensor.
        key_length: S, an int or a scalar tensor.
        query_mask: `(B, T)` padding mask of the queries, or None.
        value_mask: `(B, S)` padding mask of the keys/values, or None.
        attention_mask: `(B, T, S)` mask, or None.
        use_causal_mask: bool, whether to add the causal mask.
        causal_offset: int or scalar tensor, position of the first query, or
            a `(B,)` int tensor, one per row.
        sliding_window: int or None, with the causal mask: each query sees
            its `sliding_window` most recent keys only (`causal_mask`).

    Returns:
        A bool tensor broadcastable to `(B, T, S)` (its batch axis is 1 when
        only the causal mask is present), or None.
    """
    check_mask_shape("query_mask", query_mask, (None, query_length))
    check_mask_shape("value_mask", value_mask, (None, key_length))
    check_mask_shape(
        "attention_mask", attention_mask, (None, query_length, key_length)
    )
    masks = []
    if query_mask is not None:
        masks.append(ops.expand_dims(ops.cast(query_mask, "bool"), 2))
    if value_mask is not None:
        masks.append(ops.expand_dims(ops.cast(value_mask, "bool"), 1))
    if attention_mask is not None:
        masks.append(ops.cast(attention_mask, "bool"))
    if use_causal_mask:
        masks.append(causal_mask(query_length, key_length, causal_offset, sliding_window))
    if not masks:
        return None
    merged = masks[0]
    for mask in masks[1:]:
        merged = ops.logical_and(merged, mask)
    return merged


def _shape_str(shape):
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ")"


__all__ = [
    "causal_mask",
    "check_mask_shape",
    "first_mask",
    "merge_attention_masks",
]
