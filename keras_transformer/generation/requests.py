"""A generation request, its result, and the handle a caller waits on.

`ContinuousBatcher.submit(GenerationRequest(...))` returns a
`GenerationHandle`; `handle.result()` is a `GenerationResult`. (Also
importable from `keras_transformer.generation.scheduler`.)
"""

import dataclasses
import threading
import time


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
