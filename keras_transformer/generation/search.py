"""Greedy search, sampling and beam search over a stepper, in `while_loop`s.

Every search runs the whole generation as `keras.ops.while_loop`s over
static-shape buffers, written in `keras.ops` alone: one implementation for
every Keras backend. When the model's cache can grow
(`DecodingTraits.cache_length_axes`) there is one loop per cache length (8,
16, 32, … positions), so that a step reads what has been written rather
than `max_length` positions. XLA compiles the search once per batch shape
(`tf.function(jit_compile=True)` under TensorFlow, where it also exports to
a SavedModel; `jax.jit` under JAX); under PyTorch it runs eagerly. The
search stops as soon as every row has produced its end token (`[END]`) (or after
`max_length` steps).

Shared arguments:
    stepper: an `EncoderDecoderStepper` or `CausalLMStepper`.
    state: `stepper.initial_state(...)` for the batch.
    first_ids: `(B,)` int, the token at position 0 (`[START]`, or a prompt's
        first token).
    max_length: int, the number of positions after position 0 to fill.
    forced_ids: optional `(B, P)` int prompt (position 0 included); row `b`
        is copied for its first `forced_lengths[b]` positions instead of
        being chosen (teacher forcing through the cache).
    forced_lengths: `(B,)` int, each prompt's length (≥ 1). Prompts of a
        static width of 2 or more go through the cache in one call first
        (`Stepper.prefill`, as keras-hub's `generate` encodes a prompt), and
        the loop starts at the shortest prompt's last position.
    special_ids: a `SpecialIds` (default: the package's): the search ends a
        row at `end`, fills it with `pad` after, and never chooses an id of
        `suppressed`.

The package's vocabularies suppress `[PAD]` (it is not a token a model should
emit; a `[PAD]` mid-sequence would be read as padding by a full pass, so the
cached and the full-pass decoders would part ways after it).

Outputs are `(ids, scores)`: `ids` `(B, max_length)` int32, the tokens for
positions 1..max_length (prompt tokens included), `pad` after `end` only;
`scores` `(B,)` float32, the model's log-probability of the chosen
(non-forced) tokens up to and including `end`.
"""

import keras
import numpy as np
from keras import ops

from keras_transformer.data.special_tokens import DEFAULT_SPECIAL_IDS

_NEG_INF = -1e9


def _forced_token(forced_ids, forced_lengths, position, batch_size):
    """The prompt token at `position` and whether the row is still forced there."""
    if forced_ids is None:
        return ops.zeros([batch_size], "int32"), ops.zeros([batch_size], "bool")
    width = ops.shape(forced_ids)[1]
    column = ops.minimum(position, width - 1)
    token = ops.take(forced_ids, column, axis=1)
    return ops.cast(token, "int32"), position < forced_lengths


def _suppress(logits, suppressed):
    """Float32 logits `(B, V)` with the ids `suppressed` made impossible to choose."""
    logits = ops.cast(logits, "float32")
    if not suppressed:
        return logits
    vocab_ids = ops.arange(ops.shape(logits)[-1], dtype="int32")
    banned = ops.any(vocab_ids[:, None] == ops.convert_to_tensor(suppressed, "int32")[None],
                     axis=1)
    return ops.where(banned[None], _NEG_INF, logits)


def _write(buffer, column, values):
    """`buffer[:, column] = values` for a `(B, L)` buffer (XLA-friendly)."""
    one_hot = ops.one_hot(column, ops.shape(buffer)[1], dtype=buffer.dtype)
    return buffer * (1 - one_hot)[None] + values[:, None] * one_hot[None]


def _take_rows(tensor, rows):
    return ops.take(tensor, rows, axis=0)


# The first cache length of a growing cache; each segment doubles it.
_FIRST_CACHE_LENGTH = 8


def cache_lengths(stepper, max_length):
    """The cache lengths the loop runs through: 8, 16, 32, … then `max_length`
    when the model's cache can grow (`DecodingTraits.cache_length_axes`),
    else `max_length` alone."""
    traits = getattr(stepper, "traits", None)  # a stepper of one's own may have none
    if traits is None or not traits.cache_length_axes:
        return [max_length]
    lengths, length = [], _FIRST_CACHE_LENGTH
    while length < max_length:
        lengths.append(length)
        length *= 2
    return lengths + [max_length]


def _while_loop(stepper, cond, body, loop_vars, max_length, min_length=0):
    """`ops.while_loop` over at most `max_length` steps, the loop variables
    `(i, ..., state)`, with a cache that grows as `i` does.

    Each segment runs while `i` is below its cache length, so a step reads
    (and beam search reorders) the positions that can have been written,
    not all `max_length` of them: decoding stops long before `max_length`
    for most batches, and a step's cost is dominated by reading its cache.
    The cache never holds fewer than `min_length` positions (those a
    prefilled prompt wrote).
    """
    lengths = cache_lengths(stepper, max_length)
    lengths = [length for length in lengths if length >= min_length] or [max_length]
    if len(lengths) == 1:
        return ops.while_loop(cond, body, loop_vars, maximum_iterations=max_length)
    done = 0
    for length in lengths:
        loop_vars = (*loop_vars[:-1], stepper.resize(loop_vars[-1], length))

        def segment_cond(*values, length=length):
            return ops.logical_and(values[0] < length, cond(*values))

        loop_vars = ops.while_loop(segment_cond, body, loop_vars,
                                   maximum_iterations=length - done)
        done = length
    return loop_vars


def _can_prefill(stepper, forced_ids, max_length):
    """Whether the prompts can go through the cache in one call: a stepper
    that can (`prefill`), a static prompt width of 2 or more that the cache
    holds."""
    if forced_ids is None or not callable(getattr(stepper, "prefill", None)):
        return False
    width = forced_ids.shape[1]
    return width is not None and 2 <= width <= max_length


def _prefill(stepper, state, forced_ids, forced_lengths, max_length, pad):
    """The prompts through the cache in one call, as keras-hub's `generate`
    encodes them: positions `0 … P - 1` are written at once, and the search
    starts at the last position every row's prompt has (`min(lengths) - 1`),
    forcing the longer prompts' remaining tokens as before (rewriting their
    positions with the same keys and values). A row's padding positions are
    written too, but each is rewritten by its own step before any query
    reads it (causal attention).

    Returns `(start, token, ids, state)`: the first loop index, the tokens at
    it, the output buffer with the prompts' positions `1 … start` filled.
    """
    state = stepper.prefill(forced_ids, state)
    start = ops.maximum(ops.min(forced_lengths) - 1, 0)
    token = ops.take(forced_ids, start, axis=1)
    width = forced_ids.shape[1]
    shifted = forced_ids[:, 1:]
    if width - 1 < max_length:
        shifted = ops.pad(shifted, [[0, 0], [0, max_length - width + 1]], constant_values=pad)
    columns = ops.arange(max_length, dtype="int32")
    ids = ops.where(columns[None] < start, shifted[:, :max_length], pad)
    return start, token, ops.cast(ids, "int32"), state


def _search(stepper, state, first_ids, max_length, choose, forced_ids, forced_lengths,
            special_ids):
    special = special_ids or DEFAULT_SPECIAL_IDS
    first_ids = ops.cast(first_ids, "int32")
    batch_size = ops.shape(first_ids)[0]
    if forced_ids is not None:
        forced_ids = ops.cast(forced_ids, "int32")
    if forced_lengths is not None:
        forced_lengths = ops.cast(forced_lengths, "int32")

    def body(i, token, ids, finished, scores, state):
        logits, state = stepper.step(token, i, state)
        log_probs = ops.log_softmax(logits)
        chosen = ops.cast(choose(_suppress(logits, special.suppressed), i), "int32")
        forced, is_forced = _forced_token(forced_ids, forced_lengths, i + 1, batch_size)
        next_token = ops.where(is_forced, forced, chosen)
        next_token = ops.where(finished, special.pad, next_token)
        gained = ops.take_along_axis(log_probs, next_token[:, None], axis=1)[:, 0]
        scores = scores + ops.where(finished | is_forced, 0.0, gained)
        ids = _write(ids, i, next_token)
        finished = finished | ((next_token == special.end) & ~is_forced)
        return i + 1, next_token, ids, finished, scores, state

    def cond(i, token, ids, finished, scores, state):
        return (i < max_length) & ~ops.all(finished)

    start, ids, min_length = ops.convert_to_tensor(0, "int32"), None, 0
    if _can_prefill(stepper, forced_ids, max_length):
        start, first_ids, ids, state = _prefill(stepper, state, forced_ids, forced_lengths,
                                                max_length, special.pad)
        min_length = forced_ids.shape[1]
    if ids is None:
        ids = ops.full([batch_size, max_length], special.pad, "int32")
    loop_vars = (start, first_ids, ids, ops.zeros([batch_size], "bool"),
                 ops.zeros([batch_size], "float32"), state)
    _, _, ids, _, scores, _ = _while_loop(stepper, cond, body, loop_vars, max_length,
                                          min_length)
    return ids, scores


def greedy_search(stepper, state, first_ids, max_length, forced_ids=None, forced_lengths=None,
                  special_ids=None):
    """The most probable token at every step."""
    return _search(stepper, state, first_ids, max_length,
                   lambda logits, i: ops.argmax(logits, axis=-1), forced_ids, forced_lengths,
                   special_ids)


def filter_logits(logits, temperature=1.0, top_k=0, top_p=1.0):
    """Logits `(B, V)` divided by `temperature`, with everything outside the
    `top_k` most probable tokens (0 = no limit) and outside the smallest set
    whose probability reaches `top_p` (nucleus) set to -1e9. The most probable
    token always stays."""
    logits = ops.cast(logits, "float32") / temperature
    if top_k:
        kth = ops.top_k(logits, k=top_k)[0][:, -1:]
        logits = ops.where(logits < kth, _NEG_INF, logits)
    if top_p < 1.0:
        sorted_logits = ops.flip(ops.sort(logits, axis=-1), axis=-1)  # descending
        probabilities = ops.softmax(sorted_logits)
        cumulative = ops.cumsum(probabilities, axis=-1) - probabilities  # exclusive
        # The smallest logit still inside the nucleus, per row.
        inside = ops.where(cumulative < top_p, sorted_logits,
                           ops.max(logits, -1, keepdims=True))
        threshold = ops.min(inside, axis=-1, keepdims=True)
        logits = ops.where(logits < threshold, _NEG_INF, logits)
    return logits


def filter_logits_per_row(logits, temperature, top_k, top_p):
    """`filter_logits` with one setting per row: `temperature` `(B,)` float
    (> 0), `top_k` `(B,)` int (0 = no limit), `top_p` `(B,)` float in (0, 1]
    (1 = no nucleus). Row b equals `filter_logits(logits[b:b+1], temperature[b],
    top_k[b], top_p[b])`."""
    logits = ops.cast(logits, "float32") / ops.cast(temperature, "float32")[:, None]
    vocab_size = ops.shape(logits)[-1]
    top_k = ops.cast(top_k, "int32")
    top_p = ops.cast(top_p, "float32")
    descending = ops.flip(ops.sort(logits, axis=-1), axis=-1)
    k = ops.where(top_k > 0, ops.minimum(top_k, vocab_size), vocab_size)
    kth = ops.take_along_axis(descending, (k - 1)[:, None], axis=1)  # [B, 1]
    logits = ops.where(logits < kth, _NEG_INF, logits)
    # The top-k logits, still in descending order, then the nucleus among them.
    columns = ops.arange(vocab_size, dtype="int32")[None]
    descending = ops.where(columns < k[:, None], descending, _NEG_INF)
    probabilities = ops.softmax(descending)
    cumulative = ops.cumsum(probabilities, axis=-1) - probabilities  # exclusive
    inside = ops.where(cumulative < top_p[:, None], descending,
                       ops.max(logits, -1, keepdims=True))
    threshold = ops.min(inside, axis=-1, keepdims=True)
    nucleus = (top_p < 1.0)[:, None]
    return ops.where(nucleus & (logits < threshold), _NEG_INF, logits)


def categorical_per_row(logits, seeds, steps):
    """One draw per row, row b a function of `(seeds[b], steps[b])` alone:
    `_stateless_categorical(logits[b:b+1], seeds[b], steps[b])`, which is
    also row 0 of the same draw over a larger batch, so a row of a server's
    pool draws what the search of that request alone draws."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        def draw(args):
            row, seed, step = args
            return _stateless_categorical(row[None], seed, step)[0]

        return tf.map_fn(draw, (logits, seeds, steps), fn_output_signature=tf.int64)
    if backend == "jax":
        import jax

        def draw(row, seed, step):
            key = jax.random.fold_in(jax.random.PRNGKey(seed), step)
            return jax.random.categorical(key, row[None], axis=-1)[0]

        return jax.vmap(draw)(logits, seeds, steps)
    rows = ops.convert_to_numpy(seeds).shape[0]
    seeds, steps = ops.convert_to_numpy(seeds), ops.convert_to_numpy(steps)
    return ops.stack([_stateless_categorical(logits[b:b + 1], int(seeds[b]), int(steps[b]))[0]
                      for b in range(rows)])


def _stateless_categorical(logits, seed, step):
    """One draw per row from `logits` `(B, V)`, a function of `(seed, step)` alone."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        seeds = tf.stack([tf.cast(seed, tf.int32), tf.cast(step, tf.int32)])
        return tf.random.stateless_categorical(logits, 1, seed=seeds)[:, 0]
    if backend == "jax":
        import jax

        key = jax.random.fold_in(jax.random.PRNGKey(seed), step)
        return jax.random.categorical(key, logits, axis=-1)
    # Other backends: Gumbel-max with a generator seeded from (seed, step).
    uniform = keras.random.uniform(ops.shape(logits), minval=1e-9, maxval=1.0,
                                   seed=int(seed) * 1_000_003 + int(step))
    return ops.argmax(logits - ops.log(-ops.log(uniform)), axis=-1)


def sample(stepper, state, first_ids, max_length, *, temperature=1.0, top_k=0, top_p=1.0,
           seed=0, forced_ids=None, forced_lengths=None, special_ids=None):
    """Random tokens from the filtered distribution; the same `seed` gives
    the same output (stateless random ops, one seed per step)."""
    if temperature <= 0:
        raise ValueError(f"`temperature` must be > 0 (use greedy_search for 0). "
                         f"Received: {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"`top_p` must be in (0, 1]. Received: {top_p}")

    def choose(logits, i):
        filtered = filter_logits(logits, temperature, top_k, top_p)
        return _stateless_categorical(filtered, seed, i)

    return _search(stepper, state, first_ids, max_length, choose, forced_ids, forced_lengths,
                   special_ids)


def length_penalty(lengths, alpha):
    """GNMT's `((5 + length) / 6) ** alpha`."""
    return ops.power((5.0 + ops.cast(lengths, "float32")) / 6.0, alpha)


def beam_search(stepper, state, first_ids, max_length, *, beam_size=4, alpha=0.6,
                forced_ids=None, forced_lengths=None, special_ids=None):
    """Beam search with GNMT's length penalty.

    Keeps the `beam_size` most probable prefixes per row (by summed
    log-probability); a beam that produced `end` keeps its score and
    continues with `pad` at no cost. The result per row is the beam with
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
    special = special_ids or DEFAULT_SPECIAL_IDS
    first_ids = ops.cast(first_ids, "int32")
    batch_size = ops.shape(first_ids)[0]
    flat = batch_size * k
    start, ids, min_length = ops.convert_to_tensor(0, "int32"), None, 0
    if _can_prefill(stepper, forced_ids, max_length):
        # Once per row, before the beams: they share the prompt.
        start, first_ids, ids, state = _prefill(
            stepper, state, ops.cast(forced_ids, "int32"), ops.cast(forced_lengths, "int32"),
            max_length, special.pad)
        ids = ops.repeat(ids, k, axis=0)
        min_length = forced_ids.shape[1]
    if ids is None:
        ids = ops.full([flat, max_length], special.pad, "int32")
    state = stepper.repeat(state, k)
    if forced_ids is not None:
        forced_ids = ops.repeat(ops.cast(forced_ids, "int32"), k, axis=0)
        forced_lengths = ops.repeat(ops.cast(forced_lengths, "int32"), k, axis=0)
    # Only beam 0 is alive at first, so the k beams do not start as copies.
    first_beam = ops.convert_to_tensor([[0.0] + [_NEG_INF] * (k - 1)], "float32")
    initial_scores = ops.tile(first_beam, [batch_size, 1])
    row_offsets = ops.arange(batch_size, dtype="int32") * k  # [B]

    # The most normalized score a beam still going can reach (alpha >= 0).
    best_possible = 1.0 / length_penalty(max_length, alpha) if alpha >= 0 else None

    def rows_done(finished, lengths, scores):
        finished = ops.reshape(finished, [-1, k])
        if best_possible is None:
            return ops.all(finished, axis=1)
        lengths = ops.reshape(lengths, [-1, k])
        ended = ops.where(finished, scores / length_penalty(lengths, alpha), -np.inf)
        going = ops.where(finished, -np.inf, scores * best_possible)
        return ops.max(ended, axis=1) >= ops.max(going, axis=1)

    def body(i, token, ids, finished, lengths, scores, state):
        logits, state = stepper.step(token, i, state)
        log_probs = _suppress(ops.log_softmax(logits), special.suppressed)  # [B·k, V]
        vocab = ops.shape(log_probs)[1]
        vocab_ids = ops.arange(vocab, dtype="int32")
        forced, is_forced = _forced_token(forced_ids, forced_lengths, i + 1, flat)

        def only(token):  # log-probabilities that allow `token` alone
            return ops.where(vocab_ids[None] == token[:, None], 0.0, _NEG_INF)

        log_probs = ops.where(is_forced[:, None], only(forced), log_probs)
        log_probs = ops.where(finished[:, None], only(ops.full_like(forced, special.pad)),
                              log_probs)
        candidates = ops.reshape(scores, [-1, 1]) + log_probs  # [B·k, V]
        candidates = ops.reshape(candidates, [-1, k * vocab])
        scores, index = ops.top_k(candidates, k=k)  # [B, k]
        index = ops.cast(index, "int32")
        beam = index // vocab
        new_token = ops.reshape(index % vocab, [-1])
        rows = ops.reshape(beam + row_offsets[:, None], [-1])  # [B·k]
        state = stepper.gather(state, rows)
        ids = _write(_take_rows(ids, rows), i, new_token)
        was_finished = _take_rows(finished, rows)
        lengths = _take_rows(lengths, rows) + ops.cast(~was_finished, "int32")
        is_forced = _take_rows(is_forced, rows)
        finished = was_finished | ((new_token == special.end) & ~is_forced)
        return i + 1, new_token, ids, finished, lengths, scores, state

    def cond(i, token, ids, finished, lengths, scores, state):
        return (i < max_length) & ~ops.all(rows_done(finished, lengths, scores))

    # A beam's length counts the prompt positions a prefill skipped.
    loop_vars = (start, ops.repeat(first_ids, k, axis=0), ids, ops.zeros([flat], "bool"),
                 ops.full([flat], start, "int32"), initial_scores, state)
    _, _, ids, finished, lengths, scores, _ = _while_loop(
        stepper, cond, body, loop_vars, max_length, min_length)
    normalized = scores / ops.reshape(length_penalty(lengths, alpha), [-1, k])
    # In a row that is done, a beam still going cannot win: only ended beams count.
    going = ~ops.reshape(finished, [-1, k])
    normalized = ops.where(rows_done(finished, lengths, scores)[:, None] & going, -np.inf,
                           normalized)
    best = ops.cast(ops.argmax(normalized, axis=-1), "int32")  # [B]
    rows = best + row_offsets
    return _take_rows(ids, rows), _take_rows(ops.reshape(scores, [-1]), rows)
