"""The model-shape options every recipe shares: flags, or a `--config` JSON file.

`add_model_arguments(parser, defaults)` adds one flag per field of
`TransformerConfig` a user chooses (layers, width, heads, FFN size, dropout,
maximum length, pre-/post-LN, positions, activation, tied output, MoE) and
`--config config.json` (the fields of `TransformerConfig`, as a training run's
`config.json` holds them). `model_config(args, defaults, **fixed)` resolves
them: the recipe's defaults, then the file, then the flags given, then
`fixed` (what the data decides, such as the vocabulary sizes).
"""

import argparse
import dataclasses
import json

from keras_transformer.layers.block_options import POSITIONS, command_line_fields
from keras_transformer.models import TransformerConfig

# (field, option strings, type, help); the help's default is the recipe's. The
# block options' flags come from `BlockOptions` (their help, type and choices);
# the rest are the model's own fields.
_MODEL_FIELDS = [
    ("num_encoder_layers", ["--encoder-layers"], int, "encoder blocks"),
    ("num_decoder_layers", ["--decoder-layers"], int, "decoder blocks"),
    ("embed_dim", ["--embed-dim"], int, "model width d_model"),
    ("max_length", ["--max-length"], int, "longest sequence in tokens (position encodings "
                                          "and the pipeline's cut)"),
    ("positions", ["--positions"], POSITIONS,
     "position encodings (rotary: rotated queries and keys, nothing added)"),
    ("tie_embeddings", ["--tie-embeddings"], bool,
     "share the target embedding with the output projection"),
    ("moe_every", ["--moe-every"], int, "with --moe-experts: every n-th block is MoE"),
]
_BLOCK_FIELDS = [
    (name, [meta["flag"]], meta["choices"] or meta["kind"], meta["help"])
    for name, meta in command_line_fields()
]
_FIELDS = _MODEL_FIELDS[:3] + _BLOCK_FIELDS + _MODEL_FIELDS[3:]


def add_model_arguments(parser, defaults, aliases=None, encoder=True):
    """Adds the model-shape options to `parser`.

    Args:
        parser: an `argparse` parser.
        defaults: the recipe's `TransformerConfig` (shown in the help).
        aliases: `{field: [older option strings]}` that keep working.
        encoder: whether the model has an encoder (`--encoder-layers`).
    """
    aliases = aliases or {}
    group = parser.add_argument_group(
        "model shape", "Defaults are the recipe's; --config sets many at once, and a flag "
                       "given beside it wins.")
    group.add_argument("--config", metavar="JSON", default=argparse.SUPPRESS,
                       help="a JSON file of TransformerConfig fields (a run's config.json); "
                            "vocabulary sizes come from the data")
    for field, options, kind, text in _FIELDS:
        if field == "num_encoder_layers" and not encoder:
            continue
        default = getattr(defaults, field)
        if field == "ffn_dim":
            shown = f"{default} with the default embed_dim"
        else:
            shown = default
        arguments = dict(dest=field, default=argparse.SUPPRESS, help=f"{text} (default: {shown})")
        if kind is bool:
            arguments["action"] = argparse.BooleanOptionalAction
        elif isinstance(kind, tuple):
            arguments["choices"] = kind
        else:
            arguments["type"] = kind
        group.add_argument(*options, *aliases.get(field, []), **arguments)
    group.add_argument("--moe-experts", type=int, default=argparse.SUPPRESS,
                       help="replace the feed-forward networks of every --moe-every-th block "
                            "by a mixture of this many experts (default: none, dense)")
    group.add_argument("--moe-top-k", type=int, default=argparse.SUPPRESS,
                       help="experts per token with --moe-experts (default: 2)")
    return parser


def model_config(args, defaults, **fixed):
    """The `TransformerConfig` that `args` ask for.

    Precedence: `defaults` < `--config` file < flags given < `fixed`. When
    neither the file nor a flag sets `ffn_dim`, it follows the width (4 ×
    `embed_dim`) if the width changed.

    Raises:
        ValueError: an unknown field in the file, a flag that needs another
            (`--moe-top-k` without experts), or an invalid combination (the
            message of `TransformerConfig`).
    """
    values = dataclasses.asdict(defaults)
    chosen = {}
    if getattr(args, "config", None):
        with open(args.config) as handle:
            from_file = json.load(handle)
        if not isinstance(from_file, dict):
            raise ValueError(f"--config {args.config} must hold a JSON object of "
                             f"TransformerConfig fields. Received a {type(from_file).__name__}.")
        unknown = set(from_file) - set(values)
        if unknown:
            raise ValueError(f"--config {args.config}: unknown TransformerConfig fields "
                             f"{sorted(unknown)}; the fields are {sorted(values)}.")
        chosen.update(from_file)
    for field, *_ in _FIELDS:
        value = getattr(args, field, None)
        if value is not None:
            chosen[field] = value
    experts, top_k = getattr(args, "moe_experts", None), getattr(args, "moe_top_k", None)
    if experts:
        chosen["moe"] = {"num_experts": experts, "top_k": top_k or 2}
    elif top_k is not None and not (chosen.get("moe") or defaults.moe):
        raise ValueError("--moe-top-k needs --moe-experts (or `moe` in --config).")
    elif top_k is not None:
        chosen["moe"] = {**(chosen.get("moe") or defaults.moe), "top_k": top_k}
    if "ffn_dim" not in chosen and chosen.get("embed_dim", defaults.embed_dim) != (
            defaults.embed_dim):
        chosen["ffn_dim"] = 4 * chosen["embed_dim"]
    values.update(chosen)
    values.update(fixed)
    return TransformerConfig.from_dict(values)


def print_summary(model, config, verbose=False):
    """Keras's model summary with `verbose`, else one line: parameters and shape."""
    if verbose:
        model.summary(line_length=100)
        return
    print(f"model: {model.count_params():,} parameters ({config.num_encoder_layers}+"
          f"{config.num_decoder_layers} layers of width {config.embed_dim}, "
          f"{config.num_heads} heads)")
