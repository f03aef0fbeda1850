"""The Keras internals the package relies on, in one place.

Keras 3 has no public API for what these do. Each is a one-line use of a
private attribute, and `tests/test_keras_compat.py` pins the behaviour it
relies on, so that a Keras release that changes one fails there, by name,
rather than somewhere inside training or export. The supported Keras versions
are those of `pyproject.toml` (`scripts/check_version_bounds.sh` runs the tests
at the lower bound).

`keras_transformer.layers.ReplicaLocalLosses` also overrides `Layer._losses`,
the list behind `add_loss` and `losses`; the same test module pins that.
"""

import contextlib


def all_layers(model, include_self=True):
    """Every layer of `model`, nested ones included (`Layer._flatten_layers`).

    `model.layers` lists only the top level; the blocks' sublayers (their
    attention, feed-forward network, norms) are found only this way.
    """
    return list(model._flatten_layers(include_self=include_self))


def set_initial_epoch(model, epoch):
    """Makes the `fit` in progress start at `epoch` (`Model._initial_epoch`).

    This is how Keras's own `BackupAndRestore` resumes a run from a callback's
    `on_train_begin`; `fit(initial_epoch=...)` is the public form, but the
    callback runs inside `fit`.
    """
    model._initial_epoch = epoch


@contextlib.contextmanager
def tracking_unlocked(layer):
    """Lets a built layer delete and create variables (`Layer._tracker`), as
    Keras's own `Dense.quantize` does when it swaps a kernel for an int8 one."""
    layer._tracker.unlock()
    try:
        yield
    finally:
        layer._tracker.lock()


def tensorflow_trainer():
    """Keras's TensorFlow trainer module (`keras.src.backend.tensorflow.trainer`),
    whose multi-worker reductions `training.distribute` patches."""
    from keras.src.backend.tensorflow import trainer

    return trainer
