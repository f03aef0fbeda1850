"""Imports of the optional dependencies, with an error that names the extra to install."""

import importlib


def require(module, extra, feature):
    """`module`, imported; or an `ImportError` saying which extra brings it.

    Args:
        module: the module to import, e.g. `"keras_hub"`.
        extra: the package extra that installs it, e.g. `"data"`.
        feature: what needs it, for the message, e.g. `"The tokenizers"`.
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"{feature} need(s) `{module}`, which the `{extra}` extra installs: "
            f"pip install 'keras-transformer-layers[{extra}]' (or [all]). "
            f"Importing it failed with: {error}"
        ) from error
