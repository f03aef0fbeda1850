"""The recipes' `--dtype-policy` option: which Keras dtype policy builds the model.

`auto` picks `mixed_bfloat16` where the hardware multiplies bfloat16 natively
(a CPU with AMX, a GPU of compute capability 8.0 or later) and `float32`
elsewhere, where bfloat16 would be emulated and slower. Only the training
model is built under the policy: the recipes evaluate and export a float32
copy of the trained weights, so that a SavedModel computes the same on any
machine.
"""

import tensorflow as tf

from keras_transformer.models.precision import dtype_policy  # noqa: F401 (the recipes' scope)

POLICIES = ("auto", "float32", "mixed_bfloat16", "mixed_float16")


def add_argument(parser, default="float32", shown=None):
    """Adds `--dtype-policy` (one of `POLICIES`) to `parser`.

    Args:
        parser: an `argparse` parser.
        default: the option's default; None lets the recipe choose.
        shown: the default as the help states it (default: `default`).
    """
    parser.add_argument(
        "--dtype-policy", choices=POLICIES, default=default,
        help="dtype policy of the training model: float32, mixed_bfloat16, mixed_float16, "
             "or auto (mixed_bfloat16 on a CPU with AMX or a GPU of compute capability "
             f"8.0+, float32 elsewhere). Evaluation and export are float32. Default: "
             f"{shown or default}")
    return parser


def resolve(name):
    """The Keras policy name for `name`; `auto` looks at the hardware.

    Args:
        name: one of `POLICIES`.

    Returns:
        `"float32"`, `"mixed_bfloat16"` or `"mixed_float16"`.
    """
    if name not in POLICIES:
        raise ValueError(f"Unknown dtype policy {name!r}; expected one of {POLICIES}.")
    if name != "auto":
        return name
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        capability = tf.config.experimental.get_device_details(gpus[0]).get(
            "compute_capability", (0, 0))
        return "mixed_bfloat16" if tuple(capability) >= (8, 0) else "float32"
    return "mixed_bfloat16" if "amx_bf16" in _cpu_flags() else "float32"


def _cpu_flags():
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()
