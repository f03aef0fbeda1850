"""A text generator's step functions, as a `tf.Module` saved beside its signatures.

`TextGenerator` exports its whole search as the `serving_default` and
`generate` signatures (what TF Serving serves). For continuous batching,
`keras-transformer serve` also needs the search in steps: `TextGenerator.slots`
is a `SlotModule` whose `tf.function`s are saved in the same SavedModel, as
functions of the module, not as signatures, so TF Serving loads and serves
the SavedModel as before and never sees them. They hold no variables of
their own: the pool of cache slots is passed in and returned.

- `initial_pool(num_slots, length)` → the pool, a nest of tensors;
- `resize(pool, rows, length)`, `move(pool, source, target)`: the pool cut
  or padded, a row copied (`SlotDecoder.resize`, `SlotDecoder.move`);
- `prefill(prompt_ids (1, P))` → one sequence's cache, `P` positions
  (`SlotDecoder.prefill_function`), and `insert(pool, slot, row)` → the pool
  with it in row `slot`;
- `step(pool, tokens, positions, greedy, temperature, top_k, top_p, seed)`
  → `{"pool", "ids", "log_probs"}` (`SlotDecoder.step_function`), and
  `steps(pool, tokens, positions, budgets, greedy, …, seed)`, up to
  `steps_per_call` of them in one call (`SlotDecoder.steps_function`: what
  the server runs);
- `tokenize(prompt (B,))` → `{"ids" (B, max_length - 1), "lengths" (B,)}`,
  the prompts as `generate` reads them;
- `detokenize(ids (B, L))` → `(B,)` strings, the special ids left out;
- `config()` → `max_length`, the pool `lengths`, `steps_per_call`, the end
  and padding ids, and the exported decoding's settings (the defaults of a
  request).
"""

import tensorflow as tf

from keras_transformer.generation.slots import SlotDecoder

STRATEGY_IDS = {"greedy": 0, "sample": 1, "beam": 2}


class SlotModule(tf.Module):
    """The step functions of a decoder-only model, for export.

    Args:
        model: the decoder-only model (`SlotDecoder` must accept it).
        tokenize: the generator's prompt tokenizer, `(B,)` strings →
            `((B, max_length - 1) ids, (B,) lengths)`, in graph ops.
        detokenize: `(B, L)` ids → `(B,)` strings, in graph ops.
        max_length: int, positions of a slot (the generator's `max_length`).
        special_ids: the generator's `SpecialIds`.
        decoding: the generator's `DecodingConfig` (the request defaults).
        steps_per_call: int, the most tokens per row of one `steps` call.
    """

    def __init__(self, model, tokenize, detokenize, max_length, special_ids, decoding,
                 steps_per_call=8, name="slots"):
        super().__init__(name=name)
        self._decoder = SlotDecoder(model, max_length, special_ids=special_ids,
                                    compile=False, steps_per_call=steps_per_call)
        self._tokenize, self._detokenize = tokenize, detokenize
        self._special_ids = special_ids
        self._max_length = int(max_length)
        self._decoding = decoding
        self._axes = dict(self._decoder.stepper.traits.cache_length_axes)
        pool_spec = self._pool_spec(self._decoder.initial_pool(1))
        scalar = lambda name: tf.TensorSpec([], tf.int32, name=name)  # noqa: E731
        self.initial_pool = tf.function(
            self._decoder.initial_pool, input_signature=[scalar("num_slots"), scalar("length")])
        self.resize = tf.function(self._resize, input_signature=[
            pool_spec, scalar("rows"), scalar("length")])
        self.move = tf.function(self._move, input_signature=[
            pool_spec, scalar("source"), scalar("target")])
        self.insert = tf.function(self._insert, input_signature=[
            pool_spec, scalar("slot"), pool_spec])
        self.prefill = tf.function(
            self._decoder.prefill_function, jit_compile=True,
            input_signature=[tf.TensorSpec([1, None], tf.int32, name="prompt_ids")])
        settings = [tf.TensorSpec([None], dtype, name=name) for name, dtype in (
            ("greedy", tf.bool), ("temperature", tf.float32), ("top_k", tf.int32),
            ("top_p", tf.float32), ("seed", tf.int32))]
        per_row = lambda name: tf.TensorSpec([None], tf.int32, name=name)  # noqa: E731
        self.step = tf.function(
            self._step, jit_compile=True,
            input_signature=[pool_spec, per_row("tokens"), per_row("positions"), *settings])
        self.steps = tf.function(
            self._steps, jit_compile=True,
            input_signature=[pool_spec, per_row("tokens"), per_row("positions"),
                             per_row("budgets"), *settings])

    def _pool_spec(self, example):
        """The pool's specs: any number of slots, any length on the position axes."""
        def spec(tensor, axis=None):
            shape = [None, *tensor.shape[1:]]
            if axis is not None:
                shape[axis] = None
            return tf.TensorSpec(shape, tensor.dtype)

        if not self._axes or not isinstance(example, dict):
            return tf.nest.map_structure(spec, example)
        return {key: tf.nest.map_structure(lambda t, a=self._axes.get(key): spec(t, a), value)
                for key, value in example.items()}

    def _map_lengths(self, function, pool):
        """`function(tensor, axis)` on the tensors with a position axis."""
        if not self._axes or not isinstance(pool, dict):
            return pool
        return {key: tf.nest.map_structure(lambda t, a=self._axes[key]: function(t, a), value)
                if key in self._axes else value for key, value in pool.items()}

    def _resize(self, pool, rows, length):
        """`SlotDecoder.resize` for shapes known only when called."""
        pool = tf.nest.map_structure(lambda t: _fit(t, 0, rows), pool)
        return self._map_lengths(lambda t, axis: _fit(t, axis, length), pool)

    def _move(self, pool, source, target):
        """`SlotDecoder.move`."""
        return tf.nest.map_structure(
            lambda t: tf.tensor_scatter_nd_update(t, [[target]], t[source:source + 1]), pool)

    def _insert(self, pool, slot, row):
        """`SlotDecoder.insert`: `row` fitted to the pool's length, in row `slot`."""
        def fit_like(part, whole, axis):
            return _fit(part, axis, tf.shape(whole)[axis])

        if self._axes and isinstance(pool, dict):
            row = {key: tf.nest.map_structure(
                lambda p, w, a=self._axes[key]: fit_like(p, w, a), value, pool[key])
                if key in self._axes else value for key, value in row.items()}
        return tf.nest.map_structure(
            lambda whole, part: tf.tensor_scatter_nd_update(whole, [[slot]],
                                                            tf.cast(part, whole.dtype)),
            pool, row)

    def _step(self, pool, *args):
        pool, ids, log_probs = self._decoder.step_function(pool, *args)
        return {"pool": pool, "ids": ids, "log_probs": log_probs}

    def _steps(self, pool, *args):
        pool, ids, log_probs = self._decoder.steps_function(pool, *args)
        return {"pool": pool, "ids": ids, "log_probs": log_probs}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="prompt")])
    def tokenize(self, prompt):
        ids, lengths = self._tokenize(prompt)
        return {"ids": ids, "lengths": lengths}

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32, name="ids")])
    def detokenize(self, ids):
        return self._detokenize(ids)

    @tf.function(input_signature=[])
    def config(self):
        decoding = self._decoding
        return {"max_length": tf.constant(self._max_length, tf.int32),
                "lengths": tf.constant(self._decoder.lengths, tf.int32),
                "steps_per_call": tf.constant(self._decoder.steps_per_call, tf.int32),
                "end_id": tf.constant(self._special_ids.end, tf.int32),
                "pad_id": tf.constant(self._special_ids.pad, tf.int32),
                "strategy": tf.constant(STRATEGY_IDS[decoding.strategy], tf.int32),
                "temperature": tf.constant(decoding.temperature, tf.float32),
                "top_k": tf.constant(decoding.top_k, tf.int32),
                "top_p": tf.constant(decoding.top_p, tf.float32),
                "seed": tf.constant(decoding.seed, tf.int32)}


def _fit(tensor, axis, size):
    """`tensor` cut or zero-padded to `size` along `axis` (shapes known when called)."""
    kept = tf.gather(tensor, tf.range(tf.minimum(tf.shape(tensor)[axis], size)), axis=axis)
    missing = size - tf.shape(kept)[axis]
    paddings = tf.scatter_nd([[axis, 1]], [missing], [len(tensor.shape), 2])
    return tf.pad(kept, paddings)
