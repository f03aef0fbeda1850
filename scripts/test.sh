#!/usr/bin/env bash
# Runs the test suite (slow tests deselected; pass `-m slow` to run them).
# Sets itself up on first run. Extra arguments go to pytest (TensorFlow
# backend only).
#
# Without arguments it runs the whole suite under TensorFlow, then the
# backend-neutral tests (the layers, the models, fit and cached decoding)
# again under JAX (`KERAS_BACKEND=jax`, JAX's CPU wheel).
# Two pytest-xdist workers: run serially, the suite keeps about one of two
# cores busy (user time ≈ wall time), and two workers finish it in 60–70 %
# of the serial time. KT_TEST_WORKERS=0 runs serially; `-n N` overrides it.
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
if [ "$#" -gt 0 ]; then
    exec "$PY" -m pytest -q -n "${KT_TEST_WORKERS:-2}" "$@"
fi
# --durations: the slowest tests, printed at the end (where CI time goes).
"$PY" -m pytest -q -n "${KT_TEST_WORKERS:-2}" -m "not slow" --durations=15
echo "--- the backend-neutral tests under JAX ---"
# (tests/conftest.py collects only the modules marked backend_neutral.)
KERAS_BACKEND=jax JAX_PLATFORMS=cpu exec "$PY" -m pytest -q -n "${KT_TEST_WORKERS:-2}" \
    -m "not slow" --durations=10
