"""Continuous batching: a pool of slots stepped together (`SlotDecoder`) and
the scheduler that admits requests between steps (`ContinuousBatcher`).

The reference is the whole search (`IdDecoder`) of each request alone: a
request's tokens must not depend on when it was admitted or what else is in
the pool."""

import numpy as np
import pytest

from keras_transformer.generation import DecodingConfig, IdDecoder
from keras_transformer.generation.scheduler import ContinuousBatcher, GenerationRequest
from keras_transformer.generation.search import filter_logits, filter_logits_per_row
from keras_transformer.generation.slots import SlotDecoder
from keras_transformer.models import TransformerConfig, build_causal_lm

# Runs under every Keras backend (CI: TensorFlow, then JAX); see tests/conftest.py.
pytestmark = pytest.mark.backend_neutral

MAX_LENGTH = 24
END = 3


@pytest.fixture(scope="module")
def model():
    config = TransformerConfig(vocab_size=40, max_length=MAX_LENGTH, embed_dim=16, num_heads=4,
                               ffn_dim=32, num_encoder_layers=0, num_decoder_layers=2,
                               dropout=0.0, norm_first=True, positions="rotary",
                               num_key_value_heads=2)
    model = build_causal_lm(config)
    rng = np.random.default_rng(1)
    for weight in model.weights:  # weights large enough that greedy output varies
        weight.assign(rng.normal(size=weight.shape).astype("float32") * 0.6)
    return model


PROMPTS = [[5, 6, 9], [4], [8, 3 + 4, 2 + 9, 11, 12, 1], [30, 31], [17, 18, 19, 20]]
NEW_TOKENS = [12, 20, 5, 17, 9]


def _alone(model, prompt, decoding):
    """The whole search's new tokens for `prompt` alone, up to (not with) the end id."""
    ids, _ = IdDecoder(model, MAX_LENGTH - 1, decoding)(np.array([prompt]),
                                                          np.array([len(prompt)]))
    new = ids[0][len(prompt) - 1:].tolist()
    return new[:new.index(END)] if END in new else new


def _run(model, requests, num_slots=2, steps_per_call=8, **kwargs):
    batcher = ContinuousBatcher(SlotDecoder(model, MAX_LENGTH, steps_per_call=steps_per_call),
                                num_slots, **kwargs)
    try:
        handles = [batcher.submit(request) for request in requests]
        return [handle.result(timeout=300) for handle in handles], batcher
    finally:
        batcher.close()


@pytest.mark.parametrize("steps_per_call", [1, 3])
def test_greedy_requests_admitted_between_steps_equal_each_search_alone(model, steps_per_call):
    # 3 tokens per call: budgets of 5, 9, 12, 17 and 20 tokens end inside a call.
    requests = [GenerationRequest(p, max_new_tokens=n) for p, n in zip(PROMPTS, NEW_TOKENS)]
    results, batcher = _run(model, requests, num_slots=2, steps_per_call=steps_per_call)
    outputs = []
    for prompt, new_tokens, result in zip(PROMPTS, NEW_TOKENS, results):
        expected = _alone(model, prompt, DecodingConfig("greedy"))
        room = MAX_LENGTH - len(prompt)
        expected = expected[:min(new_tokens, room)]
        assert result.token_ids == expected
        if len(expected) == min(new_tokens, room):
            assert result.finish_reason == "length"
        else:
            assert result.finish_reason == "end"
        outputs.append(result.token_ids)
    assert len({tuple(o) for o in outputs}) > 2, "the model's outputs should vary"
    # Five requests through two slots: fewer calls than one after another.
    assert batcher.steps < sum(-(-(len(r.token_ids) + 1) // steps_per_call) for r in results)


def test_length_groups_keep_short_requests_in_a_short_pool_and_change_no_token(model):
    # prompt + max_new_tokens: 15, 21, 11, 19, 13 positions; a bound of 14
    # puts the third and the fifth request in the first group.
    requests = [GenerationRequest(p, max_new_tokens=n) for p, n in zip(PROMPTS, NEW_TOKENS)]
    batcher = ContinuousBatcher(SlotDecoder(model, MAX_LENGTH, steps_per_call=3), 1,
                                group_lengths=[14])
    try:
        with batcher._wake:  # the idle thread cannot admit before every request is queued
            handles = [batcher.submit(request) for request in requests]
            assert [group.waiting.qsize() for group in batcher._groups] == [2, 3]
        results = [handle.result(timeout=300) for handle in handles]
    finally:
        batcher.close()
    for prompt, new_tokens, result in zip(PROMPTS, NEW_TOKENS, results):
        expected = _alone(model, prompt, DecodingConfig("greedy"))
        assert result.token_ids == expected[:min(new_tokens, MAX_LENGTH - len(prompt))]
    assert batcher._groups[0].length <= 16  # the short group's pool never held 24 positions


@pytest.mark.parametrize("group_lengths, expected", [
    ("auto", [8, MAX_LENGTH]),  # the longest of lengths 8, 16, 24 up to 12
    (None, [MAX_LENGTH]),
    ([6, 12], [6, 12, MAX_LENGTH]),
])
def test_length_group_bounds(model, group_lengths, expected):
    batcher = ContinuousBatcher(SlotDecoder(model, MAX_LENGTH), 1, group_lengths=group_lengths)
    batcher.close()
    assert batcher.group_lengths == expected


@pytest.mark.parametrize("group_lengths", [[12, 6], [MAX_LENGTH], [0], "short"])
def test_bad_length_groups_are_refused(model, group_lengths):
    with pytest.raises(ValueError, match="group_lengths"):
        ContinuousBatcher(SlotDecoder(model, MAX_LENGTH), 1, group_lengths=group_lengths)


def test_sampled_requests_draw_what_each_search_alone_draws(model):
    settings = [dict(temperature=0.9, top_k=0, top_p=1.0, seed=7),
                dict(temperature=1.3, top_k=5, top_p=1.0, seed=1),
                dict(temperature=1.0, top_k=0, top_p=0.8, seed=2)]
    requests = [GenerationRequest(PROMPTS[i], max_new_tokens=15, greedy=False, **s)
                for i, s in enumerate(settings)]
    results, _ = _run(model, requests, num_slots=3)
    for prompt, setting, result in zip(PROMPTS, settings, results):
        expected = _alone(model, prompt, DecodingConfig("sample", **setting))
        assert result.token_ids == expected[:15]
    # The same request beside other neighbours draws the same tokens.
    again, _ = _run(model, [GenerationRequest(PROMPTS[4], max_new_tokens=4)] + requests[1:2],
                    num_slots=2)
    assert again[1].token_ids == results[1].token_ids


def _letters(rows):
    return ["".join(chr(ord("a") + token % 26) for token in row) for row in rows]


def test_stop_strings_cut_the_text_and_the_streamed_text_adds_up(model):
    free, _ = _run(model, [GenerationRequest(PROMPTS[1], max_new_tokens=20)],
                   detokenize=_letters)
    text = free[0].text
    assert len(text) >= 4
    stop = text[2:4]  # a two-character stop string, met after the second token
    pieces = []
    results, _ = _run(model, [GenerationRequest(
        PROMPTS[1], max_new_tokens=20, stop=[stop, "@@"],
        on_token=lambda token, text: pieces.append(text))], detokenize=_letters)
    assert results[0].finish_reason == "stop"
    assert results[0].text == text[:text.find(stop)]
    assert "".join(pieces) == results[0].text
    with pytest.raises(ValueError, match="Stop strings need text"):
        _run(model, [GenerationRequest(PROMPTS[1], stop=["x"])])


def test_a_cancelled_request_frees_its_slot(model):
    batcher = ContinuousBatcher(SlotDecoder(model, MAX_LENGTH), 1)
    try:
        handles = []  # the first request cancels itself after its first token
        request = GenerationRequest([4], max_new_tokens=20,
                                    on_token=lambda token, text: handles[0].cancel())
        with batcher._wake:  # the idle thread cannot step before `handles` holds it
            handles.append(batcher.submit(request))
        first = handles[0]
        second = batcher.submit(GenerationRequest([5, 6], max_new_tokens=3))
        assert first.result(timeout=300).finish_reason == "cancelled"
        assert len(first.result().token_ids) <= 2  # cancelled during token 1, seen at step 2
        assert len(second.result(timeout=300).token_ids) <= 3
    finally:
        batcher.close()


class _FailingDecoder:
    """A decoder whose step fails (a backend error inside a compiled call)."""

    max_length, lengths, steps_per_call = 8, [8], 1
    special_ids = None

    def initial_pool(self, rows, length):
        return {}

    def resize(self, pool, rows, length):
        return pool

    def prefill(self, pool, slot, prompt_ids):
        return pool

    def step(self, pool, tokens, positions, settings):
        raise RuntimeError("the step failed")


def test_a_batcher_whose_thread_failed_refuses_new_requests():
    batcher = ContinuousBatcher(_FailingDecoder(), 2, end_id=3)
    try:
        handle = batcher.submit(GenerationRequest([4], max_new_tokens=2))
        with pytest.raises(RuntimeError, match="the step failed"):
            handle.result(timeout=60)
        batcher._thread.join(60)
        with pytest.raises(RuntimeError, match="stopped on an error.*the step failed"):
            batcher.submit(GenerationRequest([4], max_new_tokens=2))
    finally:
        batcher.close()


def test_requests_are_checked():
    with pytest.raises(ValueError, match="empty prompt"):
        GenerationRequest([])
    with pytest.raises(ValueError, match="top_p"):
        GenerationRequest([1], top_p=0)
    with pytest.raises(ValueError, match="`stop` must be non-empty"):
        GenerationRequest([1], stop=[""])


def test_a_prompt_that_fills_the_slot_is_refused(model):
    batcher = ContinuousBatcher(SlotDecoder(model, MAX_LENGTH), 1)
    try:
        with pytest.raises(ValueError, match="prompts must be shorter"):
            batcher.submit(GenerationRequest([4] * MAX_LENGTH))
    finally:
        batcher.close()


class _ScalarIndexOnly:
    """A protocol model of its own that steps one position per batch."""

    max_length = 8

    def initial_cache(self, batch_size, max_length, encoded=None):
        return {}

    def call_with_cache(self, token_ids, cache, index):
        raise AssertionError("not called")


def test_a_model_with_a_scalar_index_only_is_refused_with_the_way_out():
    with pytest.raises(ValueError, match="whole-request batching"):
        SlotDecoder(_ScalarIndexOnly(), 8)


def test_filter_logits_per_row_equals_each_rows_filter():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 30)).astype("float32") * 3
    temperature = np.array([1.0, 0.7, 1.5, 1.0], "float32")
    top_k = np.array([0, 5, 0, 3], "int32")
    top_p = np.array([1.0, 1.0, 0.6, 0.9], "float32")
    together = np.asarray(filter_logits_per_row(logits, temperature, top_k, top_p))
    for row in range(4):
        alone = filter_logits(logits[row:row + 1], float(temperature[row]), int(top_k[row]),
                              float(top_p[row]))
        np.testing.assert_allclose(together[row], np.asarray(alone)[0], rtol=1e-6)
