import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import pytest  # noqa: E402

# Which tests run under which Keras backend, decided here and only here:
# - a test module that runs under every backend says so with
#   `pytestmark = pytest.mark.backend_neutral` (the layers, the models, `fit`
#   and cached decoding); every other module is TensorFlow's (tf.data, the
#   tokenizers, SavedModels, the server) and is not even collected under
#   another backend, so a machine without TensorFlow can run the neutral ones;
# - inside a neutral module, a test of a TensorFlow-only feature is marked
#   `tests.backend.tensorflow_only` and skipped under the other backends.
# CI runs the whole suite under TensorFlow, then `KERAS_BACKEND=jax pytest`
# (scripts/test.sh).
NEUTRAL_MARK = "pytest.mark.backend_neutral"


def pytest_ignore_collect(collection_path, config):
    if keras.backend.backend() == "tensorflow" or collection_path.suffix != ".py":
        return None
    if collection_path.name.startswith("test_"):
        return NEUTRAL_MARK not in collection_path.read_text(encoding="utf-8")
    return None


def pytest_collection_modifyitems(config, items):
    backend = keras.backend.backend()
    if backend == "tensorflow":
        return
    skip = pytest.mark.skip(reason=f"a TensorFlow-only feature (backend: {backend})")
    for item in items:
        if item.get_closest_marker("tensorflow_only"):
            item.add_marker(skip)


@pytest.fixture(scope="module")
def translator():
    """A small translator (tests/helpers.py: `make_translator`), one per module.
    A module may define its own `translator` fixture in its place."""
    from tests.helpers import make_translator

    return make_translator()


@pytest.fixture(autouse=True)
def _fresh_keras_state():
    """Each test starts from the same seed and the float32 policy."""
    keras.utils.set_random_seed(1234)
    keras.mixed_precision.set_global_policy("float32")
    yield
    keras.mixed_precision.set_global_policy("float32")
