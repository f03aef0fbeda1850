import numpy as np
import pytest

import keras
from keras import ops

from keras_transformer import DecoderBlock
from tests import backend
from tests.layer_checks import run_layer_checks
from tests.reference_blocks import hub_decoder_like

# Runs under every Keras backend (CI: TensorFlow, then JAX); see tests/conftest.py.
pytestmark = pytest.mark.backend_neutral

B, T, S, D = 2, 5, 7, 16
rng = np.random.default_rng(0)
TARGET = rng.normal(size=(B, T, D)).astype("float32")
SOURCE = rng.normal(size=(B, S, D)).astype("float32")
# Target and source of different lengths, both padded at the end.
TARGET_MASK = np.array([[True] * T, [True] * 3 + [False] * 2])
SOURCE_MASK = np.array([[True] * S, [True] * 4 + [False] * 3])


def _np(x):
    return ops.convert_to_numpy(x)


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("with_encoder", [True, False])
def test_equals_keras_hub_decoder_with_the_same_weights(norm_first, with_encoder):
    ours = DecoderBlock(num_heads=4, ffn_dim=32, norm_first=norm_first)
    source = SOURCE if with_encoder else None
    theirs = hub_decoder_like(ours, TARGET, source)
    kwargs = {"decoder_padding_mask": TARGET_MASK}
    if with_encoder:
        kwargs["encoder_padding_mask"] = SOURCE_MASK
    np.testing.assert_allclose(
        _np(ours(TARGET, source, **kwargs))[TARGET_MASK],
        _np(theirs(TARGET, source, **kwargs))[TARGET_MASK],
        atol=1e-5,
    )


@pytest.mark.parametrize("with_encoder", [True, False])
def test_causal_leakage_with_dropout_and_attention_scores(with_encoder):
    block = DecoderBlock(num_heads=4, ffn_dim=32, dropout=0.5)
    source = SOURCE if with_encoder else None
    for t in range(T - 1):
        changed = TARGET.copy()
        changed[:, t + 1 :] = rng.normal(size=changed[:, t + 1 :].shape)
        out, scores = block(TARGET, source, return_attention_scores=True)
        out2, _ = block(changed, source, return_attention_scores=True, training=False)
        np.testing.assert_allclose(_np(out)[:, : t + 1], _np(out2)[:, : t + 1], atol=1e-5)
        assert not np.allclose(_np(out)[:, t + 1 :], _np(out2)[:, t + 1 :])
    future = np.triu(np.ones((T, T), bool), k=1)
    assert np.all(_np(scores["self_attention"])[:, :, future] == 0.0)
    assert ("cross_attention" in scores) == with_encoder


def test_padding_leakage_in_self_and_cross_attention():
    block = DecoderBlock(num_heads=4, ffn_dim=32)
    noisy_target = np.where(TARGET_MASK[..., None], TARGET, 50.0).astype("float32")
    noisy_source = np.where(SOURCE_MASK[..., None], SOURCE, -50.0).astype("float32")
    masks = {"decoder_padding_mask": TARGET_MASK, "encoder_padding_mask": SOURCE_MASK}
    clean = _np(block(TARGET, SOURCE, **masks))
    noisy = _np(block(noisy_target, noisy_source, **masks))
    np.testing.assert_allclose(clean[TARGET_MASK], noisy[TARGET_MASK], atol=1e-5)
    # Without the source mask the padded source tokens would leak in.
    leaky = _np(block(noisy_target, noisy_source, decoder_padding_mask=TARGET_MASK))
    assert not np.allclose(clean[TARGET_MASK], leaky[TARGET_MASK], atol=1e-3)


def test_implicit_keras_masks_equal_explicit_masks():
    target_ids = np.where(TARGET_MASK, np.arange(1, T + 1)[None], 0)
    source_ids = np.where(SOURCE_MASK, np.arange(1, S + 1)[None], 0)
    embedding = keras.layers.Embedding(10, D, mask_zero=True)
    target, source = embedding(target_ids), embedding(source_ids)
    block = DecoderBlock(num_heads=4, ffn_dim=32)
    explicit = _np(
        block(
            target,
            source,
            decoder_padding_mask=TARGET_MASK,
            encoder_padding_mask=SOURCE_MASK,
        )
    )
    np.testing.assert_array_equal(_np(block(target, source)), explicit)
    target_in = keras.Input((None,), dtype="int32")
    source_in = keras.Input((None,), dtype="int32")
    model = keras.Model(
        [target_in, source_in], block(embedding(target_in), embedding(source_in))
    )
    np.testing.assert_allclose(_np(model([target_ids, source_ids])), explicit, atol=1e-6)
    # Decoder-only: one tensor argument.
    alone = DecoderBlock(num_heads=4, ffn_dim=32)
    np.testing.assert_array_equal(
        _np(alone(target)), _np(alone(target, decoder_padding_mask=TARGET_MASK))
    )


def _full_and_cached(blocks, target, source, compiled):
    """Runs `blocks` over `target` at once and one step at a time with caches."""
    full = target
    for block in blocks:
        full = block(full, source)

    traces = []

    def step(x, index, self_caches, cross_caches):
        traces.append(1)
        new_self = []
        for block, self_cache, cross_cache in zip(blocks, self_caches, cross_caches):
            outputs = block(
                x,
                self_attention_cache=self_cache,
                self_attention_cache_index=index,
                cross_attention_cache=cross_cache,
            )
            x, self_cache = outputs[0], outputs[1]
            new_self.append(self_cache)
        return x, new_self

    if compiled:
        step = backend.compiled(step)
    self_caches = [block.initial_self_attention_cache(B, T) for block in blocks]
    if source is None:
        cross_caches = [None] * len(blocks)
    else:
        cross_caches = [block.compute_cross_attention_cache(source) for block in blocks]
    outputs = []
    for t in range(T):
        out, self_caches = step(
            target[:, t : t + 1], ops.convert_to_tensor(t, "int32"), self_caches, cross_caches
        )
        outputs.append(_np(out))
    return _np(full), np.concatenate(outputs, axis=1), len(traces)


@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("with_encoder", [True, False])
@pytest.mark.parametrize("norm_first", [False, True])
def test_cached_decoding_through_a_stack_equals_the_full_pass(
    compiled, with_encoder, norm_first
):
    blocks = [
        DecoderBlock(num_heads=4, ffn_dim=32, dropout=0.1, norm_first=norm_first)
        for _ in range(3)
    ]
    source = SOURCE if with_encoder else None
    full, cached, traces = _full_and_cached(blocks, TARGET, source, compiled)
    np.testing.assert_allclose(cached, full, atol=1e-4)
    if compiled and backend.BACKEND in ("tensorflow", "jax"):
        assert traces == 1  # one compiled step for every position


def test_first_cached_step_computes_the_cross_attention_cache():
    block = DecoderBlock(num_heads=4, ffn_dim=32)
    block(TARGET, SOURCE)
    cache = block.initial_self_attention_cache(B, T)
    out, self_cache, cross_cache = block(
        TARGET[:, :1], SOURCE, self_attention_cache=cache, self_attention_cache_index=0
    )
    np.testing.assert_allclose(
        _np(cross_cache), _np(block.compute_cross_attention_cache(SOURCE)), atol=1e-6
    )
    np.testing.assert_allclose(_np(out), _np(block(TARGET, SOURCE))[:, :1], atol=1e-5)


def test_cross_attention_presence_must_match_how_the_block_was_built():
    with_encoder = DecoderBlock(num_heads=4, ffn_dim=32)
    with_encoder(TARGET, SOURCE)
    assert with_encoder.has_cross_attention
    with pytest.raises(ValueError, match="built with an encoder.*called with no"):
        with_encoder(TARGET)
    alone = DecoderBlock(num_heads=4, ffn_dim=32)
    alone(TARGET)
    assert not alone.has_cross_attention
    with pytest.raises(ValueError, match="built without an encoder.*called with an"):
        alone(TARGET, SOURCE)
    with pytest.raises(ValueError, match="has no cross-attention"):
        alone.compute_cross_attention_cache(SOURCE)


def test_symbolic_outputs_with_caches_and_scores():
    block = DecoderBlock(num_heads=4, ffn_dim=32)
    target = keras.Input((1, D), batch_size=B)
    source = keras.Input((S, D), batch_size=B)
    cache = keras.Input((2, T, 4, 4), batch_size=B)
    out, self_cache, cross_cache, scores = block(
        target,
        source,
        self_attention_cache=cache,
        self_attention_cache_index=0,
        return_attention_scores=True,
    )
    assert tuple(out.shape) == (B, 1, D)
    assert tuple(self_cache.shape) == (B, 2, T, 4, 4)
    assert tuple(cross_cache.shape) == (B, 2, S, 4, 4)
    assert tuple(scores["self_attention"].shape) == (B, 4, 1, T)
    assert tuple(scores["cross_attention"].shape) == (B, 4, 1, S)


@pytest.mark.parametrize("with_encoder", [True, False])
def test_common_layer_checks(tmp_path, with_encoder):
    inputs = {"decoder_sequence": TARGET}
    if with_encoder:
        inputs["encoder_sequence"] = SOURCE
    run_layer_checks(
        DecoderBlock,
        {"num_heads": 4, "ffn_dim": 32},
        inputs,
        # 8 per attention + 4 feed-forward + 2 per layer norm.
        expected_trainable_weights=26 if with_encoder else 16,
        tmp_path=tmp_path,
    )
