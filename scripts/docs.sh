#!/usr/bin/env bash
# Builds the API reference from the docstrings (pdoc) into build/api/ (open
# build/api/index.html): every public module of the package. Sets itself up on
# first run; extra arguments go to pdoc.
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
modules=$("$PY" -c 'import pkgutil, keras_transformer as k
print(" ".join(["keras_transformer"] + [m.name for m in pkgutil.walk_packages(k.__path__, "keras_transformer.")
      if not any(p.startswith("_") for p in m.name.split("."))]))')
exec "$PY" -m pdoc $modules --docformat google --output-directory build/api "$@"
