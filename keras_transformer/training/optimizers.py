"""Muon for the package's layers: attention kernels and MoE experts as matrices.

Muon (Jordan et al., 2024) updates a weight matrix by its momentum made
orthogonal: five Newton–Schulz iterations push every singular value of the
momentum towards one, so that no direction of the update dominates. Keras's
`keras.optimizers.Muon` (Keras 3.10+) does this to every variable of exactly
two dimensions and sends the rest to an AdamW fallback. In this package's
models that leaves Muon only the feed-forward kernels: the attention
projections are `EinsumDense` kernels of three dimensions, `(d, N, H)` for
the query, key and value and `(N, H, d)` for the output, and an `MoE`
layer's experts are `(E, d, f)` and `(E, f, d)`.

`Muon` here is the same algorithm, with Keras's arguments, defaults and
configuration keys, and with those variables seen as what they are:
- a query, key or value kernel `(d, N, H)` as one `(d, N·H)` matrix, and an
  attention output kernel `(N, H, d)` as one `(N·H, d)` matrix (the whole
  projection, as modded-nanoGPT orthogonalizes it);
- an expert kernel `(E, a, b)` as E matrices `(a, b)`, each orthogonalized
  on its own (Newton–Schulz runs on the last two axes).

Everything else of more or fewer than two dimensions, the biases (an MoE
layer's are `(E, f)`: Keras's Muon would orthogonalize them), the
embeddings (their path holds "embedding") and the `logits` projection goes
to the AdamW fallback, as Muon's authors advise. The update of an `(a, b)`
matrix is scaled by `rms_rate · √max(a, b)` (Moonlight's rule, Keras's
default), so that AdamW's learning rate and weight decay carry over.

It is written on `keras.optimizers.Optimizer`'s public `build` and
`update_step` rather than as a subclass of Keras's Muon, whose internals
changed between Keras releases; so it needs no Keras newer than the
package's own lower bound. On a plain `Dense` kernel its update equals
Keras's Muon's (tested where Keras has it).

    optimizer = Muon(learning_rate=3e-3, weight_decay=0.1)
    model.compile(optimizer=optimizer, loss=...)
"""

import re

import keras
from keras import ops

_ATTENTION_IN = ("query/kernel", "key/kernel", "value/kernel")
_ATTENTION_OUT = ("attention_output/kernel",)
_EXPERTS = ("inner_kernel", "output_kernel")


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


@keras.saving.register_keras_serializable(package="keras_transformer")
class Muon(keras.optimizers.Optimizer):
    """Muon on the matrices (attention kernels and experts included), AdamW on the rest.

    Args:
        learning_rate: a float or a schedule, for both parts (AdamW's is
            `learning_rate · adam_lr_ratio`).
        adam_beta_1, adam_beta_2, epsilon: AdamW's, for the variables
            `orthogonalizes` refuses.
        weight_decay: decoupled weight decay of the orthogonalized matrices
            (`variable -= learning_rate · weight_decay · variable` a step).
        adam_weight_decay: the same for AdamW's variables.
        exclude_layers: regular expressions; a variable whose path matches
            one goes to AdamW. Default `["logits"]` (the output projection).
        exclude_embeddings: whether variables whose path holds "embedding"
            go to AdamW (default True).
        muon_a, muon_b, muon_c, ns_steps: the Newton–Schulz polynomial and
            its number of iterations (Keras's and modded-nanoGPT's values).
        momentum, nesterov: Muon's momentum.
        adam_lr_ratio: AdamW's learning rate relative to `learning_rate`.
        rms_rate: the update of an `(a, b)` matrix is scaled by
            `rms_rate · √max(a, b)`; None leaves it unscaled.
        clipnorm, clipvalue, global_clipnorm, use_ema, ema_momentum, ...:
            `keras.optimizers.Optimizer`'s.
    """

    def __init__(self, learning_rate=0.001, adam_beta_1=0.9, adam_beta_2=0.999,
                 adam_weight_decay=0.004, epsilon=1e-7, weight_decay=0.004, clipnorm=None,
                 clipvalue=None, global_clipnorm=None, use_ema=False, ema_momentum=0.99,
                 ema_overwrite_frequency=None, loss_scale_factor=None,
                 gradient_accumulation_steps=None, name="muon", exclude_layers=None,
                 exclude_embeddings=True, muon_a=3.4445, muon_b=-4.7750, muon_c=2.0315,
                 adam_lr_ratio=1, momentum=0.95, ns_steps=5, nesterov=True, rms_rate=0.2,
                 **kwargs):
        # Each part has its own weight decay, applied in `update_step`: the
        # base class's (one value for every variable) stays off.
        super().__init__(learning_rate=learning_rate, name=name, weight_decay=None,
                         clipnorm=clipnorm, clipvalue=clipvalue, global_clipnorm=global_clipnorm,
                         use_ema=use_ema, ema_momentum=ema_momentum,
                         ema_overwrite_frequency=ema_overwrite_frequency,
                         loss_scale_factor=loss_scale_factor,
                         gradient_accumulation_steps=gradient_accumulation_steps, **kwargs)
        self.adam_beta_1 = adam_beta_1
        self.adam_beta_2 = adam_beta_2
        self.epsilon = epsilon
        self.matrix_weight_decay = weight_decay
        self.adam_weight_decay = adam_weight_decay
        self.exclude_layers = ["logits"] if exclude_layers is None else list(exclude_layers)
        self.exclude_embeddings = exclude_embeddings
        self.muon_a, self.muon_b, self.muon_c = muon_a, muon_b, muon_c
        self.adam_lr_ratio = adam_lr_ratio
        self.momentum = momentum
        self.ns_steps = ns_steps
        self.nesterov = nesterov
        self.rms_rate = rms_rate

    def orthogonalizes(self, variable):
        """The shape whose last two axes Newton–Schulz orthogonalizes in
        `variable`'s update, or None where AdamW updates it."""
        shape = matrix_shape(variable)
        path = variable.path
        if shape is None or (self.exclude_embeddings and "embedding" in path.lower()):
            return None
        if any(re.search(keyword, path) for keyword in self.exclude_layers):
            return None
        return shape

    def build(self, var_list):
        """A momentum for every variable, and AdamW's velocity for those it updates."""
        if self.built:
            return
        super().build(var_list)
        # The update step may see the backend's variable (no `path`): the
        # choice is made here, by index.
        self._matrix_shapes = [self.orthogonalizes(variable) for variable in var_list]
        # `exclude_from_weight_decay` (the base class's) is honoured too.
        decays = getattr(self, "_use_weight_decay", lambda variable: True)
        self._decays = [bool(decays(variable)) for variable in var_list]
        # Created in Keras's Muon's order, so that its checkpoints load.
        self.momentums, self.adam_velocities = [], []
        for variable, shape in zip(var_list, self._matrix_shapes):
            self.momentums.append(self.add_variable_from_reference(variable, name="momentum"))
            self.adam_velocities.append(None if shape is not None else
                                        self.add_variable_from_reference(variable,
                                                                         name="velocity"))

    def update_step(self, gradient, variable, learning_rate):
        index = self._get_variable_index(variable)
        shape = self._matrix_shapes[index]
        learning_rate = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        decay = self.adam_weight_decay if shape is None else self.matrix_weight_decay
        if decay and self._decays[index]:
            self.assign_sub(variable, variable * ops.cast(decay, variable.dtype) * learning_rate)
        if shape is None:
            self._adamw_step(gradient, variable, learning_rate * self.adam_lr_ratio,
                             self.momentums[index], self.adam_velocities[index])
        else:
            self._muon_step(gradient, variable, learning_rate, self.momentums[index], shape)

    def _muon_step(self, gradient, variable, learning_rate, m, shape):
        self.assign_add(m, gradient + m * (self.momentum - 1))
        g = gradient + self.momentum * m if self.nesterov else m
        update = self.newton_schulz(ops.reshape(g, shape))
        if self.rms_rate is not None:
            update = update * (max(shape[-2], shape[-1]) ** 0.5 * self.rms_rate)
        self.assign_sub(variable, ops.reshape(learning_rate * update, variable.shape))

    def _adamw_step(self, gradient, variable, learning_rate, m, v):
        step = ops.cast(self.iterations + 1, variable.dtype)
        beta_1 = ops.cast(self.adam_beta_1, variable.dtype)
        beta_2 = ops.cast(self.adam_beta_2, variable.dtype)
        alpha = learning_rate * ops.sqrt(1 - ops.power(beta_2, step)) / (
            1 - ops.power(beta_1, step))
        self.assign_add(m, (gradient - m) * (1 - beta_1))
        self.assign_add(v, (ops.square(gradient) - v) * (1 - beta_2))
        self.assign_sub(variable, m * alpha / (ops.sqrt(v) + self.epsilon))

    def newton_schulz(self, x):
        """`x` (its last two axes a matrix) with its singular values pushed
        towards one by `ns_steps` quintic Newton–Schulz iterations."""
        wide = x.shape[-2] <= x.shape[-1]
        if not wide:
            x = ops.swapaxes(x, -1, -2)
        # The spectral norm at most one: divide by the Frobenius norm.
        x = x / (ops.sqrt(ops.sum(ops.square(x), axis=(-2, -1), keepdims=True)) + 1e-7)
        for _ in range(self.ns_steps):
            a = ops.matmul(x, ops.swapaxes(x, -1, -2))
            b = self.muon_b * a + self.muon_c * ops.matmul(a, a)
            x = self.muon_a * x + ops.matmul(b, x)
        return x if wide else ops.swapaxes(x, -1, -2)

    def get_config(self):
        config = super().get_config()
        config.update(
            adam_beta_1=self.adam_beta_1, adam_beta_2=self.adam_beta_2, epsilon=self.epsilon,
            weight_decay=self.matrix_weight_decay, adam_weight_decay=self.adam_weight_decay,
            exclude_layers=self.exclude_layers, exclude_embeddings=self.exclude_embeddings,
            muon_a=self.muon_a, muon_b=self.muon_b, muon_c=self.muon_c,
            adam_lr_ratio=self.adam_lr_ratio, momentum=self.momentum, ns_steps=self.ns_steps,
            nesterov=self.nesterov, rms_rate=self.rms_rate)
        return config
