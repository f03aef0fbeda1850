"""One configuration for every model builder."""

import dataclasses


@dataclasses.dataclass
class TransformerConfig:
    """Sizes and choices of a Transformer; the defaults are the paper's base model.

    `build_transformer` reads all of it; `build_causal_lm` ignores the encoder
    fields. `to_dict`/`from_dict` store it beside a trained model.
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
    positions: str = "sinusoidal"  # or "learned", or "rotary" (rotated queries/keys, none added)
    tie_embeddings: bool = True  # the paper shares the target embedding and the output projection
    moe: dict | None = None  # MoE arguments (e.g. {"num_experts": 8}) to replace the FFNs
    moe_every: int = 2  # with `moe`: every n-th block is MoE (Switch uses every other one)
    norm: str = "layer"  # LayerNorm as in the paper, or "rms" (RMSNorm)
    num_key_value_heads: int | None = None  # grouped-query attention (1: multi-query)

    def __post_init__(self):
        if self.embed_dim % self.num_heads:
            raise ValueError(
                "`embed_dim` must be divisible by `num_heads`. "
                f"Received: embed_dim={self.embed_dim}, num_heads={self.num_heads}"
            )
        if self.moe is not None and "num_experts" not in self.moe:
            raise ValueError(f"`moe` needs at least `num_experts`. Received: moe={self.moe}")
        if self.shared_vocabulary and self.source_vocab_size not in (None, self.vocab_size):
            raise ValueError(
                "A shared vocabulary has one size. Received: "
                f"vocab_size={self.vocab_size}, source_vocab_size={self.source_vocab_size}"
            )
        if self.positions not in ("sinusoidal", "learned", "rotary"):
            raise ValueError("`positions` must be 'sinusoidal', 'learned' or 'rotary'. "
                             f"Received: positions={self.positions!r}")
        if self.num_key_value_heads is not None and (
            self.num_key_value_heads < 1 or self.num_heads % self.num_key_value_heads
        ):
            raise ValueError(
                "`num_key_value_heads` must divide `num_heads`. Received: "
                f"num_key_value_heads={self.num_key_value_heads}, num_heads={self.num_heads}")
        if self.moe_every < 1:
            raise ValueError(f"`moe_every` must be >= 1. Received: moe_every={self.moe_every}")

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values):
        fields = {field.name for field in dataclasses.fields(cls)}
        unknown = set(values) - fields
        if unknown:
            raise ValueError(f"Unknown TransformerConfig fields: {sorted(unknown)}")
        return cls(**values)
