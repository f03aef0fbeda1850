"""Continuous batching: requests admitted into a pool of slots between steps.

`ContinuousBatcher` keeps up to `num_slots` sequences in flight over a
`SlotDecoder` (or any object with its `initial_pool`/`prefill`/`step`), on a
thread of its own:

1. admit waiting requests into free slots (each prompt prefilled into its
   slot);
2. run one call of the decoder for every slot: `steps`, up to the
   decoder's `steps_per_call` tokens per slot in one compiled loop (each
   slot stops at its end id or its budget of tokens), or `step`, one token,
   for a decoder without it;
3. hand each request its new tokens, and retire the finished ones: the end
   id, `max_new_tokens`, the slot's last position, a stop string, or a
   cancelled request (a client that went away).

Several tokens per call pay the call's fixed cost (its launch, the pool
passed in and out) once for all of them, as multi-step scheduling does in
vLLM; the price is that a new request waits for the call in progress (up to
`steps_per_call` steps) before it is admitted, and that a stop string or a
cancellation is seen after the call (the tokens made past it are dropped).

A request never waits for another to finish, unlike whole-request batching,
where a batch is done when its longest row is.

    batcher = ContinuousBatcher(SlotDecoder(model, 256), num_slots=16,
                                detokenize=lambda rows: [...])
    handle = batcher.submit(GenerationRequest([5, 6, 9], max_new_tokens=64,
                                              on_token=lambda token, text: print(text)))
    result = handle.result()          # a GenerationResult

Stop strings and the text of `on_token` need `detokenize`: a function from a list
of id lists to a list of strings (the batcher calls it once per step for
every slot that needs text). A request's text so far is that of the ids it
generated, read after the prompt's last few tokens (`CONTEXT_TOKENS`) and
with their text taken off, so that a vocabulary whose pieces join
differently at the start of a text (WordPiece's spaces) reads the
continuation as the whole sequence does. `on_token` receives each token
with the text it added. A text that ends in U+FFFD (an incomplete UTF-8
sequence of a byte-level vocabulary) is held back until the next token
completes it, and so is an end of the text that a stop string may begin.
"""

import dataclasses
import logging
import queue
import threading
import time

import numpy as np

from keras_transformer.generation.slots import SlotSettings

log = logging.getLogger(__name__)

# Prompt tokens read before the new ones when detokenizing (see the module docstring).
CONTEXT_TOKENS = 4


@dataclasses.dataclass
class GenerationRequest:
    """One prompt to continue.

    Args:
        prompt_ids: sequence of ints, the prompt (≥ 1 token, its first at
            position 0).
        max_new_tokens: int ≥ 1, the most tokens generated (also bounded by
            the slots' `max_length`).
        greedy: bool, the most probable token at each step (else sampling).
        temperature, top_k, top_p, seed: sampling settings (`DecodingConfig`'s
            meaning), this request's own.
        stop: strings; generation ends where the text first contains one,
            and the text is cut before it.
        on_token: None, or `fn(token_id, text)` called on the batcher's
            thread for each new token (not the end id) with the text it
            added ("" without `detokenize`, or while held back); a last call
            `fn(None, text)` brings text still held back when the end id
            came.
    """

    prompt_ids: list
    max_new_tokens: int = 64
    greedy: bool = True
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    stop: tuple = ()
    on_token: object = None

    def __post_init__(self):
        self.prompt_ids = [int(token) for token in self.prompt_ids]
        if not self.prompt_ids:
            raise ValueError("A prompt needs at least one token (there is nothing to "
                             "continue from). Received: an empty prompt.")
        if self.max_new_tokens < 1:
            raise ValueError(f"`max_new_tokens` must be >= 1. Received: {self.max_new_tokens}")
        if self.temperature <= 0:
            raise ValueError(f"`temperature` must be > 0. Received: {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"`top_k` must be >= 0 (0 = no limit). Received: {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"`top_p` must be in (0, 1]. Received: {self.top_p}")
        if isinstance(self.stop, str):
            self.stop = (self.stop,)
        self.stop = tuple(self.stop)
        if not all(isinstance(text, str) and text for text in self.stop):
            raise ValueError(f"`stop` must be non-empty strings. Received: {self.stop!r}")


@dataclasses.dataclass
class GenerationResult:
    """What a request produced.

    `token_ids`: the new tokens (not the prompt, not the end id);
    `text`: their text (cut before a stop string), when the batcher can
    detokenize, else None; `finish_reason`: `"end"` (the end id), `"length"`
    (`max_new_tokens` or the slot's last position), `"stop"` (a stop
    string) or `"cancelled"`; `log_prob`: the log-probability of the tokens
    chosen (the end id included); `first_token_seconds`: from submission to
    the first new token.
    """

    token_ids: list
    text: object
    finish_reason: str
    log_prob: float
    first_token_seconds: float


class GenerationHandle:
    """A submitted request: `result(timeout)` waits for it, `cancel()`
    frees its slot at the next step."""

    def __init__(self, request):
        self.request = request
        self.submitted = time.perf_counter()
        self.first_token_at = None
        self.token_ids = []
        self.text = ""
        self.sent_chars = 0
        self.log_prob = 0.0
        self.context, self.context_text = [], ""
        self.cancelled = threading.Event()
        self._done = threading.Event()
        self._result = None
        self._error = None
        self._callbacks = []

    def cancel(self):
        self.cancelled.set()

    def done(self):
        return self._done.is_set()

    def add_done_callback(self, callback):
        """`callback(handle)` once the result is in (at once if it is)."""
        self._callbacks.append(callback)
        if self._done.is_set():
            callback(self)

    def result(self, timeout=None):
        if not self._done.wait(timeout):
            raise TimeoutError(f"The request did not finish within {timeout} s.")
        if self._error is not None:
            raise self._error
        return self._result

    def _finish(self, result=None, error=None):
        self._result, self._error = result, error
        self._done.set()
        for callback in list(self._callbacks):
            callback(self)


class ContinuousBatcher:
    """Steps up to `num_slots` requests together, admitting new ones between steps.

    Args:
        decoder: a `SlotDecoder`.
        num_slots: int ≥ 1, the sequences in flight (the step's batch size).
        end_id: the id that ends a sequence (default: the decoder's
            `special_ids.end`).
        detokenize: None, or `fn(list of id lists) → list of str` (for stop
            strings and the text of `on_token`).
        max_waiting: int, requests waiting for a slot before `submit`
            raises `queue.Full`.
        prompt_bucket: int, prompts are padded to a multiple of this many
            tokens before prefill, so that XLA compiles one prefill per
            bucket rather than per prompt length.
    """

    def __init__(self, decoder, num_slots, *, end_id=None, detokenize=None, max_waiting=4096,
                 prompt_bucket=16):
        if num_slots < 1:
            raise ValueError(f"`num_slots` must be >= 1. Received: {num_slots}")
        self.decoder = decoder
        self.num_slots = int(num_slots)
        self.max_length = decoder.max_length
        special = getattr(decoder, "special_ids", None)
        self.end_id = end_id if end_id is not None else special.end
        self.pad_id = special.pad if special is not None else 0
        self.detokenize = detokenize
        self.prompt_bucket = int(prompt_bucket)
        self._waiting = queue.Queue(maxsize=max_waiting)
        self._slots = [None] * self.num_slots
        self._tokens = np.zeros(self.num_slots, "int32")
        self._positions = np.zeros(self.num_slots, "int32")
        self._settings = SlotSettings.empty(self.num_slots)
        self._wake = threading.Condition()
        self._closed = False
        self._failure = None  # the error that stopped the thread
        self._pool = None
        self._length = None  # the positions the pool holds now
        self.steps = 0  # decoder calls so far
        self.steps_per_call = int(getattr(decoder, "steps_per_call", 1))
        self._thread = threading.Thread(target=self._run, name="continuous-batcher",
                                        daemon=True)
        self._thread.start()

    def submit(self, request):
        """Queues `request` (a `GenerationRequest`); returns its `GenerationHandle`.

        Raises:
            ValueError: the prompt leaves no room in a slot (it must be
                shorter than `max_length`), or the batcher cannot honour
                `stop` (no `detokenize`).
            queue.Full: `max_waiting` requests are already waiting.
            RuntimeError: the batcher was closed, or its thread stopped on an
                error.
        """
        if self._closed:
            if self._failure is not None:
                raise RuntimeError("The batcher's thread stopped on an error: "
                                   f"{self._failure!r}")
            raise RuntimeError("The batcher is closed.")
        if len(request.prompt_ids) >= self.max_length:
            raise ValueError(
                f"The prompt has {len(request.prompt_ids)} tokens; a slot holds "
                f"{self.max_length} positions, so prompts must be shorter than that.")
        if request.stop and self.detokenize is None:
            raise ValueError("Stop strings need text: this batcher was made without "
                             "`detokenize`.")
        handle = GenerationHandle(request)
        self._waiting.put_nowait(handle)
        with self._wake:
            self._wake.notify()
        return handle

    def close(self, timeout=10.0):
        """Stops the thread; requests still waiting or in flight are cancelled."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join(timeout)

    @property
    def active(self):
        """The number of slots in use."""
        return sum(handle is not None for handle in self._slots)

    # -- the thread -------------------------------------------------------

    def _run(self):
        try:
            self._rows, self._length = 1, self.decoder.lengths[0]
            self._pool = self.decoder.initial_pool(self._rows, self._length)
            while True:
                with self._wake:
                    while (not self._closed and self._waiting.empty()
                           and not any(self._slots)):
                        self._wake.wait()
                    if self._closed:
                        break
                self._admit()
                if any(self._slots):
                    self._step()
        except Exception as error:  # noqa: BLE001: handed to every request
            self._failure = error
            self._closed = True  # `submit` refuses what no thread would serve
            log.exception("The continuous batcher stopped on an error; its requests get it, "
                          "and new ones are refused.")
            self._fail_all(error)
            return
        self._fail_all(None)

    def _fail_all(self, error):
        handles = [h for h in self._slots if h is not None]
        while not self._waiting.empty():
            handles.append(self._waiting.get_nowait())
        self._slots = [None] * self.num_slots
        for handle in handles:
            if error is None:
                self._retire_handle(handle, "cancelled")
            else:
                handle._finish(error=error)

    def _admit(self):
        # The sequences stay packed in the first rows of the pool (`_compact`).
        while True:
            slot = self.active
            if slot == self.num_slots:
                return
            try:
                handle = self._waiting.get_nowait()
            except queue.Empty:
                return
            if handle.cancelled.is_set():
                self._retire_handle(handle, "cancelled")
                continue
            request = handle.request
            prompt = request.prompt_ids
            width = min(-(-len(prompt) // self.prompt_bucket) * self.prompt_bucket,
                        self.max_length)
            padded = prompt + [self.pad_id] * (width - len(prompt))
            self._fit(slot + 1, width)
            self._pool = self.decoder.prefill(self._pool, slot, padded)
            self._slots[slot] = handle
            self._tokens[slot] = prompt[-1]
            self._positions[slot] = len(prompt) - 1
            self._settings.set(slot, greedy=request.greedy, temperature=request.temperature,
                               top_k=request.top_k, top_p=request.top_p, seed=request.seed)
            if self.detokenize is not None:
                handle.context = prompt[-CONTEXT_TOKENS:]
                handle.context_text = self.detokenize([handle.context])[0]

    def _fit(self, rows=1, needed=0):
        """The pool resized to the fewest rows of `row_sizes` that hold `rows`
        sequences, and the shortest of the decoder's `lengths` that holds
        `needed` positions and every sequence's next position."""
        needed = max([needed] + [int(self._positions[slot]) + 1
                                 for slot, handle in enumerate(self._slots) if handle])
        length = next(length for length in self.decoder.lengths if length >= needed)
        rows = next(size for size in self.row_sizes if size >= max(rows, 1))
        if (rows, length) != (self._rows, self._length):
            self._pool = self.decoder.resize(self._pool, rows, length)
            self._rows, self._length = rows, length

    @property
    def row_sizes(self):
        """The pool's row counts: 1, 2, 4, … and `num_slots`."""
        sizes, size = [], 1
        while size < self.num_slots:
            sizes.append(size)
            size *= 2
        return sizes + [self.num_slots]

    def _compact(self):
        """Moves the last sequences into the rows that retired ones left, so
        that the `active` sequences fill rows `0 … active - 1`."""
        count = self.active
        holes = [row for row in range(count) if self._slots[row] is None]
        sources = [row for row in range(count, self.num_slots) if self._slots[row] is not None]
        for hole, source in zip(holes, sources):
            self._pool = self.decoder.move(self._pool, source, hole)
            self._slots[hole], self._slots[source] = self._slots[source], None
            self._tokens[hole] = self._tokens[source]
            self._positions[hole] = self._positions[source]
            for values in self._settings.arrays():
                values[hole] = values[source]
            self._settings.set(source, greedy=True)

    def _budgets(self, rows):
        """`(rows,)` the most tokens each slot may still make: its
        `max_new_tokens` left and its positions left (0 for a free slot)."""
        budgets = np.zeros(rows, "int32")
        for slot, handle in enumerate(self._slots[:rows]):
            if handle is not None:
                budgets[slot] = min(handle.request.max_new_tokens - len(handle.token_ids),
                                    self.max_length - 1 - int(self._positions[slot]))
        return budgets

    def _step(self):
        """One call of the decoder (`steps_per_call` tokens per slot at most),
        then each slot's new tokens handed over in order."""
        count = self.active
        budgets = self._budgets(count)
        ahead = np.minimum(budgets, self.steps_per_call)
        self._fit(count, needed=int(np.max(self._positions[:count] + ahead)))
        rows = self._rows
        budgets = np.pad(budgets, (0, rows - count))
        settings = self._settings.rows(rows)
        if self.steps_per_call > 1:
            self._pool, ids, log_probs = self.decoder.steps(
                self._pool, self._tokens[:rows], self._positions[:rows], budgets, settings)
        else:
            self._pool, ids, log_probs = self.decoder.step(
                self._pool, self._tokens[:rows], self._positions[:rows], settings)
            ids, log_probs = ids[:, None], log_probs[:, None]
        self.steps += 1
        now = time.perf_counter()
        made = {}  # slot → its new tokens, up to and with an end id
        for slot, handle in enumerate(self._slots[:rows]):
            if handle is None:
                continue
            tokens = [int(token) for token in ids[slot, :ahead[slot]]]
            if self.end_id in tokens:
                tokens = tokens[:tokens.index(self.end_id) + 1]
            made[slot] = tokens
        texts = self._texts(made)
        for slot, tokens in made.items():
            handle = self._slots[slot]
            request = handle.request
            if handle.first_token_at is None:
                handle.first_token_at = now
            for index, token in enumerate(tokens):
                handle.log_prob += float(log_probs[slot, index])
                if token == self.end_id:
                    self._retire(slot, "end")
                    break
                handle.token_ids.append(token)
                self._tokens[slot] = token
                self._positions[slot] += 1
                reason = None
                if slot in texts:
                    handle.text = _after(texts[slot][index], handle.context_text)
                    reason = _stop(handle)
                if reason is None and handle.cancelled.is_set():
                    reason = "cancelled"
                elif reason is None and (len(handle.token_ids) >= request.max_new_tokens
                                         or self._positions[slot] >= self.max_length - 1):
                    reason = "length"
                if request.on_token is not None:
                    request.on_token(token, self._unsent(handle, reason is not None))
                if reason is not None:
                    self._retire(slot, reason)
                    break
        self._compact()

    def _texts(self, made):
        """slot → the text after each of its new tokens (one `detokenize`
        call for every slot whose request reads text: stop strings, a
        stream)."""
        if self.detokenize is None:
            return {}
        reading = [slot for slot, tokens in made.items()
                   if self._slots[slot].request.stop or self._slots[slot].request.on_token]
        rows, owners = [], []
        for slot in reading:
            handle = self._slots[slot]
            ids = handle.context + handle.token_ids
            for token in made[slot]:
                if token == self.end_id:
                    break
                ids = ids + [token]
                rows.append(ids)
                owners.append(slot)
        texts = {slot: [] for slot in reading}
        for slot, text in zip(owners, self.detokenize(rows) if rows else []):
            texts[slot].append(text)
        return texts

    def _unsent(self, handle, final):
        """The text added since the last call ("" without `detokenize`). Unless
        `final`, an end of the text that a stop string may begin, or an
        incomplete UTF-8 sequence, is held back."""
        if self.detokenize is None:
            return ""
        text = handle.text
        if not final:
            keep = max((_overlap(text, stop) for stop in handle.request.stop), default=0)
            text = text[:len(text) - keep].rstrip("\ufffd")
        if len(text) <= handle.sent_chars:
            return ""
        piece = text[handle.sent_chars:]
        handle.sent_chars = len(text)
        return piece

    def _retire(self, slot, reason):
        handle = self._slots[slot]
        self._slots[slot] = None
        self._settings.set(slot, greedy=True)
        self._tokens[slot] = 0
        self._positions[slot] = 0
        self._retire_handle(handle, reason)

    def _retire_handle(self, handle, reason):
        text = None
        if self.detokenize is not None:
            if reason != "stop":
                text = self.detokenize([handle.context + handle.token_ids])[0]
                handle.text = _after(text, handle.context_text)
            text = handle.text
            rest = self._unsent(handle, final=True)
            if rest and handle.request.on_token is not None:
                handle.request.on_token(None, rest)
        first = (handle.first_token_at - handle.submitted
                 if handle.first_token_at is not None else None)
        handle._finish(GenerationResult(list(handle.token_ids), text, reason, handle.log_prob,
                                        first))


def _stop(handle):
    """"stop" when the text holds one of the request's stop strings (the text
    is cut before the first), else None."""
    found = [at for at in (handle.text.find(stop) for stop in handle.request.stop) if at >= 0]
    if not found:
        return None
    handle.text = handle.text[:min(found)]
    return "stop"


def _overlap(text, stop):
    """The length of the longest end of `text` that begins `stop` (a stop
    string the next tokens may complete)."""
    for size in range(min(len(text), len(stop) - 1), 0, -1):
        if stop.startswith(text[-size:]):
            return size
    return 0


def _after(text, context_text):
    """`text` without the context's text it starts with."""
    return text[len(context_text):] if text.startswith(context_text) else text
