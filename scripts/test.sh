#!/usr/bin/env bash
# Runs the test suite (slow tests deselected; pass `-m slow` to run them).
# Sets itself up on first run. Extra arguments go to pytest.
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
if [ "$#" -eq 0 ]; then
    set -- -m "not slow"
fi
exec "$PY" -m pytest -q "$@"
