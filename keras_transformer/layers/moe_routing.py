"""Token-choice top-k routing for `MoE`: assignments, capacity, losses, chunks.

Functions of tensors and ints only, no weights: the `MoE` layer owns the
router kernel and the experts, and calls these (as Flax's MoE keeps its
routers in a module of their own). Tokens are position-major, `(G, D)` with
`G = length × batch` (all first tokens of the batch, then all second tokens,
...), so that an earlier row has priority over a later one.
"""

import math

from keras import ops

# Growth of the capacity chunks: a chunk runs only when some expert's load
# reaches it, so the rows computed stay within 1.5× the busiest expert's load.
CHUNK_GROWTH = 1.5


def expert_capacity(num_tokens, num_experts, top_k, capacity_factor):
    """Buffer size per expert: `ceil(capacity_factor × tokens × top_k / num_experts)`.

    Clipped to `[1, num_tokens]`. `capacity_factor=None` means no token is
    ever dropped: the capacity is `num_tokens`. An int `num_tokens` gives an
    int; a tensor gives an int32 tensor.

    Example:

    >>> expert_capacity(4096, num_experts=64, top_k=2, capacity_factor=1.25)
    160
    >>> expert_capacity(4096, num_experts=64, top_k=2, capacity_factor=None)
    4096
    """
    if capacity_factor is None:
        return num_tokens  # an expert can take every token: nothing dropped
    if isinstance(num_tokens, int):
        capacity = math.ceil(capacity_factor * num_tokens * top_k / num_experts)
        return max(1, min(capacity, num_tokens))
    capacity = ops.ceil(
        ops.cast(num_tokens, "float32") * (capacity_factor * top_k / num_experts)
    )
    return ops.minimum(ops.maximum(ops.cast(capacity, "int32"), 1), num_tokens)


def top_k_routing(router_inputs, router_kernel, valid, top_k, capacity):
    """Routes position-major tokens to their `top_k` experts, earliest kept.

    Args:
        router_inputs: `(G, D)` float32 tokens as the router sees them.
        router_kernel: `(D, E)` float32.
        valid: `(G,)` bool, False at padding (not routed, not counted).
        top_k: int, experts per token.
        capacity: int or int32 scalar tensor, buffer size per expert.

    Returns:
        A dict over the `G·k` assignments (token by token, a token's k choices
        together): `expert` `(G·k,)` int, `gates` `(G·k,)` (renormalized over
        the chosen k; with `top_k=1` the probability itself), `position`
        `(G·k,)` (the assignment's place in its expert's buffer), `kept`
        `(G·k,)` bool (valid and `position < capacity`), and `capacity`,
        `probabilities` `(G, E)`, `assigned` and `kept_per_expert` `(E,)`
        int32 counts, `aux_loss` (Switch load balancing, `E · Σᵢ fᵢ·Pᵢ`) and
        `z_loss` (`mean(logsumexp(logits)²)`), both unweighted and over the
        valid tokens.
    """
    num_experts = router_kernel.shape[-1]
    logits = ops.matmul(router_inputs, router_kernel)  # [G, E] float32
    probabilities = ops.softmax(logits, axis=-1)
    top_probabilities, top_experts = ops.top_k(probabilities, top_k)  # [G, k]
    if top_k > 1:
        gates = top_probabilities / ops.sum(top_probabilities, axis=-1, keepdims=True)
    else:
        gates = top_probabilities

    # Assignments in priority order: token by token (position-major), and
    # a token's k choices together (they go to k different experts).
    expert = ops.reshape(top_experts, (-1,))  # [G·k]
    assignment_valid = ops.repeat(valid, top_k)  # [G·k]
    one_hot = ops.one_hot(expert, num_experts, dtype="int32") * ops.expand_dims(
        ops.cast(assignment_valid, "int32"), 1
    )  # [G·k, E]
    position = ops.sum((ops.cumsum(one_hot, axis=0) - 1) * one_hot, axis=1)  # [G·k]
    kept = ops.logical_and(assignment_valid, position < capacity)  # [G·k]

    # Losses over the real tokens.
    real = ops.cast(valid, "float32")
    num_real = ops.maximum(ops.sum(real), 1.0)
    assigned = ops.sum(one_hot, axis=0)  # [E]
    fraction = ops.cast(assigned, "float32") / (num_real * top_k)
    mean_probability = ops.sum(probabilities * ops.expand_dims(real, 1), axis=0) / num_real
    aux_loss = num_experts * ops.sum(fraction * mean_probability)
    z_loss = ops.sum(ops.square(ops.logsumexp(logits, axis=-1)) * real) / num_real
    kept_per_expert = ops.sum(one_hot * ops.expand_dims(ops.cast(kept, "int32"), 1), axis=0)
    return {
        "expert": expert,
        "gates": ops.reshape(gates, (-1,)),
        "position": position,
        "kept": kept,
        "capacity": capacity,
        "probabilities": probabilities,
        "assigned": assigned,
        "kept_per_expert": kept_per_expert,
        "aux_loss": aux_loss,
        "z_loss": z_loss,
    }


def capacity_chunks(num_tokens, capacity, num_experts, top_k, capacity_factor):
    """Splits `[0, capacity)` into chunks: `[(0, b₁), (b₁, b₂), ..., (bₘ, capacity)]`.

    `bⱼ = ceil(1.5ʲ × mean load)`, mean load = `tokens × top_k /
    num_experts`, for every `1.5ʲ` below `capacity_factor` (`num_experts /
    top_k` when it is None: nothing dropped). At `capacity_factor=1.25` this
    is one chunk, the whole buffer. The number of chunks is static (it
    depends on the configuration only); with a dynamic token count the bounds
    are tensors, and a chunk may be empty.
    """
    ratio = num_experts / top_k if capacity_factor is None else capacity_factor
    steps = 0
    while CHUNK_GROWTH ** (steps + 1) < ratio:
        steps += 1
    scale = top_k / num_experts
    if isinstance(num_tokens, int) and isinstance(capacity, int):
        bounds = [math.ceil(CHUNK_GROWTH**j * num_tokens * scale) for j in range(1, steps + 1)]
        bounds = sorted({b for b in bounds if 0 < b < capacity})
    else:
        mean_load = ops.cast(num_tokens, "float32") * scale
        bounds = [
            ops.minimum(ops.cast(ops.ceil(CHUNK_GROWTH**j * mean_load), "int32"), capacity)
            for j in range(1, steps + 1)
        ]
    bounds = [0, *bounds, capacity]
    return list(zip(bounds[:-1], bounds[1:]))
