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

Requests are held in length groups (`group_lengths`), each a pool of its own
stepped by its own call: a pool's cache is as long as its longest sequence
needs, and a step reads all of it for every row, so short requests kept
apart from long ones do not pay for the long ones' positions.

    batcher = ContinuousBatcher(SlotDecoder(model, 256), num_slots=16,
                                detokenize=lambda rows: [...])
    handle = batcher.submit(GenerationRequest([5, 6, 9], max_new_tokens=64,
                                              on_token=lambda token, text: print(text)))
    result = handle.result()          # a GenerationResult

Stop strings and the text of `on_token` need `detokenize`: a function from a list
of id lists to a list of strings (the batcher calls it once per call of the
decoder, for every slot that needs text). A request's text so far is that of the ids it
generated, read after the prompt's last few tokens (`CONTEXT_TOKENS`) and
with their text taken off, so that a vocabulary whose pieces join
differently at the start of a text (WordPiece's spaces) reads the
continuation as the whole sequence does. `on_token` receives each token
with the text it added. A text that ends in U+FFFD (an incomplete UTF-8
sequence of a byte-level vocabulary) is held back until the next token
completes it, and so is an end of the text that a stop string may begin.
"""

import logging
import queue
import threading
import time

import numpy as np

from keras_transformer.generation.requests import (  # noqa: F401 (importable from here too)
    GenerationHandle,
    GenerationRequest,
    GenerationResult,
)
from keras_transformer.generation.slots import SlotSettings

log = logging.getLogger(__name__)

# Prompt tokens read before the new ones when detokenizing (see the module docstring).
CONTEXT_TOKENS = 4


class ContinuousBatcher:
    """Steps up to `num_slots` requests together, admitting new ones between steps.

    Requests are held in length groups, each a pool of `num_slots` slots of
    its own: a request goes to the first group whose `group_lengths` bound
    holds its prompt and `max_new_tokens`. A pool's cache is as long as its
    longest sequence needs (one of the decoder's `lengths`), and attention
    reads the whole of it at every step, so short requests kept apart from
    long ones never pay for the long ones' positions. The groups are stepped
    one after another, each by one call.

    Args:
        decoder: a `SlotDecoder`.
        num_slots: int ≥ 1, the sequences in flight in each length group
            (the step's batch size).
        end_id: the id that ends a sequence (default: the decoder's
            `special_ids.end`).
        detokenize: None, or `fn(list of id lists) → list of str` (for stop
            strings and the text of `on_token`).
        max_waiting: int, requests waiting for a slot in a group before
            `submit` raises `queue.Full`.
        prompt_bucket: int, prompts are padded to a multiple of this many
            tokens before prefill, so that XLA compiles one prefill per
            bucket rather than per prompt length.
        group_lengths: `"auto"`, None, or increasing ints: the most
            positions (prompt plus `max_new_tokens`) of each group's requests
            but the last, which takes the rest. `"auto"`: one bound, the
            longest of the decoder's `lengths` up to half its `max_length`
            (none if there is no such length). None: one group.
    """

    def __init__(self, decoder, num_slots, *, end_id=None, detokenize=None, max_waiting=4096,
                 prompt_bucket=16, group_lengths="auto"):
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
        self.group_lengths = self._bounds(group_lengths)
        self._groups = [_SlotGroup(self, max_waiting) for _ in self.group_lengths]
        self._wake = threading.Condition()
        self._closed = False
        self._failure = None  # the error that stopped the thread
        self.steps = 0  # decoder calls so far
        self.steps_per_call = int(getattr(decoder, "steps_per_call", 1))
        self._thread = threading.Thread(target=self._run, name="continuous-batcher",
                                        daemon=True)
        self._thread.start()

    def _bounds(self, group_lengths):
        if isinstance(group_lengths, str):
            if group_lengths != "auto":
                raise ValueError('`group_lengths` must be "auto", None or a list of ints. '
                                 f"Received: {group_lengths!r}")
            lengths = getattr(self.decoder, "lengths", [self.max_length])
            group_lengths = [length for length in lengths
                             if length <= self.max_length // 2][-1:]
        bounds = [int(bound) for bound in group_lengths or []]
        if bounds != sorted(set(bounds)) or any(not 0 < b < self.max_length for b in bounds):
            raise ValueError("`group_lengths` must increase, each between 1 and "
                             f"max_length - 1 ({self.max_length - 1}). Received: {bounds}")
        return bounds + [self.max_length]

    def submit(self, request):
        """Queues `request` (a `GenerationRequest`); returns its `GenerationHandle`.

        Raises:
            ValueError: the prompt leaves no room in a slot (it must be
                shorter than `max_length`), or the batcher cannot honour
                `stop` (no `detokenize`).
            queue.Full: `max_waiting` requests are already waiting in its
                group.
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
        positions = len(request.prompt_ids) + request.max_new_tokens
        group = next(group for group, bound in zip(self._groups, self.group_lengths)
                     if positions <= bound or bound == self.max_length)
        group.waiting.put_nowait(handle)
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
        return sum(group.active for group in self._groups)

    @property
    def row_sizes(self):
        """A pool's row counts: 1, 2, 4, … and `num_slots`."""
        sizes, size = [], 1
        while size < self.num_slots:
            sizes.append(size)
            size *= 2
        return sizes + [self.num_slots]

    # -- the thread -------------------------------------------------------

    def _idle(self):
        return all(group.waiting.empty() and not group.active for group in self._groups)

    def _run(self):
        try:
            for group in self._groups:
                group.start()
            while True:
                with self._wake:
                    while not self._closed and self._idle():
                        self._wake.wait()
                    if self._closed:
                        break
                for group in self._groups:
                    group.admit()
                for group in self._groups:
                    if group.active:
                        group.step()
                        self.steps += 1
        except Exception as error:  # noqa: BLE001: handed to every request
            self._failure = error
            self._closed = True  # `submit` refuses what no thread would serve
            log.exception("The continuous batcher stopped on an error; its requests get it, "
                          "and new ones are refused.")
            self._fail_all(error)
            return
        self._fail_all(None)

    def _fail_all(self, error):
        handles = []
        for group in self._groups:
            handles += group.clear()
        for handle in handles:
            if error is None:
                self._retire_handle(handle, "cancelled")
            else:
                handle._finish(error=error)

    def _texts(self, made):
        """handle → the text after each of its new tokens, for `made`, a
        dict handle → new tokens (one `detokenize` call for every request
        that reads text: stop strings, a stream)."""
        if self.detokenize is None:
            return {}
        reading = [handle for handle in made
                   if handle.request.stop or handle.request.on_token]
        rows, owners = [], []
        for handle in reading:
            ids = handle.context + handle.token_ids
            for token in made[handle]:
                if token == self.end_id:
                    break
                ids = ids + [token]
                rows.append(ids)
                owners.append(handle)
        texts = {handle: [] for handle in reading}
        for handle, text in zip(owners, self.detokenize(rows) if rows else []):
            texts[handle].append(text)
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


class _SlotGroup:
    """One length group of a `ContinuousBatcher`: its waiting requests, its
    pool of slots on the decoder, and each slot's token, position and
    settings. The sequences stay packed in the pool's first rows."""

    def __init__(self, batcher, max_waiting):
        self.batcher = batcher
        self.decoder = batcher.decoder
        self.waiting = queue.Queue(maxsize=max_waiting)
        self.slots = [None] * batcher.num_slots
        self.tokens = np.zeros(batcher.num_slots, "int32")
        self.positions = np.zeros(batcher.num_slots, "int32")
        self.settings = SlotSettings.empty(batcher.num_slots)
        self.pool = None
        self.rows = self.length = None  # the pool's shape now

    def start(self):
        self.rows, self.length = 1, self.decoder.lengths[0]
        self.pool = self.decoder.initial_pool(self.rows, self.length)

    @property
    def active(self):
        return sum(handle is not None for handle in self.slots)

    def clear(self):
        """Empties the group; returns the handles it held or had waiting."""
        handles = [h for h in self.slots if h is not None]
        while not self.waiting.empty():
            handles.append(self.waiting.get_nowait())
        self.slots = [None] * len(self.slots)
        return handles

    def admit(self):
        batcher = self.batcher
        while True:
            slot = self.active
            if slot == len(self.slots):
                return
            try:
                handle = self.waiting.get_nowait()
            except queue.Empty:
                return
            if handle.cancelled.is_set():
                batcher._retire_handle(handle, "cancelled")
                continue
            request = handle.request
            prompt = request.prompt_ids
            width = min(-(-len(prompt) // batcher.prompt_bucket) * batcher.prompt_bucket,
                        batcher.max_length)
            padded = prompt + [batcher.pad_id] * (width - len(prompt))
            self.fit(slot + 1, width)
            self.pool = self.decoder.prefill(self.pool, slot, padded)
            self.slots[slot] = handle
            self.tokens[slot] = prompt[-1]
            self.positions[slot] = len(prompt) - 1
            self.settings.set(slot, greedy=request.greedy, temperature=request.temperature,
                              top_k=request.top_k, top_p=request.top_p, seed=request.seed)
            if batcher.detokenize is not None:
                handle.context = prompt[-CONTEXT_TOKENS:]
                handle.context_text = batcher.detokenize([handle.context])[0]

    def fit(self, rows=1, needed=0):
        """The pool resized to the fewest rows of `row_sizes` that hold `rows`
        sequences, and the shortest of the decoder's `lengths` that holds
        `needed` positions and every sequence's next position."""
        needed = max([needed] + [int(self.positions[slot]) + 1
                                 for slot, handle in enumerate(self.slots) if handle])
        length = next(length for length in self.decoder.lengths if length >= needed)
        rows = next(size for size in self.batcher.row_sizes if size >= max(rows, 1))
        if (rows, length) != (self.rows, self.length):
            self.pool = self.decoder.resize(self.pool, rows, length)
            self.rows, self.length = rows, length

    def compact(self):
        """Moves the last sequences into the rows that retired ones left, so
        that the `active` sequences fill rows `0 … active - 1`."""
        count = self.active
        holes = [row for row in range(count) if self.slots[row] is None]
        sources = [row for row in range(count, len(self.slots)) if self.slots[row] is not None]
        for hole, source in zip(holes, sources):
            self.pool = self.decoder.move(self.pool, source, hole)
            self.slots[hole], self.slots[source] = self.slots[source], None
            self.tokens[hole] = self.tokens[source]
            self.positions[hole] = self.positions[source]
            for values in self.settings.arrays():
                values[hole] = values[source]
            self.settings.set(source, greedy=True)

    def budgets(self, rows):
        """`(rows,)` the most tokens each slot may still make: its
        `max_new_tokens` left and its positions left (0 for a free slot)."""
        budgets = np.zeros(rows, "int32")
        for slot, handle in enumerate(self.slots[:rows]):
            if handle is not None:
                budgets[slot] = min(handle.request.max_new_tokens - len(handle.token_ids),
                                    self.batcher.max_length - 1 - int(self.positions[slot]))
        return budgets

    def step(self):
        """One call of the decoder (`steps_per_call` tokens per slot at most),
        then each slot's new tokens handed over in order."""
        batcher = self.batcher
        count = self.active
        budgets = self.budgets(count)
        ahead = np.minimum(budgets, batcher.steps_per_call)
        self.fit(count, needed=int(np.max(self.positions[:count] + ahead)))
        rows = self.rows
        budgets = np.pad(budgets, (0, rows - count))
        settings = self.settings.rows(rows)
        if batcher.steps_per_call > 1:
            self.pool, ids, log_probs = self.decoder.steps(
                self.pool, self.tokens[:rows], self.positions[:rows], budgets, settings)
        else:
            self.pool, ids, log_probs = self.decoder.step(
                self.pool, self.tokens[:rows], self.positions[:rows], settings)
            ids, log_probs = ids[:, None], log_probs[:, None]
        now = time.perf_counter()
        made = {}  # handle → its new tokens, up to and with an end id
        for slot, handle in enumerate(self.slots[:rows]):
            if handle is None:
                continue
            tokens = [int(token) for token in ids[slot, :ahead[slot]]]
            if batcher.end_id in tokens:
                tokens = tokens[:tokens.index(batcher.end_id) + 1]
            made[handle] = tokens
        texts = batcher._texts(made)
        for slot, handle in enumerate(self.slots[:rows]):
            if handle is None:
                continue
            request = handle.request
            if handle.first_token_at is None:
                handle.first_token_at = now
            for index, token in enumerate(made[handle]):
                handle.log_prob += float(log_probs[slot, index])
                if token == batcher.end_id:
                    self.retire(slot, "end")
                    break
                handle.token_ids.append(token)
                self.tokens[slot] = token
                self.positions[slot] += 1
                reason = None
                if handle in texts:
                    handle.text = _after(texts[handle][index], handle.context_text)
                    reason = _stop(handle)
                if reason is None and handle.cancelled.is_set():
                    reason = "cancelled"
                elif reason is None and (len(handle.token_ids) >= request.max_new_tokens
                                         or self.positions[slot] >= batcher.max_length - 1):
                    reason = "length"
                if request.on_token is not None:
                    request.on_token(token, batcher._unsent(handle, reason is not None))
                if reason is not None:
                    self.retire(slot, reason)
                    break
        self.compact()

    def retire(self, slot, reason):
        handle = self.slots[slot]
        self.slots[slot] = None
        self.settings.set(slot, greedy=True)
        self.tokens[slot] = 0
        self.positions[slot] = 0
        self.batcher._retire_handle(handle, reason)


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
