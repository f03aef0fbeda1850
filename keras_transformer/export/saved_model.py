"""Export a translator as a SavedModel that TensorFlow Serving can load.

`export_saved_model(translator, "saved_models/<name>")` writes the next
version, `saved_models/<name>/<version>/` (the layout TF Serving watches),
atomically: the SavedModel is written into a hidden temporary directory
beside it and renamed into place only once complete, so a crash or a full
disk mid-export never leaves a half-written version that a server would
load, and never touches the versions already there.

Signatures:
- `serving_default`: `text` `(B,)` string → `translation` `(B,)` string,
  `token_ids` `(B, L)` int32, `scores` `(B,)` float32;
- `translate_ids`: `source_ids` `(B, S)` int32 → `token_ids`, `scores`.

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

import os
import re
import shutil
import tempfile

import tensorflow as tf

from keras_transformer.data import tokenizers as tk

_VERSION = re.compile(r"^\d+$")


def versions(base_dir):
    """The version numbers present in `base_dir`, ascending."""
    if not os.path.isdir(base_dir):
        return []
    return sorted(int(name) for name in os.listdir(base_dir)
                  if _VERSION.match(name) and os.path.isdir(os.path.join(base_dir, name)))


def _vocabulary_assets(translator, staging):
    """The tokenizers' files as `Asset`s named `source_*` / `target_*`."""
    assets = []
    for side, tokenizer in (("source", translator.source_tokenizer),
                            ("target", translator.target_tokenizer)):
        directory = os.path.join(staging, "vocabularies", side)
        tk.save_tokenizer(tokenizer, directory)
        for name in sorted(os.listdir(directory)):
            flat = os.path.join(staging, "vocabularies", f"{side}_{name}")
            os.rename(os.path.join(directory, name), flat)
            assets.append(tf.saved_model.Asset(flat))
    return assets


def export_saved_model(translator, base_dir, version=None):
    """Writes `translator` to `base_dir/<version>/` and returns that path.

    Args:
        translator: a `keras_transformer.generation.Translator`.
        base_dir: the model's directory (`saved_models/<name>`).
        version: int, or None for one more than the highest present.

    Raises:
        FileExistsError: if `base_dir/<version>` exists already.
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
    # Same directory, so the final rename is atomic; the leading dot keeps
    # TF Serving (which loads numeric names only) away from it.
    staging = tempfile.mkdtemp(prefix=f".incomplete-{version}-", dir=base_dir)
    try:
        translator.vocabulary_files = _vocabulary_assets(translator, staging)
        model_dir = os.path.join(staging, "model")
        tf.saved_model.save(
            translator, model_dir,
            signatures={
                "serving_default": translator.translate.get_concrete_function(),
                "translate_ids": translator.translate_ids.get_concrete_function(),
            },
        )
        os.rename(model_dir, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final
