#!/usr/bin/env bash
# The main job: train an English→Spanish Transformer on the built-in corpus
# (made by the package, no download) for 5 minutes, then translate held-out
# sentences with it. Sets itself up on first run. Extra arguments go to
# examples/train_translation.py (see --help).
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
exec "$PY" examples/train_translation.py --minutes 5 --output-dir runs/translation "$@"
