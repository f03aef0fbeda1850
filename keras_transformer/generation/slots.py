"""A decoder-only model's cached step over a fixed pool of sequences (slots).

The searches of `keras_transformer.generation.search` decode a batch from
start to end in one loop: every row starts together, and the batch is done
when its longest row is. A server of text generation does better with a
*pool*: `N` cache slots held between calls, each holding one request's
sequence at its own position. Two functions, each compiled once, serve any
mix of requests (continuous batching, as Orca and vLLM schedule it):

- `prefill(pool, slot, prompt_ids)`: a prompt `(1, P)` through the cache in
  one call (compiled once per width `P`), written into row `slot` of the
  pool (the other rows unchanged);
- `step(pool, tokens, positions, settings)`: one token per slot `(N,)`, each
  at its own position `(N,)` (the layers' per-row `index`), → the next
  token of every slot, greedy or sampled with the slot's own temperature,
  top-k, top-p and seed;
- `steps(pool, tokens, positions, budgets, settings)`: up to
  `steps_per_call` such steps in one compiled loop, each row stopping at
  its end id or after `budgets[row]` tokens, → `(N, steps_per_call)` ids.
  A call has a fixed cost (its launch, the pool passed in and out) that one
  token per call pays every token; this pays it once per `steps_per_call`.

A slot whose prompt was prefilled is stepped first with its prompt's last
token at its last position (rewriting that position with the same keys and
values), which is how the whole search starts after its prefill; the token
it returns is the first new one. So a greedy slot produces the whole
search's tokens, and a sampled slot draws with `(seed, position)` what the
whole search draws for that request alone (`search.categorical_per_row`).

The pool is a nest of tensors that the caller passes back in: it stays
where the backend keeps it (no copy to the host between steps). Only the
chosen ids `(N,)` come back to the host. A free slot is stepped too (its
result ignored), since the step's shape is fixed.

A step's cost grows with the pool's rows and positions, so the pool holds
only what its sequences need: `resize(pool, rows, length)` cuts or pads it
to as many rows as there are sequences (the caller keeps them in the first
rows, `move`) and as many positions as the longest needs (`lengths`: 8, 16,
32, … then `max_length`, the searches' growing-cache lengths; positions
past every sequence's own are never read, so cutting them loses nothing).
XLA compiles the step once per pool shape.

    decoder = SlotDecoder(model, max_length=128)
    pool = decoder.initial_pool(8)
    pool = decoder.prefill(pool, 0, prompt_ids)                 # slot 0
    pool, ids, log_probs = decoder.step(pool, tokens, positions, settings)
"""

import dataclasses

import keras
import numpy as np
from keras import ops

from keras_transformer.data.special_tokens import DEFAULT_SPECIAL_IDS, special_ids_of
from keras_transformer.generation.id_decoder import compile_for_backend
from keras_transformer.generation.search import (
    _suppress,
    cache_lengths,
    categorical_per_row,
    filter_logits_per_row,
)
from keras_transformer.generation.steppers import CausalLMStepper, fit_axis


@dataclasses.dataclass
class SlotSettings:
    """How each slot picks its tokens: arrays of one entry per slot.

    Args:
        greedy: `(N,)` bool, the most probable token (else a sample).
        temperature: `(N,)` float32 > 0.
        top_k: `(N,)` int32, 0 = no limit.
        top_p: `(N,)` float32 in (0, 1].
        seed: `(N,)` int32, the sampling seed.
    """

    greedy: np.ndarray
    temperature: np.ndarray
    top_k: np.ndarray
    top_p: np.ndarray
    seed: np.ndarray

    @classmethod
    def empty(cls, num_slots):
        """Greedy settings for `num_slots` free slots."""
        return cls(np.ones(num_slots, bool), np.ones(num_slots, "float32"),
                   np.zeros(num_slots, "int32"), np.ones(num_slots, "float32"),
                   np.zeros(num_slots, "int32"))

    def set(self, slot, *, greedy, temperature=1.0, top_k=0, top_p=1.0, seed=0):
        """Row `slot` set to one request's settings."""
        self.greedy[slot] = greedy
        self.temperature[slot] = temperature
        self.top_k[slot] = top_k
        self.top_p[slot] = top_p
        self.seed[slot] = seed

    def arrays(self):
        return (self.greedy, self.temperature, self.top_k, self.top_p, self.seed)

    def rows(self, count):
        """The settings of the first `count` slots."""
        return SlotSettings(*(values[:count] for values in self.arrays()))


class SlotDecoder:
    """Prefill and step a pool of cache slots of a decoder-only model.

    Args:
        model: a decoder-only model with the cached-decoding protocol whose
            `decoding_traits().per_row_index` is True (every model stacked
            from the package's layers).
        max_length: int ≥ 2, the positions of each slot (prompt and new
            tokens); at most the model's `max_length`.
        special_ids: a `SpecialIds` (default: the model's, else `fallback`'s,
            else the package's): the ids never chosen (`suppressed`).
        fallback: where special ids come from when the model names none (a
            tokenizer).
        compile: bool, compile the functions with XLA (TensorFlow, JAX).
        steps_per_call: int ≥ 1, the most tokens `steps` makes per row in
            one call.

    Raises:
        ValueError: the model takes a scalar `index` only (serve it with
            whole-request batching), or `max_length` is out of range.
    """

    def __init__(self, model, max_length, special_ids=None, fallback=None, compile=True,
                 steps_per_call=8):
        self.model = model
        self.stepper = CausalLMStepper(model)
        if not self.stepper.traits.per_row_index:
            raise ValueError(
                f"Model '{getattr(model, 'name', model)}' takes one position `index` for the "
                "whole batch (its `decoding_traits().per_row_index` is False), so its rows "
                "cannot be stepped at different positions: serve it with whole-request "
                "batching, or accept a (batch,) index and set `per_row_index=True`.")
        limit = self.stepper.max_length
        if max_length < 2 or (limit is not None and max_length > limit):
            raise ValueError(f"`max_length` must be in [2, {limit}] (the model's length). "
                             f"Received: {max_length}")
        self.max_length = int(max_length)
        if special_ids is None:
            special_ids = self.stepper.traits.special_ids
        self.special_ids = special_ids_of(special_ids if special_ids is not None
                                          else fallback, DEFAULT_SPECIAL_IDS)
        self._prefill = compile_for_backend(self.prefill_function, model, compile)
        if steps_per_call < 1:
            raise ValueError(f"`steps_per_call` must be >= 1. Received: {steps_per_call}")
        self.steps_per_call = int(steps_per_call)
        self._step = compile_for_backend(self.step_function, model, compile)
        self._steps = compile_for_backend(self.steps_function, model, compile)

    @property
    def lengths(self):
        """The pool lengths `resize` moves between (`[max_length]` for a model
        whose cache cannot grow)."""
        return cache_lengths(self.stepper, self.max_length)

    def initial_pool(self, num_slots, length=None):
        """The empty pool: the model's cache for `num_slots` rows of `length`
        positions (default `max_length`)."""
        return self.stepper.initial_state(num_slots,
                                          self.max_length if length is None else length)

    def resize(self, pool, rows, length):
        """`pool` cut or zero-padded to `rows` slots and `length` positions
        (one of `lengths`). Rows past `rows` are dropped: the caller keeps
        its sequences in the first rows (`move`)."""
        pool = keras.tree.map_structure(lambda tensor: fit_axis(tensor, 0, rows), pool)
        return self.stepper.resize(pool, length)

    def move(self, pool, source, target):
        """`pool` with row `source` copied into row `target`."""
        def copy(tensor):
            start = [target] + [0] * (len(tensor.shape) - 1)
            return ops.slice_update(tensor, start, tensor[source:source + 1])

        return keras.tree.map_structure(copy, pool)

    def insert(self, pool, slot, row):
        """`pool` with `row` (`prefill`'s cache of one sequence, any length up
        to the pool's) in row `slot`."""
        row = self.stepper.resize(row, self.pool_length(pool))

        def put(whole, part):
            start = [slot] + [0] * (len(whole.shape) - 1)
            return ops.slice_update(whole, start, ops.cast(part, whole.dtype))

        return keras.tree.map_structure(put, pool, row)

    def pool_length(self, pool):
        """The positions `pool` holds."""
        axes = dict(self.stepper.traits.cache_length_axes)
        if not axes or not isinstance(pool, dict):
            return self.max_length
        key, axis = next(iter(axes.items()))
        return keras.tree.flatten(pool[key])[0].shape[axis]

    def prefill_function(self, prompt_ids):
        """The cache of one sequence holding `prompt_ids` `(1, P)` at positions
        `0 … P - 1`, `P` positions long (`insert` puts it in the pool;
        positions a padded prompt writes past its length are rewritten before
        any query reads them: causal attention)."""
        width = prompt_ids.shape[1]
        if width is None:  # traced with an open width (the exported function)
            width = ops.shape(prompt_ids)[1]
        return self.stepper.prefill(prompt_ids, self.stepper.initial_state(1, width))

    def step_function(self, pool, tokens, positions, greedy, temperature, top_k, top_p, seed):
        """One step of every slot: `tokens` `(N,)` at `positions` `(N,)` →
        `(pool, next ids (N,) int32, their log-probabilities (N,) float32)`."""
        positions = ops.cast(positions, "int32")
        logits, pool = self.stepper.step(ops.cast(tokens, "int32"), positions, pool)
        log_probs = ops.log_softmax(logits)
        logits = _suppress(logits, self.special_ids.suppressed)
        best = ops.cast(ops.argmax(logits, axis=-1), "int32")

        def sampled():
            filtered = filter_logits_per_row(logits, temperature, top_k, top_p)
            drawn = ops.cast(categorical_per_row(filtered, seed, positions), "int32")
            return ops.where(greedy, best, drawn)

        chosen = ops.cond(ops.all(greedy), lambda: best, sampled)
        gained = ops.take_along_axis(log_probs, chosen[:, None], axis=1)[:, 0]
        return pool, chosen, gained

    def steps_function(self, pool, tokens, positions, budgets, greedy, temperature, top_k,
                       top_p, seed):
        """Up to `steps_per_call` steps of every slot in one call (an XLA
        loop), so that the call's fixed cost (launching it, the pool passed
        in and out) is paid once for several tokens.

        Each row makes at most `budgets[row]` tokens (`(N,)` int32; 0 for a
        free row) and stops after the end id; a stopped row is frozen (its
        last token rewritten at its last position, the same keys and
        values), so it writes no position past its budget. The loop ends
        when every row has stopped or after `steps_per_call` steps. Returns
        `(pool, ids (N, steps_per_call) int32, log_probs (N, steps_per_call)
        float32)`: row `r`'s tokens in order, the first
        `min(budgets[r], steps_per_call)` of them up to the first end id
        meaningful (the caller reads as far as its own rules allow).
        """
        count = self.steps_per_call
        tokens = ops.cast(tokens, "int32")
        positions = ops.cast(positions, "int32")
        budgets = ops.cast(budgets, "int32")
        rows = ops.shape(tokens)[0]
        columns = ops.arange(count, dtype="int32")[None, :]
        end = self.special_ids.end

        def cond(i, pool, tokens, positions, done, ids, gains):
            return ops.logical_and(i < count, ops.logical_not(ops.all(done)))

        def body(i, pool, tokens, positions, done, ids, gains):
            pool, chosen, gained = self.step_function(pool, tokens, positions, greedy,
                                                      temperature, top_k, top_p, seed)
            here = columns == i
            ids = ops.where(here, chosen[:, None], ids)
            gains = ops.where(here, gained[:, None], gains)
            tokens = ops.where(done, tokens, chosen)
            positions = ops.where(done, positions, positions + 1)
            done = done | (chosen == end) | (i + 1 >= budgets)
            return i + 1, pool, tokens, positions, done, ids, gains

        loop_vars = (ops.convert_to_tensor(0, "int32"), pool, tokens, positions, budgets <= 0,
                     ops.zeros((rows, count), "int32"), ops.zeros((rows, count), "float32"))
        _, pool, _, _, _, ids, gains = ops.while_loop(cond, body, loop_vars,
                                                      maximum_iterations=count)
        return pool, ids, gains

    def prefill(self, pool, slot, prompt_ids):
        """`prefill_function`, compiled, then `insert` into row `slot`:
        `prompt_ids` a sequence of ints."""
        prompt_ids = np.asarray(prompt_ids, "int32").reshape(1, -1)
        return self.insert(pool, slot, self._prefill(prompt_ids))

    def steps(self, pool, tokens, positions, budgets, settings):
        """`steps_function`, compiled; `settings` a `SlotSettings`. Returns
        `(pool, ids, log_probs)`, the last two as NumPy arrays
        `(N, steps_per_call)`."""
        pool, ids, gained = self._steps(pool, np.asarray(tokens, "int32"),
                                        np.asarray(positions, "int32"),
                                        np.asarray(budgets, "int32"), *settings.arrays())
        return pool, ops.convert_to_numpy(ids), ops.convert_to_numpy(gained)

    def step(self, pool, tokens, positions, settings):
        """`step_function`, compiled; `settings` a `SlotSettings`. Returns
        `(pool, ids, log_probs)`, the last two as NumPy arrays."""
        pool, ids, gained = self._step(pool, np.asarray(tokens, "int32"),
                                       np.asarray(positions, "int32"), *settings.arrays())
        return pool, ops.convert_to_numpy(ids), ops.convert_to_numpy(gained)

