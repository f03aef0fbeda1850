#!/usr/bin/env bash
# The version bounds of pyproject.toml, tested: installs the package in a fresh
# virtual environment with the lowest TensorFlow, Keras and tensorflow-text it
# allows, and in another with the highest the package index offers within the
# bounds, and runs the layer, decoding and export tests in each.
#
#   bash scripts/check_version_bounds.sh [lowest|highest]...   # default: both
#
# Needs the package index (about 1.5 GB of wheels a side) and ~10 minutes a side.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"
tests=(tests/test_multi_head_attention.py tests/test_decoder_block.py tests/test_encoder_block.py
       tests/test_custom_models.py tests/test_generation.py tests/test_export.py
       tests/test_keras_compat.py tests/test_saved_runs.py tests/test_block_options.py
       tests/test_muon.py)
sides=("${@:-lowest highest}")
for side in ${sides[@]}; do
    venv="${TMPDIR:-/tmp}/keras_transformer_bounds_$side"
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    if [ "$side" = lowest ]; then
        pins=("tensorflow==2.16.1" "keras==3.6.0" "tensorflow-text==2.16.1")
    else
        pins=()
    fi
    "$venv/bin/python" -m pip install --quiet "${pins[@]}" -e "$root[dev]"
    echo "== $side: $("$venv/bin/python" -c 'import tensorflow as tf, keras; print("tensorflow", tf.__version__, "keras", keras.__version__)' 2>/dev/null)"
    (cd "$root" && TF_CPP_MIN_LOG_LEVEL=3 KERAS_BACKEND=tensorflow \
        "$venv/bin/python" -m pytest -q -p no:warnings -p no:cacheprovider "${tests[@]}" | tail -3)
done
