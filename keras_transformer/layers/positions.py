"""Token positions from a start index: one for the batch, or one per row.

Every layer that places tokens (`PositionalEmbedding`, rotary embeddings,
the causal mask, `MultiHeadAttention`'s cache write) reads the position of a
call's first token, `start_index`, in one of two forms:

- an int or a scalar int tensor: every row starts there (training, and the
  searches, whose rows advance together);
- a `(B,)` int tensor: row `b` starts at `start_index[b]`. A server that
  keeps a pool of sequences at different positions steps them all in one
  call this way (continuous batching).

`position_ids` turns either into the positions of a call's `T` tokens,
`(1, T)` or `(B, T)`, which broadcast against `(B, T, ...)` alike.
"""

from keras import ops


def is_per_row(start_index):
    """Whether `start_index` gives one position per row (a rank-1 tensor)."""
    shape = getattr(start_index, "shape", None)
    return shape is not None and len(shape) == 1


def check_start_index(start_index):
    """Raises unless `start_index` is an int, a scalar or a `(B,)` tensor."""
    shape = getattr(start_index, "shape", None)
    if shape is not None and len(shape) > 1:
        raise ValueError(
            "`start_index` must be an int, a scalar int tensor, or a (batch,) int tensor "
            f"(one position per row). Received: a tensor of shape {tuple(shape)}"
        )


def position_ids(start_index, length):
    """int32 positions `start_index + t` for `t < length`.

    Args:
        start_index: int, scalar int tensor, or `(B,)` int tensor.
        length: T, an int or a scalar tensor.

    Returns:
        `(1, T)` int32 for a shared start, `(B, T)` for one start per row.
    """
    check_start_index(start_index)
    offsets = ops.arange(length, dtype="int32")[None, :]
    start = ops.cast(start_index, "int32")
    if is_per_row(start_index):
        return start[:, None] + offsets
    return offsets + start
