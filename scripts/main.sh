#!/usr/bin/env bash
# The main job, end to end: train an English→Spanish Transformer on the
# built-in corpus (made by the package, no download) for 5 minutes, export it
# as a SavedModel to saved_models/translator/<version>/ (text in, text out),
# and translate sentences through the exported SavedModel. Sets itself up on
# first run. Extra arguments go to `keras-transformer train translation`
# (see --help).
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
"$root/.venv/bin/keras-transformer" train translation --minutes 5 \
    --output-dir runs/translation --export-dir saved_models/translator "$@"
echo
echo "Through the exported SavedModel (keras-transformer translate saved_models/translator):"
"$root/.venv/bin/keras-transformer" translate saved_models/translator \
    "I have twenty one books." "the first of May two thousand twenty four" \
    "seven plus five is twelve." "I have three hundred trees." "I have five hundred boys."
