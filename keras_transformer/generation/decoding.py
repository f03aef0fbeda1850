"""One decoding configuration for every generator: greedy, beam search or sampling.

`DecodingConfig` is what `Translator`, `TextGenerator`, the recipes and the
command line take, so that a translator can sample and a text generator can
beam-search:

    DecodingConfig("greedy")
    DecodingConfig("beam", beam_size=4, length_penalty=0.6)
    DecodingConfig("sample", temperature=0.8, top_k=20, top_p=0.95, seed=1)

`add_arguments(parser)` / `from_args(args)` give every command the same
options (`--decoding`, `--beam-size`, `--length-penalty`, `--temperature`,
`--top-k`, `--top-p`, `--decoding-seed`).
"""

import argparse
import dataclasses

from keras_transformer.generation import search

STRATEGIES = ("greedy", "beam", "sample")


@dataclasses.dataclass(frozen=True)
class DecodingConfig:
    """How a generator picks tokens.

    Args:
        strategy: `"greedy"` (the most probable token), `"beam"` (beam
            search) or `"sample"` (random tokens from the filtered
            distribution).
        beam_size: int ≥ 1, beams kept per row (`"beam"`).
        length_penalty: float, GNMT's α: beams are ranked by
            `log p / ((5 + length) / 6) ** α` (`"beam"`; 0 = most probable).
        temperature: float > 0, logits are divided by it (`"sample"`).
        top_k: int ≥ 0, sample among the `top_k` most probable tokens (0 = all).
        top_p: float in (0, 1], sample from the smallest set of tokens whose
            probability reaches `top_p` (nucleus; 1 = all).
        seed: int, the sampling seed when the caller gives none (the same
            seed gives the same output).
    """

    strategy: str = "greedy"
    beam_size: int = 4
    length_penalty: float = 0.6
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"`strategy` must be one of {STRATEGIES}. "
                             f"Received: strategy={self.strategy!r}")
        if self.beam_size < 1:
            raise ValueError(f"`beam_size` must be >= 1. Received: beam_size={self.beam_size}")
        if self.temperature <= 0:
            raise ValueError("`temperature` must be > 0 (use strategy='greedy' for the most "
                             f"probable token). Received: temperature={self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"`top_k` must be >= 0 (0 = no limit). Received: top_k={self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"`top_p` must be in (0, 1]. Received: top_p={self.top_p}")

    def search(self, stepper, state, first_ids, max_length, *, forced_ids=None,
               forced_lengths=None, seed=None, special_ids=None):
        """Runs the configured search; returns `(ids (B, max_length), scores (B,))`.

        Arguments are those of `keras_transformer.generation.search`; `seed`
        (a scalar, or None for `self.seed`) is used by `"sample"` only.
        """
        forced = dict(forced_ids=forced_ids, forced_lengths=forced_lengths,
                      special_ids=special_ids)
        if self.strategy == "beam":
            return search.beam_search(stepper, state, first_ids, max_length,
                                      beam_size=self.beam_size, alpha=self.length_penalty,
                                      **forced)
        if self.strategy == "sample":
            return search.sample(stepper, state, first_ids, max_length,
                                 temperature=self.temperature, top_k=self.top_k,
                                 top_p=self.top_p, seed=self.seed if seed is None else seed,
                                 **forced)
        return search.greedy_search(stepper, state, first_ids, max_length, **forced)

    @classmethod
    def from_legacy(cls, *, beam_size=None, alpha=None, temperature=None, top_k=None,
                    top_p=None):
        """The configuration the older keyword arguments meant.

        `beam_size`/`alpha` (Translator): beam search when `beam_size > 1`,
        else greedy. `temperature`/`top_k`/`top_p` (TextGenerator): sampling,
        greedy when `temperature == 0`.
        """
        if temperature is not None or top_k is not None or top_p is not None:
            temperature = 1.0 if temperature is None else float(temperature)
            if temperature == 0:
                return cls("greedy")
            return cls("sample", temperature=temperature, top_k=int(top_k or 0),
                       top_p=1.0 if top_p is None else float(top_p))
        beam_size = 1 if beam_size is None else int(beam_size)
        alpha = 0.6 if alpha is None else float(alpha)
        if beam_size > 1:
            return cls("beam", beam_size=beam_size, length_penalty=alpha)
        return cls("greedy", length_penalty=alpha)

    @staticmethod
    def add_arguments(parser, default=None):
        """Adds the decoding options to an `argparse` parser.

        `default` is the `DecodingConfig` the command uses when no option is
        given; `--beam-size` alone (above 1) selects beam search.
        """
        default = default or DecodingConfig()
        group = parser.add_argument_group("decoding")
        group.add_argument("--decoding", choices=STRATEGIES, default=argparse.SUPPRESS,
                           help="how tokens are chosen: greedy, beam search, or sampling "
                                f"(default: {default.strategy}; beam when --beam-size > 1 "
                                "is given alone)")
        group.add_argument("--beam-size", type=int, default=argparse.SUPPRESS,
                           help=f"beams kept per sentence (default: {default.beam_size})")
        group.add_argument("--length-penalty", "--alpha", dest="length_penalty", type=float,
                           default=argparse.SUPPRESS, help="GNMT length penalty α of beam search "
                                              f"(default: {default.length_penalty})")
        group.add_argument("--temperature", type=float, default=argparse.SUPPRESS,
                           help=f"sampling temperature (default: {default.temperature})")
        group.add_argument("--top-k", type=int, default=argparse.SUPPRESS,
                           help="sample among the k most probable tokens, 0 = all "
                                f"(default: {default.top_k})")
        group.add_argument("--top-p", type=float, default=argparse.SUPPRESS,
                           help="nucleus sampling: the smallest set of tokens reaching "
                                f"probability p, 1 = all (default: {default.top_p})")
        group.add_argument("--decoding-seed", type=int, default=argparse.SUPPRESS,
                           help=f"sampling seed (default: {default.seed})")
        parser.set_defaults(_decoding_default=default)
        return parser

    @classmethod
    def from_args(cls, args):
        """The `DecodingConfig` of options parsed with `add_arguments`."""
        default = getattr(args, "_decoding_default", None) or cls()
        names = {"beam_size": "beam_size", "length_penalty": "length_penalty",
                 "temperature": "temperature", "top_k": "top_k", "top_p": "top_p",
                 "seed": "decoding_seed"}
        values = {field: getattr(args, name) for field, name in names.items()
                  if getattr(args, name, None) is not None}
        strategy = getattr(args, "decoding", None)
        if strategy is None:
            strategy = default.strategy
            if "beam_size" in values:
                strategy = "beam" if values["beam_size"] > 1 else "greedy"
        return dataclasses.replace(default, strategy=strategy, **values)
