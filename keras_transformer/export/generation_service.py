"""Text generation served step by step: `:generate` and `:generate_stream`.

A text generator's SavedModel carries its step functions (`slots`, see
`keras_transformer.generation.slot_module`). `GenerationService` runs them
under a `ContinuousBatcher`: up to `num_slots` requests decode together, a
new request joins at the next step instead of waiting for a batch to
finish, and each request has its own settings, stop strings and stream.

The request, a JSON object:

    {"prompt": "ROMEO:",          # required
     "max_new_tokens": 64,        # default: as many as the model's length allows
     "decoding": "sample",        # "greedy" or "sample"; default: the export's
     "temperature": 0.8, "top_k": 20, "top_p": 0.95, "seed": 1,
     "stop": ["\\n\\n", "END"],     # strings that end the continuation
     "stream": false}             # true: server-sent events (as :generate_stream)

Giving `temperature`, `top_k`, `top_p` or `seed` without `decoding` asks for
sampling. The answer:

    {"text": prompt + continuation, "completion": the continuation,
     "token_ids": [...], "finish_reason": "end" | "length" | "stop",
     "log_prob": float, "time_to_first_token": seconds}

A stream sends one `token` event per new token, `{"token_id": id, "text":
the text it added}` (empty while a stop string or a UTF-8 character may
still be completing), then one `done` event with the answer above.

A model exported with beam search, asked without `decoding`, is answered by
its whole-search `generate` signature (no stream of tokens: the `done`
event only). So is a SavedModel without step functions (a model that takes
one position for the whole batch): the server logs so at start.
"""

import logging

import numpy as np
import tensorflow as tf

from keras_transformer.data.special_tokens import SpecialIds
from keras_transformer.export.http_app import RequestError, read_json_object
from keras_transformer.generation.scheduler import ContinuousBatcher, GenerationRequest
from keras_transformer.generation.slot_module import STRATEGY_IDS

_STRATEGIES = {value: key for key, value in STRATEGY_IDS.items()}
_SAMPLING_FIELDS = ("temperature", "top_k", "top_p", "seed")
_FIELDS = {"prompt", "max_new_tokens", "decoding", "stop", "stream", *_SAMPLING_FIELDS}

log = logging.getLogger(__name__)


class SavedSlotDecoder:
    """A `SlotDecoder`'s interface over a loaded SavedModel's `slots` module."""

    def __init__(self, slots):
        self.slots = slots
        config = {key: value.numpy().tolist() for key, value in slots.config().items()}
        self.config = config
        self.max_length = int(config["max_length"])
        self.lengths = [int(length) for length in config["lengths"]]
        self.special_ids = SpecialIds(pad=int(config["pad_id"]), end=int(config["end_id"]))
        # SavedModels exported before `steps` existed step one token per call.
        self.steps_per_call = int(config.get("steps_per_call", 1))
        if not hasattr(slots, "steps"):
            self.steps_per_call = 1

    def initial_pool(self, num_slots, length=None):
        return self.slots.initial_pool(tf.constant(num_slots, tf.int32),
                                       tf.constant(self.max_length if length is None
                                                   else length, tf.int32))

    def resize(self, pool, rows, length):
        return self.slots.resize(pool, tf.constant(rows, tf.int32),
                                 tf.constant(length, tf.int32))

    def move(self, pool, source, target):
        return self.slots.move(pool, tf.constant(source, tf.int32),
                               tf.constant(target, tf.int32))

    def prefill(self, pool, slot, prompt_ids):
        ids = tf.constant(np.asarray(prompt_ids, "int32").reshape(1, -1))
        return self.slots.insert(pool, tf.constant(slot, tf.int32), self.slots.prefill(ids))

    def step(self, pool, tokens, positions, settings):
        greedy, temperature, top_k, top_p, seed = settings.arrays()
        outputs = self.slots.step(pool, tf.constant(tokens), tf.constant(positions),
                                  tf.constant(greedy), tf.constant(temperature),
                                  tf.constant(top_k), tf.constant(top_p), tf.constant(seed))
        return outputs["pool"], outputs["ids"].numpy(), outputs["log_probs"].numpy()

    def steps(self, pool, tokens, positions, budgets, settings):
        if not hasattr(self.slots, "steps"):
            raise AttributeError("This SavedModel has no `steps` function: use `step`.")
        greedy, temperature, top_k, top_p, seed = settings.arrays()
        outputs = self.slots.steps(pool, tf.constant(tokens), tf.constant(positions),
                                   tf.constant(budgets), tf.constant(greedy),
                                   tf.constant(temperature), tf.constant(top_k),
                                   tf.constant(top_p), tf.constant(seed))
        return outputs["pool"], outputs["ids"].numpy(), outputs["log_probs"].numpy()

    def detokenize(self, rows):
        width = max(len(row) for row in rows)
        ids = np.full((len(rows), max(width, 1)), self.special_ids.pad, "int32")
        for index, row in enumerate(rows):
            ids[index, :len(row)] = row
        return [text.decode("utf-8", "replace") for text in self.slots.detokenize(ids).numpy()]

    def tokenize(self, prompt):
        """The prompt's ids as `generate` reads them; [] for a prompt with no
        token (which the exported tokenizer refuses)."""
        try:
            outputs = self.slots.tokenize(tf.constant([prompt]))
        except tf.errors.InvalidArgumentError:
            return []
        length = int(outputs["lengths"].numpy()[0])
        return outputs["ids"].numpy()[0, :length].tolist()


class GenerationService:
    """Continuous batching of a loaded text generator's requests.

    Args:
        model: the loaded SavedModel (a `TextGenerator`'s).
        num_slots: the sequences decoded together in each length group (the
            step's batch).
        group_lengths: the `ContinuousBatcher`'s length groups (`"auto"`,
            None for one group, or the bounds).
        max_waiting: requests waiting for a slot before 503.
        max_chars: a longer prompt is cut to this many characters.

    `GenerationService.of(model, ...)` is None when the model has no step
    functions (then `:generate` runs its whole-search signature).
    """

    def __init__(self, model, num_slots=16, max_waiting=1024, max_chars=10_000,
                 group_lengths="auto"):
        self.model = model
        self.decoder = SavedSlotDecoder(model.slots)
        self.max_chars = max_chars
        self.batcher = ContinuousBatcher(self.decoder, num_slots,
                                         detokenize=self.decoder.detokenize,
                                         max_waiting=max_waiting,
                                         group_lengths=group_lengths)
        self.warm_up()

    def warm_up(self):
        """XLA compiles the step (or steps) at every pool shape (rows × length), and the
        shortest prompts' prefill, before the first client waits for them."""
        from keras_transformer.generation.slots import SlotSettings

        for rows in self.batcher.row_sizes:
            zeros = np.zeros(rows, "int32")
            for length in self.decoder.lengths:
                pool = self.decoder.initial_pool(rows, length)
                if self.decoder.steps_per_call > 1:
                    self.decoder.steps(pool, zeros, zeros, zeros, SlotSettings.empty(rows))
                else:
                    self.decoder.step(pool, zeros, zeros, SlotSettings.empty(rows))
        handle = self.batcher.submit(GenerationRequest([self.decoder.special_ids.pad],
                                                       max_new_tokens=1))
        handle.result()

    @classmethod
    def of(cls, model, **kwargs):
        slots = getattr(model, "slots", None)
        if slots is None or not hasattr(slots, "step"):
            if "generate" in getattr(model, "signatures", {}):
                log.warning("This text generator's SavedModel has no step functions (its "
                            "model takes one position for the whole batch): :generate runs "
                            "its whole search, with whole-request batching.")
            return None
        return cls(model, **kwargs)

    def close(self):
        self.batcher.close()

    @property
    def default_strategy(self):
        return _STRATEGIES[int(self.decoder.config["strategy"])]

    def parse(self, body):
        """The request body → `(prompt text, GenerationRequest fields, stream)`, or a
        `RequestError`; the whole search is asked for with `fields = None`."""
        request = read_json_object(body, "A generate request must be a JSON object with "
                                         "'prompt'")
        unknown = set(request) - _FIELDS
        if unknown:
            raise RequestError(400, f"Unknown field(s) {sorted(unknown)}; a generate request "
                                    f"takes {sorted(_FIELDS)}.")
        prompt = request.get("prompt")
        if not isinstance(prompt, str):
            raise RequestError(400, "'prompt' must be a string. Received: "
                                    f"{type(prompt).__name__}.")
        prompt = prompt[:self.max_chars]
        stream = request.get("stream", False)
        if not isinstance(stream, bool):
            raise RequestError(400, f"'stream' must be true or false. Received: {stream!r}.")
        strategy = request.get("decoding")
        if strategy is None:
            sampling = any(name in request for name in _SAMPLING_FIELDS)
            strategy = "sample" if sampling else self.default_strategy
            if strategy == "beam":
                return prompt, None, stream
        if strategy not in ("greedy", "sample"):
            raise RequestError(400, "'decoding' must be 'greedy' or 'sample' (a beam search "
                                    "runs when the model was exported with one and "
                                    f"'decoding' is left out). Received: {strategy!r}.")
        config = self.decoder.config
        fields = {"greedy": strategy == "greedy",
                  "temperature": _number(request, "temperature", config["temperature"], float),
                  "top_k": _number(request, "top_k", config["top_k"], int),
                  "top_p": _number(request, "top_p", config["top_p"], float),
                  "seed": _number(request, "seed", config["seed"], int),
                  "max_new_tokens": _number(request, "max_new_tokens",
                                            self.decoder.max_length, int),
                  "stop": request.get("stop", [])}
        stop = fields["stop"]
        if isinstance(stop, str):
            fields["stop"] = stop = [stop]
        if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
            raise RequestError(400, "'stop' must be a list of non-empty strings. Received: "
                                    f"{stop!r}.")
        return prompt, fields, stream

    def submit(self, prompt, fields, on_token=None):
        """Queues a parsed request; returns `(GenerationHandle, prompt text)`.

        Raises:
            RequestError: 400 for a bad setting or an empty prompt, 503
                (with `Retry-After`) when `max_waiting` requests wait.
        """
        import queue

        ids = self.decoder.tokenize(prompt)
        if not ids:
            raise RequestError(400, "The prompt has no token to continue from (an empty "
                                    "prompt).")
        try:
            request = GenerationRequest(ids, on_token=on_token, **fields)
            handle = self.batcher.submit(request)
        except ValueError as error:
            raise RequestError(400, str(error)) from None
        except RuntimeError as error:  # the batcher's thread stopped on an error
            raise RequestError(503, f"The generation loop has stopped: {error}") from None
        except queue.Full:
            raise RequestError.busy("every slot is taken and the waiting queue is "
                                    "full.") from None
        handle.prompt_text = self.decoder.detokenize([ids])[0]
        return handle

    @staticmethod
    def answer(handle):
        """The JSON-ready answer of a finished request."""
        result = handle.result()
        completion = result.text or ""
        return {"text": handle.prompt_text + completion, "completion": completion,
                "token_ids": result.token_ids, "finish_reason": result.finish_reason,
                "log_prob": result.log_prob,
                "time_to_first_token": result.first_token_seconds}


def whole_search_answer(model, prompt):
    """The answer of a model's whole-search `generate` signature (beam search,
    or a model without step functions), in `GenerationService.answer`'s shape."""
    signature = model.signatures["serving_default"]
    outputs = signature(prompt=tf.constant([prompt]))
    text = outputs["text"].numpy()[0].decode("utf-8", "replace")
    return {"text": text, "completion": text[len(prompt):] if text.startswith(prompt) else text,
            "token_ids": outputs["token_ids"].numpy()[0].tolist(), "finish_reason": None,
            "log_prob": float(outputs["scores"].numpy()[0]), "time_to_first_token": None}


def _number(request, name, default, kind):
    value = request.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            kind is int and not float(value).is_integer()):
        raise RequestError(400, f"'{name}' must be {'an integer' if kind is int else 'a number'}. "
                                f"Received: {value!r}.")
    return kind(value)
