"""Rotary position embeddings (RoFormer, Su et al. 2021) for queries and keys.

The frequencies are `1 / max_wavelength^(2i/H)` (the paper's 10,000; Llama 3
uses 500,000), optionally rescaled for contexts longer than the pretraining
one. `scaling` is a dict in the form of a Hugging Face config's
`rope_scaling` (which keras-hub's presets convert from):

- `{"rope_type": "linear", "factor": f}`: every frequency divided by `f`
  (positions interpolated; Mistral's and Qwen2's `rope_scaling_factor`);
- `{"rope_type": "llama3", "factor": f, "low_freq_factor": l,
  "high_freq_factor": h, "original_max_position_embeddings": n}`: Llama 3.1's
  frequency adjustment: wavelengths longer than `n / l` are divided by `f`,
  those shorter than `n / h` kept, those between blended smoothly.
"""

import math

from keras import ops

from keras_transformer.layers.positions import position_ids

SCALING_TYPES = {
    "linear": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor",
               "original_max_position_embeddings"),
}


def check_scaling(scaling):
    """Raises a ValueError unless `scaling` is None or a valid scaling dict;
    returns it as a plain dict (or None)."""
    if scaling is None:
        return None
    if not isinstance(scaling, dict) or scaling.get("rope_type") not in SCALING_TYPES:
        raise ValueError(
            "`rotary_scaling` must be None or a dict with `rope_type` one of "
            f"{sorted(SCALING_TYPES)} (and its fields). Received: {scaling!r}")
    needed = set(SCALING_TYPES[scaling["rope_type"]])
    given = set(scaling) - {"rope_type"}
    if given != needed:
        raise ValueError(
            f"`rotary_scaling` of rope_type {scaling['rope_type']!r} takes exactly "
            f"{sorted(needed)}. Received: {sorted(given)}")
    if not all(float(scaling[key]) > 0 for key in needed):
        raise ValueError(f"`rotary_scaling` values must be > 0. Received: {scaling!r}")
    if scaling["rope_type"] == "llama3" and not (
            scaling["high_freq_factor"] > scaling["low_freq_factor"]):
        raise ValueError("`rotary_scaling`: `high_freq_factor` must exceed "
                         f"`low_freq_factor`. Received: {scaling!r}")
    return dict(scaling)


def inverse_frequencies(head_dim, max_wavelength=10000, scaling=None):
    """The `(H/2,)` float32 rotation frequencies of a head of size `head_dim`."""
    exponents = ops.arange(0, head_dim, 2, dtype="float32") / head_dim
    inverse = 1.0 / ops.power(float(max_wavelength), exponents)
    if scaling is None:
        return inverse
    factor = float(scaling["factor"])
    if scaling["rope_type"] == "linear":
        return inverse / factor
    # Llama 3.1 (as Hugging Face's and keras-hub's `_get_inverse_freq`).
    low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
    original = float(scaling["original_max_position_embeddings"])
    wavelength = 2 * math.pi / inverse
    inverse = ops.where(wavelength > original / low, inverse / factor, inverse)
    smooth = (original / wavelength - low) / (high - low)
    smoothed = (1 - smooth) * inverse / factor + smooth * inverse
    medium = ops.logical_and(wavelength >= original / high, wavelength <= original / low)
    return ops.where(medium, smoothed, inverse)


def apply_rotary(heads, start_index=0, max_wavelength=10000, scaling=None):
    """Rotates `heads` `(B, T, N, H)` by their positions `start_index + t`.

    Feature pairs `(i, i + H/2)` are rotated by the angle
    `position · inverse_frequencies(H, max_wavelength, scaling)[i]` (the
    half-split convention of GPT-NeoX, LLaMA and keras-hub's
    `RotaryEmbedding`), so that the dot product of a rotated query and key
    depends on their distance only. The angles are computed in float32; the
    result has the dtype of `heads`.

    Args:
        heads: `(B, T, N, H)` projected queries or keys, `H` even.
        start_index: int or scalar int tensor, the position of the first row
            (the cache index during cached decoding), or a `(B,)` int tensor,
            one first position per batch row (`positions.position_ids`).
        max_wavelength: float, the longest wavelength (10,000 in the paper).
        scaling: None, or a scaling dict (see the module docstring).
    """
    head_dim = heads.shape[-1]
    if head_dim is None or head_dim % 2:
        raise ValueError(
            f"Rotary embeddings need an even head size. Received: head_dim={head_dim}"
        )
    positions = ops.cast(position_ids(start_index, ops.shape(heads)[1]), "float32")
    frequencies = inverse_frequencies(head_dim, max_wavelength, scaling)
    angles = positions[:, :, None] * frequencies[None, None, :]  # [1 or B, T, H/2]
    angles = ops.concatenate([angles, angles], axis=-1)[:, :, None, :]  # [1 or B, T, 1, H]
    x = ops.cast(heads, "float32")
    first, second = ops.split(x, 2, axis=-1)
    rotated_half = ops.concatenate([-second, first], axis=-1)
    out = x * ops.cos(angles) + rotated_half * ops.sin(angles)
    return ops.cast(out, heads.dtype)
