#!/usr/bin/env bash
# The main job: train a small Transformer built from keras_transformer's layers
# on data it makes, and print what it learned. Sets itself up on first run.
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
exec "$PY" examples/quickstart.py "$@"
