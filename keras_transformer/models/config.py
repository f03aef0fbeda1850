"""One configuration for every model builder."""

import dataclasses

from keras_transformer.layers.block_options import BlockOptions, check_positions
from keras_transformer.layers.validation import check_positive_int


@dataclasses.dataclass
class TransformerConfig:
    """Sizes and choices of a Transformer; the defaults are the paper's base model.

    `build_transformer` reads all of it; `build_causal_lm` ignores the encoder
    fields. `to_dict`/`from_dict` store it beside a trained model. The block
    fields (heads, FFN, dropout, norms, activation, key/value heads, MoE) mean
    and are checked as `keras_transformer.layers.BlockOptions` says;
    `block_options(index)` gives one block's.
    """

    vocab_size: int = 8000  # target (decoder) vocabulary; also the source one if not set
    source_vocab_size: int | None = None  # a separate source vocabulary, if any
    shared_vocabulary: bool = False  # one vocabulary and embedding for source and target (the paper)
    max_length: int = 256  # longest sequence the position encodings accept
    embed_dim: int = 512  # d_model in the paper
    num_heads: int = 8  # head_dim = embed_dim // num_heads = 64
    ffn_dim: int = 2048  # 4 × embed_dim, as in the paper
    num_encoder_layers: int = 6
    num_decoder_layers: int = 6
    dropout: float = 0.1  # residual, attention and embedding dropout (P_drop)
    norm_first: bool = False  # post-LN as in the paper; pre-LN is steadier for deep stacks
    layer_norm_epsilon: float = 1e-5
    activation: str = "relu"  # max(0, xW₁+b₁)W₂+b₂; "gelu", or gated "swiglu" / "geglu"
    positions: str = "sinusoidal"  # block_options.POSITIONS: or "learned", or "rotary"
    tie_embeddings: bool = True  # the paper shares the target embedding and the output projection
    moe: dict | None = None  # MoE arguments (e.g. {"num_experts": 8}) to replace the FFNs
    moe_every: int = 2  # with `moe`: every n-th block is MoE (Switch uses every other one)
    norm: str = "layer"  # LayerNorm as in the paper, or "rms" (RMSNorm)
    num_key_value_heads: int | None = None  # grouped-query attention (1: multi-query)
    # A pretrained architecture's details (BlockOptions says what each means):
    use_bias: bool | str = True  # False: Llama's projections; "qkv": Qwen2's
    rotary_max_wavelength: float = 10000  # with positions="rotary": rope_theta
    rotary_scaling: dict | None = None  # Hugging Face's rope_scaling (linear, llama3)
    sliding_window: int | None = None  # Mistral's sliding-window self-attention

    def __post_init__(self):
        check_positive_int("embed_dim", self.embed_dim)
        check_positive_int("max_length", self.max_length)
        check_positive_int("vocab_size", self.vocab_size)
        check_positive_int("num_heads", self.num_heads)
        if self.embed_dim % self.num_heads:
            raise ValueError(
                "`embed_dim` must be divisible by `num_heads`. "
                f"Received: embed_dim={self.embed_dim}, num_heads={self.num_heads}"
            )
        if self.shared_vocabulary and self.source_vocab_size not in (None, self.vocab_size):
            raise ValueError(
                "A shared vocabulary has one size. Received: "
                f"vocab_size={self.vocab_size}, source_vocab_size={self.source_vocab_size}"
            )
        check_positions(self.positions)
        if self.moe_every < 1:
            raise ValueError(f"`moe_every` must be >= 1. Received: moe_every={self.moe_every}")
        # The block fields are checked where the blocks check them.
        self.block_options(self.moe_every - 1)

    def block_options(self, index):
        """The `BlockOptions` of block `index` (0-based) of either stack.

        The same for every block, but for `moe`: with `moe` set, every
        `moe_every`-th block (the 2nd, 4th, ... by default) is a mixture of
        experts and the others are dense.
        """
        use_moe = self.moe is not None and (index + 1) % self.moe_every == 0
        return BlockOptions(
            num_heads=self.num_heads, ffn_dim=self.ffn_dim, dropout=self.dropout,
            norm_first=self.norm_first, norm=self.norm,
            layer_norm_epsilon=self.layer_norm_epsilon, activation=self.activation,
            num_key_value_heads=self.num_key_value_heads, rotary=self.positions == "rotary",
            moe=self.moe if use_moe else None, use_bias=self.use_bias,
            rotary_max_wavelength=self.rotary_max_wavelength,
            rotary_scaling=self.rotary_scaling, sliding_window=self.sliding_window)

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values):
        fields = {field.name for field in dataclasses.fields(cls)}
        unknown = set(values) - fields
        if unknown:
            raise ValueError(f"Unknown TransformerConfig fields: {sorted(unknown)}")
        return cls(**values)
