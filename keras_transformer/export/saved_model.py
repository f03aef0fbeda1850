"""Export a translator (or text generator) as a SavedModel TF Serving can load.

`export_saved_model(translator, "saved_models/<name>")` writes the next
version, `saved_models/<name>/<version>/` (the layout TF Serving watches),
atomically: the SavedModel is written into a hidden temporary directory
beside it and renamed into place only once complete, so a crash or a full
disk mid-export never leaves a half-written version that a server would
load, and never touches the versions already there. A process killed
mid-export leaves only its hidden staging directory, which the next export
into the same directory removes (`remove_abandoned_staging`).

Signatures:
- `serving_default`: `text` `(B,)` string → `translation` `(B,)` string,
  `token_ids` `(B, L)` int32, `scores` `(B,)` float32;
- `translate_ids`: `source_ids` `(B, S)` int32 → `token_ids`, `scores`.

A `TextGenerator` (decoder-only language model) exports `serving_default`
and `generate`: `prompt` `(B,)` string, `seed` int32 → `text`, `token_ids`,
`scores`.

The vocabularies travel inside, as files under `assets/`
(`source_vocabulary.txt`, `target_vocabulary.txt`, ... as
`tokenizers.save_tokenizer` writes them, prefixed by their side), and
the tokenizer lookup tables are in the graph. Loading needs TensorFlow and
tensorflow-text (whose WordPiece and normalization ops the graph uses) —
not keras, keras-hub or keras_transformer:

    import tensorflow as tf, tensorflow_text  # noqa: F401 (registers the ops)
    served = tf.saved_model.load("saved_models/translator/1")
    served.signatures["serving_default"](text=tf.constant(["Hello."]))
"""

import errno
import json
import os
import re
import shutil
import socket
import tempfile

import tensorflow as tf

from keras_transformer._optional import require

_VERSION = re.compile(r"^\d+$")
_STAGING = re.compile(r"^\.incomplete-\d+-(?P<host>.+)-(?P<pid>\d+)-[^-]+$")


def _process_is_gone(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, someone else's
        return False
    return False


def remove_abandoned_staging(base_dir):
    """Removes the staging directories of exports whose process was killed.

    An export killed midway leaves its hidden `.incomplete-<version>-<host>-<pid>-*`
    directory (never a numeric one, so TF Serving never sees it). Those of
    this host whose process no longer exists are removed; those of a live
    process (an export in progress) or of another host are left alone.
    Returns the names removed.
    """
    if not os.path.isdir(base_dir):
        return []
    removed = []
    for name in sorted(os.listdir(base_dir)):
        match = _STAGING.match(name)
        if (match and match["host"] == socket.gethostname()
                and _process_is_gone(int(match["pid"]))):
            shutil.rmtree(os.path.join(base_dir, name), ignore_errors=True)
            removed.append(name)
    return removed


def versions(base_dir):
    """The version numbers present in `base_dir`, ascending."""
    if not os.path.isdir(base_dir):
        return []
    return sorted(int(name) for name in os.listdir(base_dir)
                  if _VERSION.match(name) and os.path.isdir(os.path.join(base_dir, name)))


def _vocabulary_assets(module, staging):
    """The tokenizers' files as `Asset`s, prefixed `source_` / `target_` for a translator."""
    keras_hub = require("keras_hub", "data", "Exporting tokenizers")
    from keras_transformer.data import tokenizers as tk

    assets = []
    for prefix, tokenizer in module.asset_tokenizers().items():
        directory = os.path.join(staging, "vocabularies", prefix or "tokenizer")
        if isinstance(tokenizer, (keras_hub.tokenizers.WordPieceTokenizer,
                                  keras_hub.tokenizers.BytePairTokenizer,
                                  keras_hub.tokenizers.UnicodeCodepointTokenizer)) \
                or tk.is_preset_tokenizer(tokenizer):
            tk.save_tokenizer(tokenizer, directory)
        else:  # a tokenizer of another kind: its configuration
            os.makedirs(directory, exist_ok=True)
            with open(os.path.join(directory, "tokenizer.json"), "w") as handle:
                json.dump({"class": type(tokenizer).__name__, **tokenizer.get_config()},
                          handle, default=str)
        # One flat directory of assets: a preset's `assets/tokenizer/x` becomes
        # `<prefix>assets_tokenizer_x`.
        for root, _, names in sorted(os.walk(directory)):
            for name in sorted(names):
                relative = os.path.relpath(os.path.join(root, name), directory)
                flat = os.path.join(staging, "vocabularies",
                                    prefix + relative.replace(os.sep, "_"))
                os.rename(os.path.join(root, name), flat)
                assets.append(tf.saved_model.Asset(flat))
    return assets


def export_saved_model(module, base_dir, version=None):
    """Writes `module` to `base_dir/<version>/` and returns that path.

    Args:
        module: a `keras_transformer.generation.Translator` or `TextGenerator`
            (any `tf.Module` with `serving_signatures()` and
            `asset_tokenizers()`).
        base_dir: the model's directory (`saved_models/<name>`).
        version: int, or None for one more than the highest present.

    Raises:
        FileExistsError: if `base_dir/<version>` exists already.
        OSError: `errno.ENOSPC` when the disk fills up mid-export (the partial
            export is removed; the message says what is free).
    """
    def write(staging, model_dir):
        module.vocabulary_files = _vocabulary_assets(module, staging)
        tf.saved_model.save(module, model_dir, signatures=module.serving_signatures())

    return write_version(base_dir, version, write)


def write_version(base_dir, version, write):
    """`write(staging, model_dir)` fills `model_dir`, renamed to `base_dir/<version>/`.

    The version's directory appears whole or not at all: `write` works in a
    hidden staging directory beside it (`staging` holds scratch files,
    `model_dir` is what is renamed into place). Returns the final path.
    Raises as `export_saved_model` says.
    """
    existing = versions(base_dir)
    version = int(version) if version is not None else (existing[-1] + 1 if existing else 1)
    final = os.path.join(base_dir, str(version))
    if os.path.exists(final):
        raise FileExistsError(
            f"Version {version} exists already at {final!r}; versions present: {existing}. "
            "Pass another version (or none, for the next one)."
        )
    os.makedirs(base_dir, exist_ok=True)
    remove_abandoned_staging(base_dir)
    # Same directory, so the final rename is atomic; the leading dot keeps
    # TF Serving (which loads numeric names only) away from it.
    staging = tempfile.mkdtemp(
        prefix=f".incomplete-{version}-{socket.gethostname()}-{os.getpid()}-", dir=base_dir)
    try:
        model_dir = os.path.join(staging, "model")
        write(staging, model_dir)
        os.rename(model_dir, final)
    except (OSError, tf.errors.OpError) as error:
        if getattr(error, "errno", None) == errno.ENOSPC or "No space left" in str(error):
            raise OSError(
                errno.ENOSPC,
                f"No space left on the device of {base_dir!r} while exporting version "
                f"{version} ({shutil.disk_usage(base_dir).free} bytes free now that the "
                f"partial export is removed). Nothing was written to {final!r}; the "
                f"versions present are unchanged: {existing}.") from error
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final
