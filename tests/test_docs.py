"""Documentation that stays true: the README's quickstart runs, links resolve, every
public name has a docstring, docstring references exist, the API reference builds."""

import importlib
import inspect
import os
import pathlib
import pkgutil
import re
import subprocess
import sys
import warnings

import pytest

import keras_transformer

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]


def public_modules():
    """The package's public modules, without the deprecated aliases of moved ones."""
    names = ["keras_transformer"]
    for info in pkgutil.walk_packages(keras_transformer.__path__, "keras_transformer."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        modules = [importlib.import_module(name) for name in names]
    return [m for m in modules if not (m.__doc__ or "").startswith("Deprecated:")]


def test_links_in_the_readme_and_the_docs_resolve():
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" not in target and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} → {target}")
    assert not broken


def test_every_public_name_has_a_docstring():
    missing = []
    for module in public_modules():
        if not inspect.getdoc(module):
            missing.append(module.__name__)
        for name in getattr(module, "__all__", []):
            value = getattr(module, name)
            if inspect.ismodule(value):
                continue
            if not (inspect.getdoc(value) or "").strip():
                missing.append(f"{module.__name__}.{name}")
    assert not missing


def resolves(dotted):
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            value = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attribute in parts[cut:]:
            if not hasattr(value, attribute):
                return False
            value = getattr(value, attribute)
        return True
    return False


def test_references_in_docstrings_and_pages_exist():
    pattern = re.compile(r"`(keras_transformer(?:\.\w+)+)")
    texts = [(page.name, page.read_text()) for page in PAGES]
    for module in public_modules():
        texts.append((module.__name__, inspect.getsource(module)))
    broken = sorted({f"{where}: {ref}" for where, text in texts
                     for ref in pattern.findall(text) if not resolves(ref)})
    assert not broken


def test_the_api_reference_builds(tmp_path):
    modules = [module.__name__ for module in public_modules()]
    result = subprocess.run(
        [sys.executable, "-m", "pdoc", *modules, "--docformat", "google",
         "--output-directory", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr[-3000:]
    for page in ("keras_transformer.html", "keras_transformer/models.html",
                 "keras_transformer/generation.html"):
        assert (tmp_path / page).exists(), page
    assert "call_with_cache" in (tmp_path / "keras_transformer/models.html").read_text()


def quickstart_code():
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Quickstart"):]
    return section[section.index("```python") + len("```python"):section.index("```\n")]


def test_the_readme_quickstart_runs(tmp_path):
    code = quickstart_code()
    # The same code, smaller: fewer pairs, one epoch, the export in a temporary place.
    for old, new in (("generate_pairs(20000)", "generate_pairs(600)"),
                     ("shuffle_buffer=20000", "shuffle_buffer=600"),
                     ("epochs=3", "epochs=1, verbose=0"),
                     ('"saved_models/mine"', repr(str(tmp_path / "mine")))):
        assert old in code, old
        code = code.replace(old, new)
    namespace = {}
    exec(compile(code, "README.md quickstart", "exec"), namespace)  # noqa: S102
    assert (tmp_path / "mine" / "1" / "saved_model.pb").exists()


# Run history: the words a lab notebook uses for earlier runs, days and sessions.
RUN_HISTORY = re.compile(
    r"faster day|slower day|on 20\d\d-\d\d-\d\d|\bsessions?\b|\b(?:this|that|same|earlier) day\b"
    r"|\bbetween days\b|\bearlier (?:run|runs|version|day)\b|\bnot re-?run\b"
    r"|\bformer default\b|\bprobed earlier\b|\bnot tried yet\b|\bwas turned off\b",
    re.IGNORECASE)


def run_history(text):
    return [match.group(0) for match in RUN_HISTORY.finditer(text)]


def test_the_run_history_check_catches_a_lab_notebook():
    assert run_history("In earlier sessions the defaults scored 39.2.")
    assert run_history("an earlier day's run of the default made 2,851 steps")
    assert run_history("That earlier run's row read 1,246 s and was not re-run.")
    assert not run_history("Two seeds, run one after another on one machine.")


@pytest.mark.parametrize("page", ["README.md", *(p.name for p in PAGES if p.parent.name == "docs")])
def test_the_docs_pages_tell_no_dated_stories(page):
    path = ROOT / page if page == "README.md" else ROOT / "docs" / page
    found = run_history(path.read_text())
    assert not found, f"{page} tells run history ({found}); it goes in CHANGELOG.md"
