"""Greedy search, sampling and beam search over a stepper, in one `tf.while_loop`.

Every search runs the whole generation as one loop over static-shape
buffers, so `tf.function(jit_compile=True)` compiles it once (for a batch
shape) and it exports to a SavedModel. The loop stops as soon as every row
has produced `[END]` (or after `max_length` steps).

Shared arguments:
    stepper: an `EncoderDecoderStepper` or `CausalLMStepper`.
    state: `stepper.initial_state(...)` for the batch.
    first_ids: `(B,)` int, the token at position 0 (`[START]`, or a prompt's
        first token).
    max_length: int, the number of positions after position 0 to fill.
    forced_ids: optional `(B, P)` int prompt (position 0 included); row `b`
        is copied for its first `forced_lengths[b]` positions instead of
        being chosen (teacher forcing through the cache).
    forced_lengths: `(B,)` int, each prompt's length (≥ 1).

`[PAD]` is never chosen (it is not a token a model should emit; a `[PAD]`
mid-sequence would be read as padding by a full pass, so the cached and the
full-pass decoders would part ways after it).

Outputs are `(ids, scores)`: `ids` `(B, max_length)` int32, the tokens for
positions 1..max_length (prompt tokens included), `[PAD]` after `[END]` only;
`scores` `(B,)` float32, the model's log-probability of the chosen
(non-forced) tokens up to and including `[END]`.
"""

import numpy as np
import tensorflow as tf

from keras_transformer.data.special_tokens import END_ID, PAD_ID

_NEG_INF = -1e9


def _forced_token(forced_ids, forced_lengths, position, batch_size):
    """The prompt token at `position` and whether the row is still forced there."""
    if forced_ids is None:
        return tf.zeros([batch_size], tf.int32), tf.zeros([batch_size], tf.bool)
    width = tf.shape(forced_ids)[1]
    column = tf.minimum(position, width - 1)
    token = tf.gather(forced_ids, column, axis=1)
    return tf.cast(token, tf.int32), position < forced_lengths


def _without_pad(logits):
    """Logits `(B, V)` with `[PAD]` made impossible to choose."""
    vocab = tf.shape(logits)[-1]
    return tf.where(tf.range(vocab) == PAD_ID, _NEG_INF, tf.cast(logits, tf.float32))


def _write(buffer, column, values):
    """`buffer[:, column] = values` for a `(B, L)` buffer (XLA-friendly)."""
    one_hot = tf.one_hot(column, tf.shape(buffer)[1], dtype=buffer.dtype)
    return buffer * (1 - one_hot)[None] + values[:, None] * one_hot[None]


def _search(stepper, state, first_ids, max_length, choose, forced_ids, forced_lengths):
    first_ids = tf.cast(first_ids, tf.int32)
    batch_size = tf.shape(first_ids)[0]
    if forced_lengths is not None:
        forced_lengths = tf.cast(forced_lengths, tf.int32)

    def body(i, token, ids, finished, scores, state):
        logits, state = stepper.step(token, i, state)
        log_probs = tf.nn.log_softmax(logits)
        chosen = tf.cast(choose(_without_pad(logits), i), tf.int32)
        forced, is_forced = _forced_token(forced_ids, forced_lengths, i + 1, batch_size)
        next_token = tf.where(is_forced, forced, chosen)
        next_token = tf.where(finished, PAD_ID, next_token)
        gained = tf.gather(log_probs, next_token, batch_dims=1)
        scores += tf.where(finished | is_forced, 0.0, gained)
        ids = _write(ids, i, next_token)
        finished |= (next_token == END_ID) & ~is_forced
        return i + 1, next_token, ids, finished, scores, state

    def cond(i, token, ids, finished, scores, state):
        return (i < max_length) & ~tf.reduce_all(finished)

    ids = tf.zeros([batch_size, max_length], tf.int32)
    loop_vars = (tf.constant(0), first_ids, ids, tf.zeros([batch_size], tf.bool),
                 tf.zeros([batch_size], tf.float32), state)
    _, _, ids, _, scores, _ = tf.while_loop(cond, body, loop_vars, maximum_iterations=max_length)
    return ids, scores


def greedy_search(stepper, state, first_ids, max_length, forced_ids=None, forced_lengths=None):
    """The most probable token at every step."""
    return _search(stepper, state, first_ids, max_length,
                   lambda logits, i: tf.argmax(logits, axis=-1), forced_ids, forced_lengths)


def filter_logits(logits, temperature=1.0, top_k=0, top_p=1.0):
    """Logits `(B, V)` divided by `temperature`, with everything outside the
    `top_k` most probable tokens (0 = no limit) and outside the smallest set
    whose probability reaches `top_p` (nucleus) set to -1e9. The most probable
    token always stays."""
    logits = tf.cast(logits, tf.float32) / temperature
    if top_k:
        kth = tf.math.top_k(logits, k=top_k).values[:, -1:]
        logits = tf.where(logits < kth, _NEG_INF, logits)
    if top_p < 1.0:
        sorted_logits = tf.sort(logits, direction="DESCENDING", axis=-1)
        cumulative = tf.cumsum(tf.nn.softmax(sorted_logits), axis=-1, exclusive=True)
        # The smallest logit still inside the nucleus, per row.
        inside = tf.where(cumulative < top_p, sorted_logits, tf.reduce_max(logits, -1,
                                                                            keepdims=True))
        threshold = tf.reduce_min(inside, axis=-1, keepdims=True)
        logits = tf.where(logits < threshold, _NEG_INF, logits)
    return logits


def sample(stepper, state, first_ids, max_length, *, temperature=1.0, top_k=0, top_p=1.0,
           seed=0, forced_ids=None, forced_lengths=None):
    """Random tokens from the filtered distribution; the same `seed` gives
    the same output (stateless random ops, one seed per step)."""
    if temperature <= 0:
        raise ValueError(f"`temperature` must be > 0 (use greedy_search for 0). "
                         f"Received: {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"`top_p` must be in (0, 1]. Received: {top_p}")
    seed = tf.cast(seed, tf.int32)

    def choose(logits, i):
        filtered = filter_logits(logits, temperature, top_k, top_p)
        draw = tf.random.stateless_categorical(filtered, 1, seed=tf.stack([seed, i]))
        return draw[:, 0]

    return _search(stepper, state, first_ids, max_length, choose, forced_ids, forced_lengths)


def length_penalty(lengths, alpha):
    """GNMT's `((5 + length) / 6) ** alpha`."""
    return tf.pow((5.0 + tf.cast(lengths, tf.float32)) / 6.0, alpha)


def beam_search(stepper, state, first_ids, max_length, *, beam_size=4, alpha=0.6,
                forced_ids=None, forced_lengths=None):
    """Beam search with GNMT's length penalty.

    Keeps the `beam_size` most probable prefixes per row (by summed
    log-probability); a beam that produced `[END]` keeps its score and
    continues with `[PAD]` at no cost. The result per row is the beam with
    the best `score / ((5 + length) / 6) ** alpha` (`alpha=0`: the most
    probable).

    A row is done as soon as its best ended beam's normalized score is at
    least `score / ((5 + max_length) / 6) ** alpha` of every beam still going
    (for `alpha >= 0`: the most any continuation could reach, since
    log-probabilities only fall), and the search stops when every row is
    done, instead of extending beams that cannot win to `max_length`.

    Returns:
        `(ids, scores)` like the other searches; `scores` are the best beams'
        summed log-probabilities (not normalized).
    """
    if beam_size < 1:
        raise ValueError(f"`beam_size` must be >= 1. Received: {beam_size}")
    k = beam_size
    first_ids = tf.cast(first_ids, tf.int32)
    batch_size = tf.shape(first_ids)[0]
    flat = batch_size * k
    state = stepper.repeat(state, k)
    if forced_ids is not None:
        forced_ids = tf.repeat(tf.cast(forced_ids, tf.int32), k, axis=0)
        forced_lengths = tf.repeat(tf.cast(forced_lengths, tf.int32), k, axis=0)
    # Only beam 0 is alive at first, so the k beams do not start as copies.
    initial_scores = tf.tile(tf.constant([[0.0] + [_NEG_INF] * (k - 1)]), [batch_size, 1])

    # The most normalized score a beam still going can reach (alpha >= 0).
    best_possible = 1.0 / length_penalty(max_length, alpha) if alpha >= 0 else None

    def rows_done(finished, lengths, scores):
        finished = tf.reshape(finished, [batch_size, k])
        if best_possible is None:
            return tf.reduce_all(finished, axis=1)
        lengths = tf.reshape(lengths, [batch_size, k])
        ended = tf.where(finished, scores / length_penalty(lengths, alpha), -np.inf)
        going = tf.where(finished, -np.inf, scores * best_possible)
        return tf.reduce_max(ended, axis=1) >= tf.reduce_max(going, axis=1)

    def body(i, token, ids, finished, lengths, scores, state):
        logits, state = stepper.step(token, i, state)
        log_probs = tf.nn.log_softmax(logits)  # [B·k, V]
        vocab = tf.shape(log_probs)[1]
        log_probs = tf.where(tf.range(vocab) == PAD_ID, _NEG_INF, log_probs)  # never chosen
        forced, is_forced = _forced_token(forced_ids, forced_lengths, i + 1, flat)
        only = lambda t: tf.one_hot(t, vocab, on_value=0.0, off_value=_NEG_INF)  # noqa: E731
        log_probs = tf.where(is_forced[:, None], only(forced), log_probs)
        log_probs = tf.where(finished[:, None], only(tf.fill([flat], PAD_ID)), log_probs)
        candidates = tf.reshape(scores, [-1, 1]) + log_probs  # [B·k, V]
        candidates = tf.reshape(candidates, [batch_size, k * vocab])
        scores, index = tf.math.top_k(candidates, k=k)  # [B, k]
        beam = index // vocab
        new_token = tf.reshape(index % vocab, [-1])
        rows = tf.reshape(beam + k * tf.range(batch_size)[:, None], [-1])  # [B·k]
        state = stepper.gather(state, rows)
        ids = _write(tf.gather(ids, rows), i, new_token)
        was_finished = tf.gather(finished, rows)
        lengths = tf.gather(lengths, rows) + tf.cast(~was_finished, tf.int32)
        is_forced = tf.gather(is_forced, rows)
        finished = was_finished | ((new_token == END_ID) & ~is_forced)
        return i + 1, new_token, ids, finished, lengths, scores, state

    def cond(i, token, ids, finished, lengths, scores, state):
        return (i < max_length) & ~tf.reduce_all(rows_done(finished, lengths, scores))

    loop_vars = (tf.constant(0), tf.repeat(first_ids, k), tf.zeros([flat, max_length], tf.int32),
                 tf.zeros([flat], tf.bool), tf.zeros([flat], tf.int32), initial_scores, state)
    _, _, ids, finished, lengths, scores, _ = tf.while_loop(
        cond, body, loop_vars, maximum_iterations=max_length
    )
    normalized = scores / tf.reshape(length_penalty(lengths, alpha), [batch_size, k])
    # In a row that is done, a beam still going cannot win: only ended beams count.
    going = ~tf.reshape(finished, [batch_size, k])
    normalized = tf.where(rows_done(finished, lengths, scores)[:, None] & going, -np.inf,
                          normalized)
    best = tf.argmax(normalized, axis=-1, output_type=tf.int32)  # [B]
    rows = best + k * tf.range(batch_size)
    return tf.gather(ids, rows), tf.gather(tf.reshape(scores, [-1]), rows)
