"""What a Transformer block is made of, beyond its width: one description, checked once.

`BlockOptions` lists the options that `EncoderBlock` and `DecoderBlock` take
(heads, feed-forward width and activation, normalization and where it goes,
dropout, key/value heads, rotary positions, MoE), their allowed values and
what each means. Everything that takes these options goes through it:

- the blocks check their arguments by making a `BlockOptions`;
- `TransformerConfig` checks its block fields the same way
  (`TransformerConfig.block_options(index)`);
- the command's model flags (`keras_transformer.recipes.model_options`) are
  made from its fields' `metadata` (flag, help, choices).

So adding an option starts here: a field, its check in `__post_init__`, its
use in `TransformerBlockBase`. Position encodings are a model's choice, not a
block's (the embedding adds them, or the blocks rotate queries and keys):
`POSITIONS` lists them, and `rotary` is what a block sees of them.

Example:

>>> from keras_transformer import DecoderBlock
>>> options = BlockOptions(num_heads=4, ffn_dim=344, norm="rms", activation="swiglu",
...                        norm_first=True, num_key_value_heads=2, rotary=True)
>>> block = DecoderBlock(**options.block_arguments())
>>> BlockOptions(num_heads=4, ffn_dim=64, num_key_value_heads=3)
Traceback (most recent call last):
...
ValueError: `num_key_value_heads` must be None or a positive divisor of `num_heads`. \
Received: num_key_value_heads=3, num_heads=4
"""

import dataclasses

from keras_transformer.layers import activations as activations_lib
from keras_transformer.layers import rotary as rotary_lib
from keras_transformer.layers.validation import (
    check_key_value_heads,
    check_positive_int,
    check_rate,
)

NORMS = ("layer", "rms")
"""`norm`: LayerNorm (the paper's) or RMSNorm."""

POSITIONS = ("sinusoidal", "learned", "rotary")
"""A model's position encodings: added sinusoids (the paper's), added learned
vectors, or rotary (queries and keys rotated in self-attention, nothing added:
`PositionalEmbedding(positions="rotary")` and blocks with `rotary=True`)."""


def check_positions(positions, allowed=POSITIONS):
    """Raises a ValueError unless `positions` is one of `allowed`."""
    if positions not in allowed:
        raise ValueError(f"`positions` must be one of {allowed}. Received: "
                         f"positions={positions!r}")


def _option(default, help, flag=None, kind=None, choices=None):
    """A field with what the command line needs to offer it (`flag` None: no flag)."""
    return dataclasses.field(default=default, metadata={
        "help": help, "flag": flag, "kind": kind, "choices": choices})


@dataclasses.dataclass(frozen=True)
class BlockOptions:
    """The options of one Transformer block, checked when made.

    The defaults are the paper's base block. `block_arguments()` gives them as
    the keyword arguments of `EncoderBlock` / `DecoderBlock`.

    Raises:
        ValueError: an option out of its range, with what was received.
    """

    num_heads: int = _option(8, "attention heads (embed_dim must divide by it)", "--num-heads",
                             int)
    ffn_dim: int = _option(2048, "inner width of the feed-forward networks", "--ffn-dim", int)
    dropout: float = _option(0.1, "dropout rate (residual, attention, embedding)", "--dropout",
                             float)
    norm_first: bool = _option(False, "pre-LN blocks (--no-norm-first: post-LN, the paper's)",
                               "--norm-first", bool)
    norm: str = _option("layer", "normalization: LayerNorm or RMSNorm", "--norm", str, NORMS)
    layer_norm_epsilon: float = _option(1e-5, "epsilon of the normalizations")
    activation: str = _option("relu", "activation of the feed-forward networks (relu, gelu, "
                                      "gelu_tanh, or gated swiglu / geglu)", "--activation", str)
    num_key_value_heads: int | None = _option(
        None, "key/value heads, grouped-query attention (1: multi-query; default: one per "
              "head)", "--kv-heads", int)
    rotary: bool = _option(False, "rotary position embeddings in self-attention")
    moe: dict | None = _option(None, "MoE arguments (at least num_experts) in place of the "
                                     "feed-forward network")
    use_bias: bool | str = _option(True, "biases in the attention and feed-forward "
                                         "projections; 'qkv': in the query, key and value "
                                         "projections only (Qwen2's)")
    rotary_max_wavelength: float = _option(10000, "the rotary embeddings' longest wavelength "
                                                  "(a preset's rope_theta)")
    rotary_scaling: dict | None = _option(None, "rotary frequencies rescaled for long "
                                                "contexts, as Hugging Face's rope_scaling "
                                                "(rope_type 'linear' or 'llama3')")
    sliding_window: int | None = _option(None, "each query attends to its n most recent "
                                               "positions only, in causal self-attention "
                                               "(Mistral's)")

    def __post_init__(self):
        check_positive_int("num_heads", self.num_heads)
        check_positive_int("ffn_dim", self.ffn_dim)
        check_rate("dropout", self.dropout)
        if self.norm not in NORMS:
            raise ValueError(f"`norm` must be one of {NORMS}. Received: norm={self.norm!r}")
        if not self.layer_norm_epsilon > 0:
            raise ValueError("`layer_norm_epsilon` must be > 0. Received: "
                             f"layer_norm_epsilon={self.layer_norm_epsilon!r}")
        try:
            activations_lib.resolve(self.activation)
        except (ValueError, TypeError) as error:
            raise ValueError("`activation` must be a Keras activation, 'swiglu' or 'geglu'. "
                             f"Received: activation={self.activation!r}") from error
        check_key_value_heads(self.num_heads, self.num_key_value_heads)
        if self.use_bias not in (True, False, "qkv"):
            raise ValueError("`use_bias` must be True, False or 'qkv'. Received: "
                             f"use_bias={self.use_bias!r}")
        if not float(self.rotary_max_wavelength) > 0:
            raise ValueError("`rotary_max_wavelength` must be > 0. Received: "
                             f"rotary_max_wavelength={self.rotary_max_wavelength!r}")
        object.__setattr__(self, "rotary_scaling", rotary_lib.check_scaling(self.rotary_scaling))
        if self.sliding_window is not None:
            check_positive_int("sliding_window", self.sliding_window)
        if self.moe is not None and (not isinstance(self.moe, dict)
                                     or "num_experts" not in self.moe):
            raise ValueError(
                "`moe` must be None (a dense feed-forward network) or a dict of `MoE` "
                "arguments with at least `num_experts`, e.g. "
                f"{{'num_experts': 8, 'top_k': 2}}. Received: moe={self.moe!r}")

    def block_arguments(self):
        """The options as keyword arguments of `EncoderBlock` / `DecoderBlock`."""
        return dataclasses.asdict(self)


def command_line_fields():
    """The fields that have a command-line flag, in order: `(field, metadata)`."""
    return [(field.name, field.metadata) for field in dataclasses.fields(BlockOptions)
            if field.metadata["flag"]]
