"""Sparse mixture of experts: a feed-forward layer whose cost grows with top-k."""

import math

import keras
from keras import ops

from keras_transformer.layers import activations as activations_lib
from keras_transformer.layers import masks as masks_lib
from keras_transformer.layers import moe_routing as routing_lib
from keras_transformer.layers.replica_losses import ReplicaLocalLosses
from keras_transformer.layers.routing_statistics import RoutingStatistics
from keras_transformer.layers.validation import check_floating, check_positive_int, check_rate


@keras.saving.register_keras_serializable(package="keras_transformer")
class MoE(ReplicaLocalLosses, keras.layers.Layer):
    """Mixture of experts: `MoE(x) = Σ_{i ∈ top-k(x)} gᵢ(x)·Eᵢ(x)`, sparse.

    A drop-in replacement for `PositionwiseFFN`: `num_experts` feed-forward
    networks `Eᵢ(x) = activation(x·W₁ᵢ + b₁ᵢ)·W₂ᵢ + b₂ᵢ`, of which a router
    chooses `top_k` per token.

    Routing (token choice): router probabilities `p = softmax(x·W_r)` in
    float32; each token goes to its `top_k` most probable experts with gates
    `gᵢ = pᵢ / Σ_{chosen} p` (renormalized over the chosen k; with `top_k=1`
    the gate is `pᵢ` itself, as in the Switch Transformer, so that the router
    learns from the task loss).

    Dispatch is sparse: each expert processes only the tokens routed to it,
    gathered into a per-expert buffer of static size `capacity`, with one
    batched matmul over the experts, and the results are scattered back. The
    expert work is `num_experts × capacity ≈ capacity_factor × tokens × top_k`
    rows: it grows with `top_k`, not with `num_experts`. Where the capacity
    exceeds 1.5× the mean load (no dropping at inference, or a large
    `capacity_factor`), the buffer runs in chunks of positions (up to 1.5×,
    2.25×, ... the mean load) and a chunk that no expert's load reaches is
    skipped: the work is then at most `num_experts × 1.5 × the busiest
    expert's load` rows, not `num_experts × tokens`.

    Capacity: `capacity = ceil(capacity_factor × tokens × top_k / num_experts)`
    in training (tokens = batch × length). An expert that is sent more tokens
    keeps the earliest: priority goes by position in the sequence first (all
    first tokens of the batch, then all second tokens, ...), so a future token
    never displaces a past one. A dropped assignment contributes zero (the
    block's residual connection carries the token). At inference
    `eval_capacity_factor` applies; None means no token is ever dropped
    (capacity = tokens), so that step-by-step decoding equals the full pass.

    Padding tokens (padding mask False) are not routed, output zeros and do
    not count in the losses or statistics.

    Losses, added with `add_loss` in training only (so `fit` reports them as
    part of its loss), over the real tokens; under `tf.distribute`, each
    replica adds the losses of its share of the batch and `fit` minimizes
    their mean (`ReplicaLocalLosses`: Keras 3 alone would let the last
    replica's loss overwrite the others'):
    - load balancing (Switch): `num_experts · Σᵢ fᵢ·Pᵢ`, where `fᵢ` is the
      fraction of the `top_k × tokens` assignments that chose expert i
      (before capacity) and `Pᵢ` the mean router probability of expert i;
      it is 1.0 when the load is uniform. Times `aux_loss_weight`.
    - router z-loss: `mean(logsumexp(router_logits)²)`, times `z_loss_weight`.

    Routing statistics: the layer's metric `routing_statistics` reports
    `<name>_routing_dropped` and `<name>_routing_max_load` in `fit`'s logs;
    `routing_statistics.expert_load()` gives the per-expert load.

    Args:
        num_experts: int, number of experts.
        expert_dim: int, inner width of each expert.
        top_k: int in [1, num_experts], experts per token.
        activation: activation of the experts' inner layer, or `"swiglu"` /
            `"geglu"` for gated experts (`gate_kernel`, `gate_bias` added).
        capacity_factor: float > 0, training capacity factor.
        eval_capacity_factor: float > 0 or None (no dropping), at inference.
        router_jitter: float in [0, 1): in training, the router sees the
            input multiplied by uniform noise in `[1 - jitter, 1 + jitter]`.
        aux_loss_weight: float ≥ 0, weight of the load-balancing loss.
        z_loss_weight: float ≥ 0, weight of the router z-loss.
        dropout: float in [0, 1), dropout on the experts' inner activations.
        **kwargs: base `keras.layers.Layer` arguments.

    Call arguments:
        inputs: `(B, T, D)` tokens, floating point (other dtypes: TypeError).
        padding_mask: `(B, T)` bool, True at real tokens. Defaults to the
            implicit Keras mask of `inputs`.
        training: bool, training behaviour (capacity, jitter, losses, dropout).

    Returns:
        `(B, T, D)`, the mixture of the chosen experts' outputs.

    Example:

    >>> moe = MoE(num_experts=8, expert_dim=128, top_k=2)
    >>> keras.ops.shape(moe(keras.random.normal((2, 10, 64))))
    (2, 10, 64)
    >>> routing = moe.compute_routing(keras.random.normal((2, 10, 64)))
    >>> keras.ops.shape(routing["expert_index"]), keras.ops.shape(routing["gates"])
    ((2, 10, 2), (2, 10, 2))
    """

    def __init__(
        self,
        num_experts,
        expert_dim,
        top_k=2,
        activation="relu",
        capacity_factor=1.25,
        eval_capacity_factor=None,
        router_jitter=0.0,
        aux_loss_weight=1e-2,
        z_loss_weight=1e-3,
        dropout=0.0,
        **kwargs,
    ):
        if kwargs.get("name") is None:  # "moe", "moe_1", ... (not Keras's "mo_e")
            uid = keras.backend.get_uid("keras_transformer_moe")
            kwargs["name"] = "moe" if uid == 1 else f"moe_{uid - 1}"
        super().__init__(**kwargs)
        check_positive_int("num_experts", num_experts)
        check_positive_int("expert_dim", expert_dim)
        if not isinstance(top_k, int) or not 1 <= top_k <= num_experts:
            raise ValueError(
                "`top_k` must be an int between 1 and `num_experts`. "
                f"Received: top_k={top_k}, num_experts={num_experts}"
            )
        _check(capacity_factor > 0, "capacity_factor", capacity_factor, "> 0")
        _check(eval_capacity_factor is None or eval_capacity_factor > 0,
               "eval_capacity_factor", eval_capacity_factor, "None or > 0")
        check_rate("router_jitter", router_jitter)
        _check(aux_loss_weight >= 0, "aux_loss_weight", aux_loss_weight, ">= 0")
        _check(z_loss_weight >= 0, "z_loss_weight", z_loss_weight, ">= 0")
        check_rate("dropout", dropout)
        self.num_experts = num_experts
        self.expert_dim = expert_dim
        self.top_k = top_k
        self.gated, self.activation = activations_lib.resolve(activation)
        self.capacity_factor = capacity_factor
        self.eval_capacity_factor = eval_capacity_factor
        self.router_jitter = router_jitter
        self.aux_loss_weight = aux_loss_weight
        self.z_loss_weight = z_loss_weight
        self.dropout = dropout
        self.supports_masking = True
        self.routing_statistics = RoutingStatistics(num_experts, name=f"{self.name}_routing")
        self._seed_generator = keras.random.SeedGenerator()

    def build(self, inputs_shape):
        if len(inputs_shape) != 3 or inputs_shape[-1] is None:
            raise ValueError(
                "`inputs` must have shape (batch, length, dim) with a known dim. "
                f"Received: inputs_shape={tuple(inputs_shape)}"
            )
        d, e, f = inputs_shape[-1], self.num_experts, self.expert_dim
        # The router stays float32 under mixed precision (no autocast).
        self.router_kernel = self.add_weight(
            name="router_kernel",
            shape=(d, e),
            initializer=keras.initializers.RandomNormal(stddev=d**-0.5),
            autocast=False,
        )
        # Glorot-uniform per expert (not over the stacked (E, D, F) shape).
        self.inner_kernel = self.add_weight(
            name="inner_kernel", shape=(e, d, f), initializer=_glorot(d, f)
        )
        self.inner_bias = self.add_weight(name="inner_bias", shape=(e, f), initializer="zeros")
        self.output_kernel = self.add_weight(
            name="output_kernel", shape=(e, f, d), initializer=_glorot(f, d)
        )
        self.output_bias = self.add_weight(name="output_bias", shape=(e, d), initializer="zeros")
        if self.gated:  # SwiGLU / GeGLU experts: act(x·W_g + b_g) ⊙ (x·W₁ + b₁)
            self.gate_kernel = self.add_weight(
                name="gate_kernel", shape=(e, d, f), initializer=_glorot(d, f)
            )
            self.gate_bias = self.add_weight(name="gate_bias", shape=(e, f), initializer="zeros")
        self._dropout_layer = keras.layers.Dropout(self.dropout, dtype=self.dtype_policy)
        self.built = True

    def call(self, inputs, padding_mask=None, training=None, mask=None):
        check_floating("inputs", inputs)
        padding_mask = masks_lib.first_mask(padding_mask, mask)
        tokens, valid, unflatten = self._flatten(inputs, padding_mask)
        routing = self._route(tokens, valid, training)
        if training:
            self.add_loss(
                self.aux_loss_weight * routing["aux_loss"]
                + self.z_loss_weight * routing["z_loss"]
            )
        if _can_update_metrics(inputs):
            self.routing_statistics.update_state(
                routing["assigned"], routing["kept_per_expert"]
            )
        outputs = self._dispatch_and_combine(tokens, routing, training)
        return unflatten(outputs)

    def compute_routing(self, inputs, padding_mask=None, training=False):
        """The routing decisions for `inputs`, for inspection and tests.

        Returns a dict: `expert_index` `(B, T, k)` int, `gates` `(B, T, k)`,
        `kept` `(B, T, k)` bool (False: dropped over capacity, or padding),
        `router_probabilities` `(B, T, E)`, `capacity` (int), `aux_loss` and
        `z_loss` (unweighted scalars).
        """
        if not self.built:
            self.build(tuple(inputs.shape))
        tokens, valid, _ = self._flatten(inputs, padding_mask)
        routing = self._route(tokens, valid, training)
        batch, length = ops.shape(inputs)[0], ops.shape(inputs)[1]

        def unflatten(x):  # [T·B, ...] position-major → [B, T, ...]
            x = ops.reshape(x, (length, batch, *x.shape[1:]))
            return ops.swapaxes(x, 0, 1)

        k = self.top_k
        return {
            "expert_index": unflatten(ops.reshape(routing["expert"], (-1, k))),
            "gates": unflatten(ops.reshape(routing["gates"], (-1, k))),
            "kept": unflatten(ops.reshape(routing["kept"], (-1, k))),
            "router_probabilities": unflatten(routing["probabilities"]),
            "capacity": routing["capacity"],
            "aux_loss": routing["aux_loss"],
            "z_loss": routing["z_loss"],
        }

    def _flatten(self, inputs, padding_mask):
        """`(B, T, D)` → position-major `(T·B, D)` tokens, valid flags, inverse."""
        masks_lib.check_mask_shape("padding_mask", padding_mask, tuple(inputs.shape[:2]))
        batch, length, dim = ops.shape(inputs)[0], ops.shape(inputs)[1], inputs.shape[-1]
        tokens = ops.reshape(ops.swapaxes(inputs, 0, 1), (-1, dim))  # [G, D]
        if padding_mask is None:
            valid = ops.ones((ops.shape(tokens)[0],), dtype="bool")
        else:
            valid = ops.reshape(ops.swapaxes(ops.cast(padding_mask, "bool"), 0, 1), (-1,))

        def unflatten(outputs):  # [G, D] → [B, T, D]
            return ops.swapaxes(ops.reshape(outputs, (length, batch, dim)), 0, 1)

        return tokens, valid, unflatten

    def _capacity_factor(self, training):
        return self.capacity_factor if training else self.eval_capacity_factor

    def _route(self, tokens, valid, training):
        """Routing of position-major tokens `(G, D)`; assignments are `(G·k,)`."""
        router_inputs = ops.cast(tokens, "float32")
        if training and self.router_jitter > 0:
            router_inputs = router_inputs * keras.random.uniform(
                ops.shape(router_inputs),
                1.0 - self.router_jitter,
                1.0 + self.router_jitter,
                seed=self._seed_generator,
            )
        capacity = routing_lib.expert_capacity(
            ops.shape(tokens)[0], self.num_experts, self.top_k, self._capacity_factor(training)
        )
        return routing_lib.top_k_routing(
            router_inputs, self.router_kernel, valid, self.top_k, capacity
        )

    def _chunk_bounds(self, num_tokens, capacity, training):
        """The chunks of the capacity axis: `moe_routing.capacity_chunks`."""
        return routing_lib.capacity_chunks(
            num_tokens, capacity, self.num_experts, self.top_k, self._capacity_factor(training)
        )

    def _dispatch_and_combine(self, tokens, routing, training):
        """Runs the experts on their tokens, chunk by chunk of the capacity axis.

        Chunk `[lo, hi)` holds, for every expert, the tokens it was sent at
        positions `lo ≤ position < hi`. The first chunk always runs; a later
        one runs only if some expert's load reaches it (a `cond`), so that the
        work follows the busiest expert's load rather than the capacity.
        Without dropping at inference (capacity = tokens) that is the
        difference between `num_experts × tokens` rows and
        `1.5 × top_k × tokens` while the busiest expert's load is within 1.5×
        the mean.
        """
        k, dim = self.top_k, tokens.shape[-1]
        token_index = ops.repeat(ops.arange(ops.shape(tokens)[0], dtype="int32"), k)
        padded_tokens = ops.concatenate([ops.zeros((1, dim), tokens.dtype), tokens], axis=0)
        max_load = ops.max(routing["kept_per_expert"])
        chunks = self._chunk_bounds(ops.shape(tokens)[0], routing["capacity"], training)
        combined = None
        for lo, hi in chunks:

            def run(lo=lo, hi=hi):
                return self._run_chunk(padded_tokens, token_index, routing, lo, hi, training)

            if combined is None:
                combined = run()
            else:
                combined = combined + ops.cond(
                    max_load > lo, run, lambda: ops.zeros_like(combined)
                )
        combined = combined * ops.expand_dims(ops.cast(routing["gates"], combined.dtype), 1)
        return ops.sum(ops.reshape(combined, (-1, k, dim)), axis=1)  # [G, D]

    def _run_chunk(self, padded_tokens, token_index, routing, lo, hi, training):
        """The experts on the assignments at positions `[lo, hi)`: `(G·k, D)`, zero elsewhere.

        Gathers them into `(E, hi - lo, D)`, runs the experts as one batched
        matmul and gathers each assignment's output back (ungated).
        """
        num_experts, dim = self.num_experts, padded_tokens.shape[-1]
        size = hi - lo
        slots = num_experts * size
        position = routing["position"]
        in_chunk = routing["kept"]  # kept: position < capacity
        if not (isinstance(lo, int) and lo == 0):
            in_chunk = ops.logical_and(in_chunk, position >= lo)
        if hi is not routing["capacity"]:
            in_chunk = ops.logical_and(in_chunk, position < hi)
        # Each assignment in the chunk owns one slot; the others point past the end.
        slot = ops.where(in_chunk, routing["expert"] * size + position - lo, slots)  # [G·k]
        # slot → 1 + the token in it (0: empty); scatter adds, slots are unique.
        slot_token = ops.scatter(ops.expand_dims(slot, 1), token_index + 1, (slots + 1,))[:slots]
        expert_inputs = ops.reshape(
            ops.take(padded_tokens, slot_token, axis=0), (num_experts, size, dim)
        )  # [E, hi - lo, D]
        hidden = ops.einsum("ecd,edf->ecf", expert_inputs, self.inner_kernel)
        hidden = hidden + ops.expand_dims(self.inner_bias, 1)  # [E, ., F]
        if self.gated:
            gate = ops.einsum("ecd,edf->ecf", expert_inputs, self.gate_kernel)
            hidden = self.activation(gate + ops.expand_dims(self.gate_bias, 1)) * hidden
        else:
            hidden = self.activation(hidden)
        hidden = self._dropout_layer(hidden, training=training)
        expert_outputs = ops.einsum("ecf,efd->ecd", hidden, self.output_kernel)
        expert_outputs = expert_outputs + ops.expand_dims(self.output_bias, 1)  # [E, ., D]
        # One zero row at index `slots` for the assignments outside the chunk.
        flat_outputs = ops.concatenate(
            [ops.reshape(expert_outputs, (-1, dim)), ops.zeros((1, dim), expert_outputs.dtype)],
            axis=0,
        )
        return ops.take(flat_outputs, slot, axis=0)  # [G·k, D]

    def compute_output_shape(self, inputs_shape):
        return tuple(inputs_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_experts": self.num_experts,
                "expert_dim": self.expert_dim,
                "top_k": self.top_k,
                "activation": activations_lib.serialize(self.activation, self.gated),
                "capacity_factor": self.capacity_factor,
                "eval_capacity_factor": self.eval_capacity_factor,
                "router_jitter": self.router_jitter,
                "aux_loss_weight": self.aux_loss_weight,
                "z_loss_weight": self.z_loss_weight,
                "dropout": self.dropout,
            }
        )
        return config


def _check(ok, name, value, expected):
    if not ok:
        raise ValueError(f"`{name}` must be {expected}. Received: {name}={value}")


def _glorot(fan_in, fan_out):
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return keras.initializers.RandomUniform(-limit, limit)


def _can_update_metrics(inputs):
    """False inside a JAX trace (`fit`'s compiled step, `jax.jit`).

    Keras's JAX trainer runs a layer's `call` statelessly with only the
    trainable and non-trainable weights in scope: a metric updated from inside
    `call` has no value there. Under JAX the routing statistics therefore
    count eager calls only; the load-balancing loss works on every backend.
    """
    if keras.backend.backend() != "jax":
        return True
    import jax

    return not isinstance(inputs, jax.core.Tracer)
