import threading

import numpy as np
import pytest

import keras
from keras import ops

from keras_transformer import (
    DecoderBlock,
    EncoderBlock,
    MoE,
    PositionalEmbedding,
    RoutingStatistics,
)
from tests.backend import BACKEND, gradients, tensorflow_only
from tests.layer_checks import run_layer_checks

# Runs under every Keras backend (CI: TensorFlow, then JAX); see tests/conftest.py.
pytestmark = pytest.mark.backend_neutral

B, T, D, E, F = 2, 6, 8, 4, 16
X = np.random.default_rng(0).normal(size=(B, T, D)).astype("float32")
MASK = np.array([[True] * T, [True] * 4 + [False] * 2])


def _np(x):
    return ops.convert_to_numpy(x)


def _experts(layer, x):
    """Every expert's output for every token, by hand: `(B, T, E, D)`."""
    w1, b1, w2, b2 = (_np(w) for w in (layer.inner_kernel, layer.inner_bias,
                                      layer.output_kernel, layer.output_bias))
    hidden = np.maximum(0, np.einsum("btd,edf->btef", x, w1) + b1)
    return np.einsum("btef,efd->bted", hidden, w2) + b2


def _router_probabilities(layer, x):
    logits = x @ _np(layer.router_kernel)
    logits -= logits.max(-1, keepdims=True)
    return np.exp(logits) / np.exp(logits).sum(-1, keepdims=True), logits


def test_all_experts_with_ample_capacity_equals_the_dense_mixture():
    layer = MoE(num_experts=E, expert_dim=F, top_k=E, capacity_factor=E)
    out = _np(layer(X, training=True))
    probabilities, _ = _router_probabilities(layer, X)
    expected = np.einsum("bte,bted->btd", probabilities, _experts(layer, X))
    np.testing.assert_allclose(out, expected, atol=1e-5)
    # Inference without eval capacity never drops: the same.
    np.testing.assert_allclose(_np(layer(X)), expected, atol=1e-5)


def test_top_1_equals_switch_routing():
    layer = MoE(num_experts=E, expert_dim=F, top_k=1, capacity_factor=E)
    out = _np(layer(X, training=True))
    probabilities, _ = _router_probabilities(layer, X)
    chosen = probabilities.argmax(-1)
    experts = _experts(layer, X)
    expected = np.take_along_axis(experts, chosen[..., None, None], axis=2)[:, :, 0]
    expected *= probabilities.max(-1, keepdims=True)
    np.testing.assert_allclose(out, expected, atol=1e-5)


@pytest.mark.parametrize("top_k", [2, 3])
def test_gates_of_the_chosen_experts_sum_to_one_and_pick_the_most_probable(top_k):
    layer = MoE(num_experts=E, expert_dim=F, top_k=top_k)
    layer(X)
    routing = layer.compute_routing(X)
    np.testing.assert_allclose(_np(ops.sum(routing["gates"], -1)), 1.0, atol=1e-6)
    probabilities, _ = _router_probabilities(layer, X)
    expected = np.sort(np.argsort(-probabilities, -1)[..., :top_k], -1)
    np.testing.assert_array_equal(np.sort(_np(routing["expert_index"]), -1), expected)


def test_gradients_reach_the_router_and_every_used_expert():
    layer = MoE(num_experts=E, expert_dim=F, top_k=2, capacity_factor=E)
    layer(X)
    _, variable_grads = gradients(
        lambda x: ops.sum(layer(x, training=True) ** 2), layer.trainable_variables, [X]
    )
    grads = dict(zip([w.name for w in layer.trainable_weights], variable_grads))
    assert np.abs(grads["router_kernel"]).sum() > 0
    used = np.unique(_np(layer.compute_routing(X)["expert_index"]))
    for name in ("inner_kernel", "output_kernel", "output_bias"):
        per_expert = np.abs(grads[name]).reshape(E, -1).sum(-1)
        assert np.all(per_expert[used] > 0), (name, per_expert)
        assert np.all(per_expert[np.setdiff1d(np.arange(E), used)] == 0)


def _one_hot_router(layer, dim):
    """Router kernel `10·I`: a token `c·eᵢ` goes to expert i (and then i+1...)."""
    layer(np.zeros((1, 1, dim), "float32"))
    layer.router_kernel.assign(10.0 * np.eye(dim, E, dtype="float32"))


def test_overflow_drops_exactly_the_later_tokens_and_keeps_the_earliest():
    # 2 sequences × 6 tokens, all to expert 0; capacity ceil(0.5·12·1/4) = 2.
    layer = MoE(num_experts=E, expert_dim=F, top_k=1, capacity_factor=0.5)
    _one_hot_router(layer, E)
    x = np.zeros((2, 6, E), "float32")
    x[..., 0] = 1.0
    x += np.random.default_rng(1).normal(scale=0.01, size=x.shape).astype("float32")
    routing = layer.compute_routing(x, training=True)
    assert routing["capacity"] == 2
    kept = _np(routing["kept"])[..., 0]
    # Position-major priority: position 0 of both sequences, nothing later.
    expected = np.zeros((2, 6), bool)
    expected[:, 0] = True
    np.testing.assert_array_equal(kept, expected)
    out = _np(layer(x, training=True))
    assert np.all(out[:, 1:] == 0.0)  # dropped: zero, the residual carries them
    probabilities, _ = _router_probabilities(layer, x)
    expert_0 = _experts(layer, x)[:, 0, 0] * probabilities[:, 0, :1]
    np.testing.assert_allclose(out[:, 0], expert_0, atol=1e-5)
    # At inference (no eval capacity) nothing is dropped.
    assert np.all(_np(layer.compute_routing(x)["kept"]))


def test_overflow_of_second_choices_keeps_earlier_tokens_first_choices():
    # Every token: first choice expert 0, second choice expert 1.
    layer = MoE(num_experts=E, expert_dim=F, top_k=2, capacity_factor=0.5)
    _one_hot_router(layer, E)
    x = np.zeros((1, 8, E), "float32")
    x[..., 0], x[..., 1] = 1.0, 0.5
    routing = layer.compute_routing(x, training=True)
    capacity = routing["capacity"]  # ceil(0.5·8·2/4) = 2
    assert capacity == 2
    kept = _np(routing["kept"])[0]
    np.testing.assert_array_equal(_np(routing["expert_index"])[0, 0], [0, 1])
    np.testing.assert_array_equal(kept[:, 0], [True, True] + [False] * 6)
    np.testing.assert_array_equal(kept[:, 1], [True, True] + [False] * 6)


def _tokens_to_experts(experts):
    """`(1, len(experts), E)` inputs that the one-hot router sends to `experts`."""
    x = np.zeros((1, len(experts), E), "float32")
    x[0, np.arange(len(experts)), experts] = 1.0
    return x + np.random.default_rng(5).normal(scale=0.01, size=x.shape).astype("float32")


def _top_1_by_hand(layer, x):
    probabilities, _ = _router_probabilities(layer, x)
    chosen = probabilities.argmax(-1)
    outputs = np.take_along_axis(_experts(layer, x), chosen[..., None, None], axis=2)[:, :, 0]
    return outputs * probabilities.max(-1, keepdims=True)


def test_capacity_chunks_grow_by_half_from_the_mean_load():
    # No dropping (capacity = tokens): 4,096 tokens, 64 experts, top-2, mean load 128.
    layer = MoE(num_experts=64, expert_dim=F, top_k=2)
    bounds = [128 * 1.5**j for j in range(1, 9)]  # 1.5⁸ = 25.6 < 64 / 2 ≤ 1.5⁹
    expected = [0, *(int(np.ceil(b)) for b in bounds), 4096]
    assert layer._chunk_bounds(4096, 4096, training=False) == list(
        zip(expected[:-1], expected[1:])
    )
    # The default training capacity (1.25 × the mean load) is one chunk.
    assert layer._chunk_bounds(4096, 160, training=True) == [(0, 160)]
    # A dynamic token count gives as many chunks, as tensors.
    dynamic = layer._chunk_bounds(
        ops.convert_to_tensor(4096), ops.convert_to_tensor(4096), training=False
    )
    assert [(int(lo), int(hi)) for lo, hi in dynamic] == list(zip(expected[:-1], expected[1:]))


@pytest.mark.parametrize(
    "experts, chunks_run",
    [
        ([0, 1, 2, 3] * 6, [(0, 9)]),  # balanced: 6 each, within the first chunk
        ([0] * 10 + [1, 2, 3] * 4 + [1, 2], [(0, 9), (9, 14)]),  # busiest: 10
        ([0] * 24, [(0, 9), (9, 14), (14, 21), (21, 24)]),  # all to one expert
    ],
)
@tensorflow_only  # counts the branches run eagerly; JAX's eager `cond` traces both
def test_inference_runs_only_the_chunks_the_busiest_expert_reaches(experts, chunks_run):
    # 24 tokens, top-1 over 4 experts, no dropping: mean load 6, chunks
    # [0, 9), [9, 14), [14, 21), [21, 24) (1.5, 2.25 and 3.375 × the mean).
    layer = MoE(num_experts=E, expert_dim=F, top_k=1)
    _one_hot_router(layer, E)
    x = _tokens_to_experts(experts)
    assert layer._chunk_bounds(24, 24, training=False) == [(0, 9), (9, 14), (14, 21), (21, 24)]
    run_chunk, seen = layer._run_chunk, []

    def recording(padded_tokens, token_index, routing, lo, hi, training):
        seen.append((int(lo), int(hi)))
        return run_chunk(padded_tokens, token_index, routing, lo, hi, training)

    layer._run_chunk = recording
    out = _np(layer(x))  # eager: `cond` runs one branch
    del layer._run_chunk
    assert seen == chunks_run
    np.testing.assert_allclose(out, _top_1_by_hand(layer, x), atol=1e-5)
    # Compiled, with the token count unknown when traced: the same outputs.
    import tensorflow as tf

    compiled = tf.function(
        lambda x: layer(x), jit_compile=True, input_signature=[tf.TensorSpec((None, None, E))]
    )
    np.testing.assert_allclose(_np(compiled(x)), out, atol=1e-5)


def test_gradients_through_several_chunks_equal_the_dense_mixture():
    # 24 tokens, top-2, capacity_factor=4 in training: capacity 24 (every
    # token), chunks [0, 18) and [18, 24); expert 0's load of 20 runs both.
    layer = MoE(num_experts=E, expert_dim=F, top_k=2, capacity_factor=4.0)
    _one_hot_router(layer, E)
    x = _tokens_to_experts([0] * 20 + [1, 2, 3, 1])
    assert layer._chunk_bounds(24, 24, training=True) == [(0, 18), (18, 24)]

    def dense_mixture(x):
        # Every expert on every token, weighted by the renormalized top-2 gates.
        probabilities = ops.softmax(ops.einsum("btd,de->bte", x, layer.router_kernel))
        top, _ = ops.top_k(probabilities, 2)
        gates = ops.where(probabilities >= top[..., -1:], probabilities, 0.0)
        gates = gates / ops.sum(gates, -1, keepdims=True)
        hidden = ops.relu(ops.einsum("btd,edf->btef", x, layer.inner_kernel) + layer.inner_bias)
        outputs = ops.einsum("btef,efd->bted", hidden, layer.output_kernel) + layer.output_bias
        return ops.einsum("bte,bted->btd", gates, outputs)

    def layer_gradients(function, **kwargs):
        return gradients(
            lambda x: ops.sum(function(x) ** 2), layer.trainable_variables, [x], **kwargs
        )[1]

    expected = layer_gradients(dense_mixture)
    eager = layer_gradients(lambda x: layer(x, training=True))
    compiled = layer_gradients(lambda x: layer(x, training=True), compile=True)
    for name, want, got, got_compiled in zip(
        [w.name for w in layer.trainable_weights], expected, eager, compiled
    ):
        np.testing.assert_allclose(_np(got), _np(want), atol=1e-4, err_msg=name)
        np.testing.assert_allclose(_np(got_compiled), _np(want), atol=1e-4, err_msg=name)


def test_aux_and_z_losses_equal_the_formulas_and_only_in_training():
    layer = MoE(num_experts=E, expert_dim=F, top_k=2, aux_loss_weight=0.5, z_loss_weight=0.25)
    layer(X)
    routing = layer.compute_routing(X, padding_mask=MASK)
    probabilities, logits_shifted = _router_probabilities(layer, X)
    real = MASK.reshape(-1)
    probabilities = probabilities.reshape(-1, E)[real]
    chosen = np.argsort(-probabilities, -1)[:, :2]
    fraction = np.bincount(chosen.reshape(-1), minlength=E) / (real.sum() * 2)
    aux = E * np.sum(fraction * probabilities.mean(0))
    logits = (X @ _np(layer.router_kernel)).reshape(-1, E)[real]
    z = np.mean(np.log(np.exp(logits).sum(-1)) ** 2)
    np.testing.assert_allclose(_np(routing["aux_loss"]), aux, rtol=1e-5)
    np.testing.assert_allclose(_np(routing["z_loss"]), z, rtol=1e-5)
    # A uniform router gives exactly 1.0 whatever the assignment.
    uniform = MoE(num_experts=E, expert_dim=F, top_k=2)
    uniform(X)
    uniform.router_kernel.assign(np.zeros((D, E), "float32"))
    np.testing.assert_allclose(_np(uniform.compute_routing(X)["aux_loss"]), 1.0, rtol=1e-6)

    layer(X, padding_mask=MASK, training=True)
    assert len(layer.losses) == 1
    np.testing.assert_allclose(_np(layer.losses[0]), 0.5 * aux + 0.25 * z, rtol=1e-5)
    layer(X, padding_mask=MASK, training=False)
    assert layer.losses == []


def test_fit_reports_the_aux_loss_and_routing_statistics():
    inputs = keras.Input((T, D))
    moe = MoE(num_experts=E, expert_dim=F, aux_loss_weight=1.0, z_loss_weight=0.0, name="moe")
    # The task loss is exactly 0: whatever fit reports is the aux loss.
    output = keras.layers.Lambda(lambda y: y * 0.0)(moe(inputs))
    model = keras.Model(inputs, output)
    model.compile(optimizer="sgd", loss="mse", jit_compile=True)
    history = model.fit(X, np.zeros_like(X), epochs=1, verbose=0)
    assert history.history["loss"][0] > 0.5  # the balance loss is ~1
    assert model.evaluate(X, np.zeros_like(X), verbose=0, return_dict=True)["loss"] == 0.0
    if BACKEND == "jax":
        return  # JAX's trainer updates no metric from inside `call` (see MoE)
    assert 0.0 <= history.history["moe_routing_dropped"][0] < 1.0
    max_load = history.history["moe_routing_max_load"][0]
    assert E >= max_load >= 1.0  # 1.0 = balanced, E = one expert takes everything
    load = _np(moe.routing_statistics.expert_load())
    np.testing.assert_allclose(load.sum(), 1.0, atol=1e-6)


def test_padding_is_not_routed_outputs_zero_and_is_not_counted():
    layer = MoE(num_experts=E, expert_dim=F, top_k=2)
    routing = layer.compute_routing(X, padding_mask=MASK, training=True)
    assert not np.any(_np(routing["kept"])[~MASK])
    out = _np(layer(X, padding_mask=MASK))
    assert np.all(out[~MASK] == 0.0)
    # The real tokens' losses are those of the real tokens alone.
    alone = layer.compute_routing(X[1:, :4])
    both = layer.compute_routing(
        np.concatenate([X[1:], X[1:]]), padding_mask=np.array([MASK[1], [False] * T])
    )
    np.testing.assert_allclose(_np(both["aux_loss"]), _np(alone["aux_loss"]), rtol=1e-5)
    # Changing padded tokens changes nothing real, in training too.
    noisy = np.where(MASK[..., None], X, 9.0).astype("float32")
    layer_t = MoE(num_experts=E, expert_dim=F, top_k=2, capacity_factor=0.5)
    a = _np(layer_t(X, padding_mask=MASK, training=True))
    b = _np(layer_t(noisy, padding_mask=MASK, training=True))
    np.testing.assert_allclose(a[MASK], b[MASK], atol=1e-6)


def test_implicit_mask_equals_explicit():
    ids = np.where(MASK, 1, 0)
    x = keras.layers.Embedding(3, D, mask_zero=True)(ids)
    layer = MoE(num_experts=E, expert_dim=F)
    np.testing.assert_array_equal(_np(layer(x)), _np(layer(x, padding_mask=MASK)))


def _moe_language_model(vocab=20, length=T, dim=16):
    moe = {"num_experts": E, "top_k": 2, "capacity_factor": 0.5}
    ids = keras.Input((length,), dtype="int32")
    embedding = PositionalEmbedding(vocab, length, dim)
    blocks = [DecoderBlock(4, 32, dropout=0.0, moe=moe, name=f"block_{i}") for i in range(2)]
    head = keras.layers.Dense(vocab)
    x = embedding(ids)
    for block in blocks:
        x = block(x)
    return keras.Model(ids, head(x)), embedding, blocks, head


def test_decoder_only_moe_model_has_no_causal_leakage_even_when_dropping():
    model, *_ = _moe_language_model()
    ids = np.random.default_rng(3).integers(1, 20, size=(4, T))
    for training in (False, True):  # training: tight capacity drops tokens
        for t in range(T - 1):
            changed = ids.copy()
            changed[:, t + 1 :] = (changed[:, t + 1 :] + 7) % 19 + 1
            a, b = _np(model(ids, training=training)), _np(model(changed, training=training))
            np.testing.assert_allclose(a[:, : t + 1], b[:, : t + 1], atol=1e-5)


def test_decoder_only_moe_cached_decoding_equals_the_full_pass():
    model, embedding, blocks, head = _moe_language_model()
    ids = np.random.default_rng(4).integers(1, 20, size=(3, T))
    full = _np(model(ids))
    caches = [block.initial_self_attention_cache(3, T) for block in blocks]
    steps = []
    for t in range(T):
        x = embedding(ids[:, t : t + 1], start_index=t)
        for i, block in enumerate(blocks):
            x, caches[i] = block(x, self_attention_cache=caches[i], self_attention_cache_index=t)
        steps.append(_np(head(x)))
    np.testing.assert_allclose(np.concatenate(steps, 1), full, atol=1e-4)


def test_blocks_with_moe_save_load_and_name_their_statistics(tmp_path):
    model, *_ = _moe_language_model()
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  jit_compile=True)
    ids = np.random.default_rng(5).integers(1, 20, size=(8, T))
    history = model.fit(ids, ids, epochs=1, verbose=0)
    assert {"block_0_moe_routing_dropped", "block_1_moe_routing_max_load"} <= set(history.history)
    path = str(tmp_path / "moe_lm.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    np.testing.assert_allclose(_np(restored(ids)), _np(model(ids)), atol=1e-6)
    encoder = EncoderBlock(4, 32, moe={"num_experts": E}, name="encoder")
    x = X.repeat(2, -1)  # width 16
    assert tuple(encoder(x).shape) == x.shape
    routing = [m for m in encoder.metrics if isinstance(m, RoutingStatistics)]
    assert [m.name for m in routing] == ["encoder_moe_routing"]
    assert EncoderBlock.from_config(encoder.get_config()).moe == {"num_experts": E}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"top_k": 5}, "top_k=5, num_experts=4"),
        ({"top_k": 0}, "top_k=0"),
        ({"capacity_factor": 0.0}, "capacity_factor=0.0"),
        ({"capacity_factor": -1}, "capacity_factor=-1"),
        ({"eval_capacity_factor": 0}, "eval_capacity_factor=0"),
        ({"router_jitter": 1.5}, "router_jitter=1.5"),
    ],
)
def test_bad_configuration_is_a_clear_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MoE(num_experts=E, expert_dim=F, **kwargs)


def test_bad_moe_argument_of_a_block():
    with pytest.raises(ValueError, match="num_experts"):
        EncoderBlock(4, 32, moe={"top_k": 2})


def test_common_layer_checks(tmp_path):
    run_layer_checks(
        MoE,
        {"num_experts": E, "expert_dim": F, "top_k": 2, "router_jitter": 0.1, "dropout": 0.1},
        {"inputs": X},
        expected_trainable_weights=5,
        expected_non_trainable_weights=0,
        tmp_path=tmp_path,
    )


def test_each_thread_reads_back_only_the_losses_its_own_call_added():
    # The interleaving MirroredStrategy's replica threads go through: thread 1
    # calls the layer between thread 0's call and thread 0's read of `losses`.
    layer = MoE(num_experts=E, expert_dim=F, top_k=2, aux_loss_weight=1.0, z_loss_weight=0.0)
    layer(X)
    first_called, second_done = threading.Event(), threading.Event()
    seen = {}

    def replica(index, rows):
        if index == 1:
            first_called.wait(10)
        layer(X[rows], training=True)
        if index == 0:
            first_called.set()
            second_done.wait(10)
        seen[index] = [float(_np(loss)) for loss in layer.losses]
        if index == 1:
            second_done.set()

    threads = [threading.Thread(target=replica, args=(0, slice(0, 1))),
               threading.Thread(target=replica, args=(1, slice(1, 2)))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    expected = [float(_np(layer.compute_routing(X[rows])["aux_loss"]))
                for rows in (slice(0, 1), slice(1, 2))]
    assert expected[0] != pytest.approx(expected[1])
    assert seen == {0: [pytest.approx(expected[0], rel=1e-5)],
                    1: [pytest.approx(expected[1], rel=1e-5)]}
    assert layer.losses == []  # this thread added none
