import keras
import numpy as np
import pytest

from keras import ops

from keras_transformer.layers import moe_routing

# Runs under every Keras backend (CI: TensorFlow, then JAX); see tests/conftest.py.
pytestmark = pytest.mark.backend_neutral


def _np(x):
    return ops.convert_to_numpy(x)


@pytest.mark.parametrize(
    "num_tokens, num_experts, top_k, factor, expected",
    [
        (4096, 64, 2, 1.25, 160),  # ceil(1.25·4096·2/64)
        (4096, 8, 2, 1.25, 1280),
        (10, 4, 1, 1.0, 3),  # ceil(2.5)
        (3, 64, 1, 0.1, 1),  # at least one slot
        (4, 2, 2, 8.0, 4),  # at most every token
        (7, 4, 2, None, 7),  # None: nothing dropped
    ],
)
def test_expert_capacity_static_and_dynamic_agree(
    num_tokens, num_experts, top_k, factor, expected
):
    assert moe_routing.expert_capacity(num_tokens, num_experts, top_k, factor) == expected
    dynamic = moe_routing.expert_capacity(keras.ops.convert_to_tensor(num_tokens), num_experts, top_k, factor)
    assert int(dynamic) == expected


def _hand_case():
    # 6 position-major tokens over 3 experts; the kernel 10·I sends a token
    # c·eᵢ (+ a smaller second component) to expert i first.
    inputs = np.array(
        [[1.0, 0.5, 0.0],  # → 0, then 1
         [1.0, 0.0, 0.5],  # → 0, then 2
         [0.0, 0.2, 1.0],  # padding (→ 2, then 1)
         [1.0, 0.5, 0.0],  # → 0, then 1
         [0.0, 1.0, 0.5],  # → 1, then 2
         [0.5, 0.0, 1.0]],  # → 2, then 0
        "float32",
    )
    valid = np.array([True, True, False, True, True, True])
    return inputs, 10.0 * np.eye(3, dtype="float32"), valid


def test_top_k_routing_positions_drops_and_counts_on_a_hand_case():
    inputs, kernel, valid = _hand_case()
    routing = moe_routing.top_k_routing(inputs, kernel, valid, top_k=2, capacity=2)
    np.testing.assert_array_equal(
        _np(routing["expert"]), [0, 1, 0, 2, 2, 1, 0, 1, 1, 2, 2, 0]
    )
    # Each assignment's place in its expert's buffer, in priority order;
    # padding (token 2) takes no place.
    np.testing.assert_array_equal(
        _np(routing["position"]), [0, 0, 1, 0, 0, 0, 2, 1, 2, 1, 2, 3]
    )
    kept = [True, True, True, True, False, False, False, True, False, True, False, False]
    np.testing.assert_array_equal(_np(routing["kept"]), kept)
    np.testing.assert_array_equal(_np(routing["assigned"]), [4, 3, 3])
    np.testing.assert_array_equal(_np(routing["kept_per_expert"]), [2, 2, 2])
    gates = _np(routing["gates"]).reshape(6, 2)
    np.testing.assert_allclose(gates.sum(-1), 1.0, rtol=1e-6)
    assert np.all(gates[:, 0] >= gates[:, 1])


def test_top_k_routing_losses_equal_the_formulas_over_real_tokens():
    inputs, kernel, valid = _hand_case()
    routing = moe_routing.top_k_routing(inputs, kernel, valid, top_k=2, capacity=2)
    logits = inputs.astype("float64") @ kernel
    probabilities = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    real = probabilities[valid]
    fraction = np.array([4, 3, 3]) / (5 * 2)  # assignments before capacity
    aux = 3 * np.sum(fraction * real.mean(0))
    z = np.mean(np.log(np.exp(logits[valid]).sum(-1)) ** 2)
    np.testing.assert_allclose(_np(routing["aux_loss"]), aux, rtol=1e-5)
    np.testing.assert_allclose(_np(routing["z_loss"]), z, rtol=1e-5)


def test_top_1_gates_are_the_router_probabilities():
    inputs, kernel, valid = _hand_case()
    routing = moe_routing.top_k_routing(inputs, kernel, valid, top_k=1, capacity=6)
    logits = inputs @ kernel
    probabilities = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    np.testing.assert_allclose(_np(routing["gates"]), probabilities.max(-1), rtol=1e-6)
    np.testing.assert_array_equal(_np(routing["kept"]), valid)


def test_capacity_chunks_cover_the_capacity_in_order():
    # 24 tokens, 4 experts, top-1, no dropping: mean load 6, bounds 9, 14, 21.
    chunks = moe_routing.capacity_chunks(24, 24, 4, 1, None)
    assert chunks == [(0, 9), (9, 14), (14, 21), (21, 24)]
    # A capacity factor of 3 (1.5² < 3 ≤ 1.5³): two bounds below the capacity 18.
    assert moe_routing.capacity_chunks(24, 18, 4, 1, 3.0) == [(0, 9), (9, 14), (14, 18)]
    # 1.25 < 1.5: one chunk.
    assert moe_routing.capacity_chunks(24, 8, 4, 1, 1.25) == [(0, 8)]
