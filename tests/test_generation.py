"""Cached searches against the uncached reference, beam search, sampling."""

import numpy as np
import pytest
import tensorflow as tf

from keras_transformer.data.tokenizers import END_ID, START_ID
from keras_transformer.generation import (
    CausalLMStepper,
    EncoderDecoderStepper,
    beam_search,
    filter_logits,
    greedy_search,
    greedy_translate,
    length_penalty,
    sample,
)
from keras_transformer.models import TransformerConfig, build_causal_lm, build_transformer

MAX_LENGTH = 12


def small_config(**overrides):
    values = dict(vocab_size=23, source_vocab_size=19, max_length=16, embed_dim=32, num_heads=4,
                  ffn_dim=64, num_encoder_layers=2, num_decoder_layers=2, dropout=0.1)
    values.update(overrides)
    return TransformerConfig(**values)


def source_batch():
    rng = np.random.default_rng(0)
    ids = rng.integers(4, 19, size=(5, 9)).astype("int32")
    for row, length in enumerate([9, 3, 6, 1, 7]):  # different lengths, padded
        ids[row, length:] = 0
    return ids


def padded(ids, width):
    ids = np.asarray(ids)
    return np.pad(ids, ((0, 0), (0, width - ids.shape[1])))


def sequence_log_prob(model, source, generated):
    """log p(generated | source) from one teacher-forced pass (up to [END])."""
    target_in = np.concatenate([np.full((len(source), 1), START_ID), generated[:, :-1]], 1)
    log_probs = tf.nn.log_softmax(model([source, target_in.astype("int32")])).numpy()
    totals = []
    for row, tokens in enumerate(generated):
        total = 0.0
        for t, token in enumerate(tokens):
            total += log_probs[row, t, token]
            if token == END_ID:
                break
        totals.append(total)
    return np.array(totals)


@pytest.fixture(scope="module", params=[False, True], ids=["post-LN", "pre-LN"])
def model(request):
    tf.random.set_seed(1)
    return build_transformer(small_config(norm_first=request.param, tie_embeddings=False))


@pytest.mark.parametrize("jit_compile", [False, True], ids=["eager-graph", "xla"])
def test_cached_greedy_equals_uncached_greedy(model, jit_compile):
    source = source_batch()
    stepper = EncoderDecoderStepper(model)

    @tf.function(jit_compile=jit_compile)
    def run(source):
        state = stepper.initial_state(source, MAX_LENGTH)
        return greedy_search(stepper, state, tf.fill([5], START_ID), MAX_LENGTH)

    cached, scores = run(tf.constant(source))
    reference = greedy_translate(model, source, MAX_LENGTH)
    np.testing.assert_array_equal(cached.numpy(), padded(reference, MAX_LENGTH))
    # The scores are the model's log-probabilities of those tokens.
    np.testing.assert_allclose(scores.numpy(), sequence_log_prob(model, source, cached.numpy()),
                               atol=1e-4)


def test_beam_size_one_is_greedy(model):
    source = tf.constant(source_batch())
    stepper = EncoderDecoderStepper(model)
    state = stepper.initial_state(source, MAX_LENGTH)
    first = tf.fill([5], START_ID)
    greedy, greedy_scores = greedy_search(stepper, state, first, MAX_LENGTH)
    beam, beam_scores = beam_search(stepper, state, first, MAX_LENGTH, beam_size=1, alpha=0.0)
    np.testing.assert_array_equal(beam.numpy(), greedy.numpy())
    np.testing.assert_allclose(beam_scores.numpy(), greedy_scores.numpy(), atol=1e-5)


@pytest.fixture(scope="module")
def trained_model():
    """A small model trained for a few seconds to copy its source backwards.

    Beam search is only guaranteed to beat greedy where the model is
    confident somewhere; an untrained model's near-uniform steps are the one
    case where pruning can drop the greedy path.
    """
    import keras

    from keras_transformer.training import MaskedSparseCategoricalCrossentropy

    keras.utils.set_random_seed(3)
    model = build_transformer(small_config(dropout=0.0))
    rng = np.random.default_rng(3)
    source = rng.integers(4, 19, size=(2048, 6)).astype("int32")
    labels = np.concatenate([source[:, ::-1], np.full((2048, 1), END_ID)], 1).astype("int32")
    target_in = np.concatenate([np.full((2048, 1), START_ID), labels[:, :-1]], 1)
    model.compile(optimizer=keras.optimizers.Adam(3e-3),
                  loss=MaskedSparseCategoricalCrossentropy())
    model.fit([source, target_in.astype("int32")], labels, batch_size=64, epochs=2, verbose=0)
    return model


def test_beam_search_finds_a_sequence_at_least_as_likely_as_greedy(trained_model):
    source = source_batch()
    stepper = EncoderDecoderStepper(trained_model)
    state = stepper.initial_state(tf.constant(source), MAX_LENGTH)
    first = tf.fill([5], START_ID)
    _, greedy_scores = greedy_search(stepper, state, first, MAX_LENGTH)
    beam, beam_scores = beam_search(stepper, state, first, MAX_LENGTH, beam_size=4, alpha=0.0)
    assert np.all(beam_scores.numpy() >= greedy_scores.numpy() - 1e-5)
    assert np.any(beam_scores.numpy() > greedy_scores.numpy() + 1e-3)  # it does search
    # The reported score is the model's log-probability of the returned sequence.
    np.testing.assert_allclose(beam_scores.numpy(),
                               sequence_log_prob(trained_model, source, beam.numpy()),
                               atol=1e-4)


def test_seeded_sampling_reproduces_and_top_k_one_is_greedy(model):
    source = tf.constant(source_batch())
    stepper = EncoderDecoderStepper(model)
    state = stepper.initial_state(source, MAX_LENGTH)
    first = tf.fill([5], START_ID)
    a, _ = sample(stepper, state, first, MAX_LENGTH, temperature=1.5, seed=7)
    b, _ = sample(stepper, state, first, MAX_LENGTH, temperature=1.5, seed=7)
    c, _ = sample(stepper, state, first, MAX_LENGTH, temperature=1.5, seed=8)
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert not np.array_equal(a.numpy(), c.numpy())
    greedy, _ = greedy_search(stepper, state, first, MAX_LENGTH)
    top1, _ = sample(stepper, state, first, MAX_LENGTH, top_k=1, seed=3)
    np.testing.assert_array_equal(top1.numpy(), greedy.numpy())
    with pytest.raises(ValueError, match="temperature"):
        sample(stepper, state, first, MAX_LENGTH, temperature=0.0)


def test_filter_logits_top_k_and_top_p_exact():
    logits = tf.math.log(tf.constant([[0.5, 0.3, 0.15, 0.05]]))
    top2 = filter_logits(logits, top_k=2).numpy()
    assert np.all(top2[0, 2:] == -1e9) and np.all(top2[0, :2] > -10)
    # Nucleus 0.7: 0.5 + 0.3 reaches it, so the first two stay.
    nucleus = filter_logits(logits, top_p=0.7).numpy()
    np.testing.assert_array_equal(nucleus[0] > -1e8, [True, True, False, False])
    # A tiny nucleus still keeps the most probable token.
    np.testing.assert_array_equal(filter_logits(logits, top_p=0.01).numpy()[0] > -1e8,
                                  [True, False, False, False])
    np.testing.assert_allclose(filter_logits(logits, temperature=2.0), logits / 2.0)


def test_length_penalty_is_gnmt():
    np.testing.assert_allclose(length_penalty(tf.constant([1, 7]), 0.6).numpy(),
                               [1.0, 2.0**0.6], rtol=1e-6)


def test_causal_lm_cached_generation_with_prompts_equals_full_recompute():
    tf.random.set_seed(2)
    config = small_config(num_encoder_layers=0, norm_first=True, vocab_size=29)
    model = build_causal_lm(config)
    prompts = np.array([[5, 9, 11, 0], [7, 0, 0, 0], [4, 4, 6, 8]], "int32")
    lengths = np.array([3, 1, 4], "int32")
    stepper = CausalLMStepper(model)
    state = stepper.initial_state(3, MAX_LENGTH + 1)
    ids, _ = greedy_search(stepper, state, tf.constant(prompts[:, 0]), MAX_LENGTH,
                           forced_ids=tf.constant(prompts), forced_lengths=tf.constant(lengths))
    ids = ids.numpy()
    for row in range(3):
        sequence = list(prompts[row, : lengths[row]])
        while len(sequence) < MAX_LENGTH + 1:
            logits = model(np.array([sequence], "int32"))
            token = int(np.argmax(logits[0, -1]))
            sequence.append(token)
            if token == END_ID:
                break
        expected = padded([sequence[1:]], MAX_LENGTH)[0]
        np.testing.assert_array_equal(ids[row], expected)


def test_text_generator_greedy_matches_full_recompute_and_exports(tmp_path):
    import keras_hub

    from keras_transformer.export import export_saved_model
    from keras_transformer.generation import TextGenerator

    tf.random.set_seed(4)
    tokenizer = keras_hub.tokenizers.UnicodeCodepointTokenizer(
        vocabulary_size=128, lowercase=False, replacement_char=127)
    config = small_config(num_encoder_layers=0, norm_first=True, vocab_size=128, max_length=16)
    model = build_causal_lm(config)
    greedy = TextGenerator(model, tokenizer, max_length=10, temperature=0.0)
    prompts = ["To be", "O", "a very long prompt, longer than the window"]
    out = greedy.generate(tf.constant(prompts), tf.constant(0))
    for row, prompt in enumerate(prompts):
        ids = list(np.asarray(tokenizer(prompt)))[-9:]
        sequence = list(ids)
        while len(sequence) < 10:
            sequence.append(int(np.argmax(model(np.array([sequence], "int32"))[0, -1])))
        assert out["text"][row].numpy().decode() == tokenizer.detokenize(
            np.array(sequence, "int32"))
    with pytest.raises(tf.errors.InvalidArgumentError, match="empty prompt"):
        greedy.generate(tf.constant(["fine", ""]), tf.constant(0))

    sampler = TextGenerator(model, tokenizer, max_length=10, temperature=1.0, top_k=5)
    first = sampler.generate(tf.constant(prompts), tf.constant(3))["text"].numpy()
    again = sampler.generate(tf.constant(prompts), tf.constant(3))["text"].numpy()
    np.testing.assert_array_equal(first, again)
    path = export_saved_model(sampler, str(tmp_path / "lm"))
    served = tf.saved_model.load(path).signatures["generate"]
    np.testing.assert_array_equal(
        served(prompt=tf.constant(prompts), seed=tf.constant(3))["text"].numpy(), first)


def test_causal_lm_beam_search_with_prompts():
    tf.random.set_seed(5)
    model = build_causal_lm(small_config(num_encoder_layers=0, vocab_size=29))
    prompts = tf.constant([[5, 9, 11], [7, 0, 0]])
    lengths = tf.constant([3, 1])
    stepper = CausalLMStepper(model)
    state = stepper.initial_state(2, MAX_LENGTH + 1)
    kwargs = dict(forced_ids=prompts, forced_lengths=lengths)
    greedy, greedy_scores = greedy_search(stepper, state, prompts[:, 0], MAX_LENGTH, **kwargs)
    one, one_scores = beam_search(stepper, state, prompts[:, 0], MAX_LENGTH, beam_size=1,
                                  alpha=0.0, **kwargs)
    np.testing.assert_array_equal(one.numpy(), greedy.numpy())
    np.testing.assert_allclose(one_scores.numpy(), greedy_scores.numpy(), atol=1e-5)
    four, _ = beam_search(stepper, state, prompts[:, 0], MAX_LENGTH, beam_size=4, **kwargs)
    # The prompts are kept as they are, whatever the search.
    np.testing.assert_array_equal(four.numpy()[0, :2], [9, 11])


class _ScriptedStepper:
    """Fixed next-token distributions over a 6-token vocabulary: `[END]` (3) is
    likely after one token, while the other tokens never lead to an end."""

    def __init__(self):
        self.steps = 0

    def step(self, token_ids, index, state):
        self.steps += 1
        rows = tf.shape(token_ids)[0]
        after_start = tf.math.log([[1e-9, 1e-9, 1e-9, 1e-9, 0.6, 0.4]])
        after_4 = tf.math.log([[1e-9, 1e-9, 1e-9, 0.9, 0.05, 0.05]])
        after_5 = tf.math.log([[1e-9, 1e-9, 1e-9, 1e-9, 0.001, 0.999]])
        table = tf.concat([after_start, after_start, after_start, after_start, after_4,
                           after_5], 0)
        return tf.gather(table, token_ids) + 0.0 * tf.cast(rows, tf.float32), state

    def repeat(self, state, k):
        return state

    def gather(self, state, indices):
        return state


def test_beam_search_stops_once_no_going_beam_can_win():
    stepper = _ScriptedStepper()
    ids, scores = beam_search(stepper, {}, tf.constant([START_ID]), 30, beam_size=3, alpha=0.0)
    # "4 [END]" (p = 0.6 · 0.9) wins. "5 5 5 …" (p ≤ 0.4) never ends and stays
    # among the 3 best prefixes, but can only fall further: the search stops
    # long before 30 steps.
    assert ids.numpy()[0, :2].tolist() == [4, END_ID]
    np.testing.assert_allclose(scores.numpy(), [np.log(0.6 * 0.9)], rtol=1e-5)
    assert stepper.steps < 6
