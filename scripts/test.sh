#!/usr/bin/env bash
# Runs the test suite (slow tests deselected; pass `-m slow` to run them).
# Sets itself up on first run. Extra arguments go to pytest.
# Two pytest-xdist workers: run serially, the suite keeps about one of two
# cores busy (user time ≈ wall time), and two workers finish it in 60–70 %
# of the serial time. KT_TEST_WORKERS=0 runs serially; `-n N` overrides it.
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
if [ "$#" -eq 0 ]; then
    set -- -m "not slow"
fi
exec "$PY" -m pytest -q -n "${KT_TEST_WORKERS:-2}" "$@"
