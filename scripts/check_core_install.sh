#!/usr/bin/env bash
# The core install, for real: a fresh virtual environment with
# `pip install .` and no extras, then the layers, a model, a fit step, cached
# beam search, and the ImportError that names the extra a feature needs.
# (The test suite checks the same with the extras' modules blocked:
# tests/test_optional_dependencies.py.)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${TMPDIR:-/tmp}/keras_transformer_core"
rm -rf "$venv"
"${PYTHON:-python3}" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet "$root"
cd "$venv"  # not the repository: the installed package
TF_CPP_MIN_LOG_LEVEL=3 KERAS_BACKEND=tensorflow "$venv/bin/python" - <<'PY'
import importlib.metadata as metadata
import importlib.util
import numpy as np, tensorflow as tf
import keras_transformer
from keras_transformer.generation import DecodingConfig, Stepper
from keras_transformer.models import TransformerConfig, build_transformer
from keras_transformer.training import MaskedSparseCategoricalCrossentropy

extras = [name for name in ("keras_hub", "tensorflow_text", "tensorflow_datasets", "sacrebleu",
                            "matplotlib") if importlib.util.find_spec(name)]
print("installed extras' packages:", extras or "none")
model = build_transformer(TransformerConfig(vocab_size=20, max_length=8, embed_dim=16,
                                            num_heads=2, ffn_dim=32, num_encoder_layers=1,
                                            num_decoder_layers=1))
model.compile("adam", MaskedSparseCategoricalCrossentropy())
source = np.array([[5, 6, 7, 0]], "int32")
model.fit([source, source], source, epochs=1, verbose=0)
stepper = Stepper(model)
ids, _ = DecodingConfig("beam", beam_size=2).search(
    stepper, stepper.initial_state(tf.constant(source), 8), tf.constant([2]), 8)
print("cached beam search:", ids.numpy().tolist())
try:
    import keras_transformer.data.tokenizers
except ImportError as error:
    print("tokenizers without the extra:", error)
print("ok:", metadata.version("keras-transformer-layers"))
PY
