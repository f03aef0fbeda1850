"""Rotary position embeddings (RoFormer, Su et al. 2021) for queries and keys."""

from keras import ops


def apply_rotary(heads, start_index=0, max_wavelength=10000):
    """Rotates `heads` `(B, T, N, H)` by their positions `start_index + t`.

    Feature pairs `(i, i + H/2)` are rotated by the angle
    `position / max_wavelength^(2i/H)` (the half-split convention of GPT-NeoX,
    LLaMA and keras-hub's `RotaryEmbedding`), so that the dot product of a
    rotated query and key depends on their distance only. The angles are
    computed in float32; the result has the dtype of `heads`.

    Args:
        heads: `(B, T, N, H)` projected queries or keys, `H` even.
        start_index: int or scalar int tensor, the position of the first row
            (the cache index during cached decoding).
        max_wavelength: float, the longest wavelength (10,000 in the paper).
    """
    head_dim = heads.shape[-1]
    if head_dim is None or head_dim % 2:
        raise ValueError(
            f"Rotary embeddings need an even head size. Received: head_dim={head_dim}"
        )
    positions = ops.cast(
        ops.arange(ops.shape(heads)[1], dtype="int32") + ops.cast(start_index, "int32"),
        "float32",
    )
    inverse_frequencies = ops.power(
        float(max_wavelength), -ops.arange(0, head_dim, 2, dtype="float32") / head_dim
    )
    angles = ops.einsum("t,f->tf", positions, inverse_frequencies)  # [T, H/2]
    angles = ops.concatenate([angles, angles], axis=-1)[None, :, None, :]  # [1, T, 1, H]
    x = ops.cast(heads, "float32")
    first, second = ops.split(x, 2, axis=-1)
    rotated_half = ops.concatenate([-second, first], axis=-1)
    out = x * ops.cos(angles) + rotated_half * ops.sin(angles)
    return ops.cast(out, heads.dtype)
