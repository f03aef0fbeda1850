"""Muon for the package's layers: attention kernels and MoE experts as matrices.

Keras's `keras.optimizers.Muon` (Keras 3.10+) orthogonalizes the update of
every variable of exactly two dimensions and sends the rest to its AdamW
fallback. In this package's models that leaves Muon only the feed-forward
kernels: the attention projections are `EinsumDense` kernels of three
dimensions, `(d, N, H)` for the query, key and value and `(N, H, d)` for the
output, and an `MoE` layer's experts are `(E, d, f)` and `(E, f, d)`.

`Muon` here is Keras's optimizer with those variables seen as what they are:
- a query, key or value kernel `(d, N, H)` as one `(d, N·H)` matrix, and an
  attention output kernel `(N, H, d)` as one `(N·H, d)` matrix (the whole
  projection, as modded-nanoGPT orthogonalizes it);
- an expert kernel `(E, a, b)` as E matrices `(a, b)`, each orthogonalized
  on its own (Newton–Schulz runs on the last two axes).

Everything else of more or fewer than two dimensions, the biases (an MoE
layer's are `(E, f)`: Keras's Muon would orthogonalize them), the
embeddings (their path holds "embedding") and the `logits` projection goes
to the AdamW fallback, as Muon's authors advise. The update of an `(a, b)` matrix is
scaled by `rms_rate · √max(a, b)` (Moonlight's rule, Keras's default), so that
AdamW's learning rate and weight decay carry over.

    optimizer = Muon(learning_rate=3e-3, weight_decay=0.1)
    model.compile(optimizer=optimizer, loss=...)
"""

import re

import keras
from keras import ops

_ATTENTION_IN = ("query/kernel", "key/kernel", "value/kernel")
_ATTENTION_OUT = ("attention_output/kernel",)
_EXPERTS = ("inner_kernel", "output_kernel")

_KerasMuon = getattr(keras.optimizers, "Muon", None)


def matrix_shape(variable):
    """The shape `Muon` orthogonalizes `variable`'s update as (the last two
    axes are the matrix; a leading one is a batch of them), or None where
    the update is AdamW's."""
    shape = tuple(variable.shape)
    path = variable.path
    if path.endswith("bias"):  # an MoE layer's biases are (E, f) and (E, d)
        return None
    if len(shape) == 2:
        return shape
    if len(shape) == 3:
        if path.endswith(_ATTENTION_IN):
            return (shape[0], shape[1] * shape[2])
        if path.endswith(_ATTENTION_OUT):
            return (shape[0] * shape[1], shape[2])
        if path.endswith(_EXPERTS):
            return shape
    return None


if _KerasMuon is not None:

    @keras.saving.register_keras_serializable(package="keras_transformer")
    class Muon(_KerasMuon):
        """`keras.optimizers.Muon` that also orthogonalizes the attention
        kernels and the MoE experts (see the module docstring).

        Args:
            learning_rate, weight_decay, ...: those of
                `keras.optimizers.Muon`. `exclude_layers` defaults to
                `["logits"]` (the output projection).
        """

        def __init__(self, *args, exclude_layers=None, **kwargs):
            super().__init__(*args, exclude_layers=(["logits"] if exclude_layers is None
                                                    else exclude_layers), **kwargs)

        def _should_use_adamw(self, variable):
            if matrix_shape(variable) is None:
                return True
            if len(variable.shape) == 2:
                return super()._should_use_adamw(variable)
            return any(re.search(keyword, variable.path) for keyword in self.exclude_layers)

        def build(self, var_list):
            if self.built:
                return
            # The update step may see the backend's variable (no `path`).
            self._matrix_shapes = [matrix_shape(variable) for variable in var_list]
            super().build(var_list)

        def _muon_update_step(self, gradient, variable, lr, m):
            self.assign_add(m, ops.add(gradient, m * (self.momentum - 1)))
            g = ops.add(gradient, self.momentum * m) if self.nesterov else m
            shape = self._matrix_shapes[self._get_variable_index(variable)]
            update = self.zeropower_via_newtonschulz5(ops.reshape(g, shape), self.ns_steps)
            scale = 1.0 if self.rms_rate is None else (
                max(shape[-2], shape[-1]) ** 0.5 * self.rms_rate)
            self.assign_sub(variable, ops.reshape(lr * update * scale, variable.shape))

else:

    class Muon:
        """Stands in for `Muon` where Keras has no `keras.optimizers.Muon`."""

        def __init__(self, *args, **kwargs):
            raise ImportError(
                f"Muon needs Keras 3.10 or later (keras.optimizers.Muon); this is Keras "
                f"{keras.__version__}. Upgrade with `pip install -U 'keras>=3.10'`.")
