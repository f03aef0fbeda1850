"""The few backend-specific operations the layer tests need, for every backend.

The backend-neutral tests (`pytestmark = pytest.mark.backend_neutral`) run
under TensorFlow (the default) and, in CI, under JAX (`KERAS_BACKEND=jax`);
they run under PyTorch too (docs/backends.md). tests/conftest.py decides what
runs under which backend.
"""

import keras
import numpy as np
import pytest

BACKEND = keras.backend.backend()

# A TensorFlow-only test inside a backend-neutral module (tests/conftest.py
# skips it under the other backends).
tensorflow_only = pytest.mark.tensorflow_only


def gradients(loss_fn, variables, inputs=(), compile=False):
    """Gradients of the scalar `loss_fn(*inputs)`: `(input_grads, variable_grads)`.

    `variables` are Keras variables; the gradients come back as NumPy arrays
    (None where the loss does not depend on one, under TensorFlow). With
    `compile=True` the gradient computation runs under XLA (TensorFlow, JAX).
    """
    inputs = tuple(np.asarray(x) for x in inputs)
    if BACKEND == "tensorflow":
        import tensorflow as tf

        def tape_gradients(*inputs):
            with tf.GradientTape() as tape:
                tape.watch(inputs)
                loss = loss_fn(*inputs)
            return tape.gradient(loss, list(inputs) + list(variables))

        if compile:
            tape_gradients = tf.function(tape_gradients, jit_compile=True)
        grads = tape_gradients(*(tf.constant(x) for x in inputs))
    elif BACKEND == "jax":
        import jax

        def pure(values, inputs):
            with keras.StatelessScope(state_mapping=list(zip(variables, values))):
                return loss_fn(*inputs)

        grad_fn = jax.grad(pure, argnums=(0, 1))
        if compile:
            grad_fn = jax.jit(grad_fn)
        variable_grads, input_grads = grad_fn([v.value for v in variables], inputs)
        grads = list(input_grads) + list(variable_grads)
    elif BACKEND == "torch":
        import torch

        inputs = tuple(torch.tensor(x, requires_grad=True) for x in inputs)
        for v in variables:
            v.value.grad = None
        loss_fn(*inputs).backward()
        grads = [x.grad for x in inputs] + [v.value.grad for v in variables]
    else:
        raise NotImplementedError(f"no gradient helper for the {BACKEND!r} backend")
    grads = [None if g is None else keras.ops.convert_to_numpy(g) for g in grads]
    return grads[: len(inputs)], grads[len(inputs) :]


def compiled(fn):
    """`fn` compiled by the backend's XLA (TensorFlow, JAX), or as is (PyTorch)."""
    if BACKEND == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, jit_compile=True)
    if BACKEND == "jax":
        import jax

        return jax.jit(fn)
    return fn
