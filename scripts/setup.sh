# Sourced by the other scripts: makes .venv and installs the package with all
# its extras and the test tools when missing or when pyproject.toml changed
# since the last install.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python="${PYTHON:-python3}"
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
    echo "keras_transformer needs Python 3.10 or newer; $python is $("$python" --version 2>&1)." >&2
    exit 1
fi
if [ ! -x .venv/bin/python ]; then
    echo "Creating .venv with $("$python" --version 2>&1)..." >&2
    "$python" -m venv .venv
fi
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ]; then
    echo "Installing keras_transformer and its dependencies into .venv (about a minute)..." >&2
    .venv/bin/python -m pip install --quiet --upgrade pip
    # The distribution was called keras-transformer before (a name another
    # project holds on the package index): remove that install, if any.
    .venv/bin/python -m pip uninstall --quiet --yes keras-transformer 2>/dev/null || true
    rm -rf keras_transformer.egg-info
    # PYTHONWARNINGS: setuptools' editable build prints an "Editable
    # installation" notice box (a warning, not an error) even under --quiet.
    PYTHONWARNINGS=ignore .venv/bin/python -m pip install --quiet -e ".[dev]"
    rm -f .venv/.installed-*
    touch "$stamp"
fi
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
export KERAS_BACKEND=tensorflow
PY="$root/.venv/bin/python"
