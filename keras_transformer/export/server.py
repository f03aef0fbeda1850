"""A local HTTP server that speaks TensorFlow Serving's REST predict API.

    keras-transformer serve saved_models/translator --port 8501

serves the highest version under `saved_models/translator/` as model
`translator` (the directory's name), so clients written for TF Serving work
unchanged:

- `POST /v1/models/<name>:predict` (or `/v1/models/<name>/versions/<v>:predict`)
  with `{"instances": ["text", ...]}` (or `[{"text": "..."}, ...]`) answers
  `{"predictions": [{"translation": ..., "token_ids": [...], "scores": ...}]}`;
  with `{"inputs": ["text", ...]}` (or `{"inputs": {"text": [...]}}`) answers
  `{"outputs": {"translation": [...], "token_ids": [[...]], "scores": [...]}}`.
  A text generator's model takes `prompt` instead of `text` and answers `text`.
  `"signature_name"` picks another signature (`translate_ids` takes
  `source_ids`).
- `GET /v1/models/<name>` answers the version status.

Under load: concurrent requests are batched into one model call
(`keras_transformer.export.batching`: `max_batch_size`,
`batch_timeout_micros`, a bounded queue); a full queue, or more than
`max_connections` open connections, is answered 503 with `Retry-After`, never
a reset connection; the listen backlog holds `max_connections` connections.
Request bodies are limited to `max_body_bytes` (8 MiB by default: 413 above).
Bad requests (not JSON, JSON nested too deeply, a missing, negative or
non-numeric `Content-Length`, wrong fields or types, an unknown model, more
than `max_batch` instances) get a 4xx answer with `{"error": "..."}`; a
failure of the server itself is a 500 that names what failed; either way the
server keeps serving. SIGTERM (or Ctrl-C) stops it gracefully: no new
connections, the requests in flight are answered, exit status 0. It needs
TensorFlow and tensorflow-text only.
"""

import os
import signal
import threading

import numpy as np
import tensorflow as tf

from keras_transformer._optional import require
from keras_transformer.export.batching import Batcher, QueueFull
from keras_transformer.export.http_app import HTTPServer, RequestError, read_json_object
# Deprecated (`http.server`), kept importable from here.
from keras_transformer.export.legacy_http import ModelHTTPServer, make_handler  # noqa: F401
from keras_transformer.export.saved_model import versions



def latest_version(base_dir):
    """The newest version of `base_dir` (`saved_model.versions`), as a string."""
    numbers = versions(base_dir)
    if not numbers:
        raise FileNotFoundError(
            f"No SavedModel version in {base_dir!r}: expected numbered directories "
            "(saved_models/<name>/<version>/) as export_saved_model writes them."
        )
    return str(numbers[-1])


def load_saved_model(path):
    """`tf.saved_model.load(path)`, with an error that names the file when it fails.

    Imports tensorflow-text first (the `serving` extra): importing it registers
    the tokenizer ops that the exported graphs call, without which loading fails.
    """
    require("tensorflow_text", "serving", "Loading an exported model (the tokenizer ops of "
                                          "the graph)")
    try:
        return tf.saved_model.load(path)
    except (OSError, ValueError, tf.errors.OpError) as error:
        raise ValueError(
            f"Could not load the SavedModel at {path!r} (saved_model.pb or variables/ "
            f"missing, truncated or corrupted?): {type(error).__name__}: "
            f"{str(error).splitlines()[0][:300]}") from error


def load_model(path, num_batch_threads=1, intra_op_threads=None):
    """A version directory as what serves it: a loaded SavedModel, or a
    `CTranslate2Model` for a directory `to_ctranslate2` wrote (same
    signatures; its threads: `num_batch_threads` × `intra_op_threads`)."""
    from keras_transformer.export.ctranslate2_serving import (
        CTranslate2Model,
        is_ctranslate2_directory,
    )

    if is_ctranslate2_directory(path):
        return CTranslate2Model(path, inter_threads=num_batch_threads,
                                intra_threads=intra_op_threads or 0)
    return load_saved_model(path)


def is_model_version(path):
    """Whether `path` is one version (a SavedModel or a CTranslate2 directory)."""
    from keras_transformer.export.ctranslate2_serving import is_ctranslate2_directory

    return (os.path.exists(os.path.join(path, "saved_model.pb"))
            or is_ctranslate2_directory(path))


class ModelServer:
    """Loads the newest version of `base_dir` and answers predict requests.

    Args:
        base_dir: `saved_models/<name>`; the model is served as `<name>`.
            A version is a SavedModel or a CTranslate2 directory
            (`export_ctranslate2`), served with the same API.
        max_batch: the most instances one request may carry.
        max_chars: longer texts are cut to this many characters (the model
            truncates to its token limit anyway; this bounds the tokenizer's
            work on huge inputs).
        batching: run concurrent requests together (see
            `keras_transformer.export.batching`); False runs each request
            alone, one at a time.
        max_batch_size, batch_timeout_micros, max_queued_instances,
            num_batch_threads: the batching settings (TF Serving's names).
        intra_op_threads: a CTranslate2 directory's threads per batch
            (TensorFlow's are set by `set_thread_layout`).
        num_slots: a text generator's sequences decoded together by
            continuous batching (`:generate`, see
            `keras_transformer.export.generation_service`); 0 runs
            `:generate` through the whole-search signature instead.
        group_lengths: the continuous batcher's length groups (`"auto"`,
            None for one group, or the bounds; see `ContinuousBatcher`).
    """

    def __init__(self, base_dir, max_batch=1024, max_chars=10_000, *, batching=True,
                 max_batch_size=64, batch_timeout_micros=2000, max_queued_instances=2048,
                 num_batch_threads=1, intra_op_threads=None, num_slots=16,
                 group_lengths="auto"):
        self.base_dir = os.path.abspath(base_dir)
        self.name = os.path.basename(self.base_dir.rstrip("/"))
        self.version = latest_version(self.base_dir)
        self.model = load_model(os.path.join(self.base_dir, self.version),
                                num_batch_threads, intra_op_threads)
        self.max_batch = max_batch
        self.max_chars = max_chars
        self._lock = threading.Lock()
        self.batcher = None
        if batching:
            self.batcher = Batcher(lambda key, values: self._call(key, values),
                                   max_batch_size=max_batch_size,
                                   batch_timeout_micros=batch_timeout_micros,
                                   max_queued_instances=max_queued_instances,
                                   num_batch_threads=num_batch_threads)
        self.generation = None
        if num_slots:
            from keras_transformer.export.generation_service import GenerationService

            self.generation = GenerationService.of(self.model, num_slots=num_slots,
                                                   max_waiting=max_queued_instances,
                                                   max_chars=max_chars,
                                                   group_lengths=group_lengths)

    def close(self):
        """Answers what is queued, then stops the batching worker and the
        continuous batcher."""
        if self.batcher is not None:
            self.batcher.stop()
        if self.generation is not None:
            self.generation.close()

    def _call(self, key, values):
        """One model call: `key` = (signature name, input name); arrays out."""
        signature_name, input_name = key[:2]
        signature = self.model.signatures[signature_name]
        dtype = tf.string if isinstance(values, list) else tf.int32
        outputs = signature(**{input_name: tf.constant(values, dtype)})
        return {name: value.numpy() for name, value in outputs.items()}

    def _run(self, signature_name, input_name, values):
        if self.batcher is None or len(values) == 0:
            with self._lock:  # one request at a time through the model
                return self._call((signature_name, input_name), values)
        shape = () if isinstance(values, list) else values.shape[1:]
        try:
            return self.batcher.submit((signature_name, input_name, shape), values)
        except QueueFull as error:
            raise RequestError.busy(error) from None

    def _signature(self, name):
        signatures = self.model.signatures
        if name not in signatures:
            raise RequestError(400, f"Unknown signature_name {name!r}; this model has "
                                    f"{sorted(signatures)}.")
        return signatures[name]

    def check_model(self, name, version):
        """Raises a 404 `RequestError` unless `name` (and `version`, when
        given) is what this server serves."""
        self._check_model(name, version)

    def parse_whole_search(self, body):
        """A `:generate` request for a model without step functions:
        `(prompt, None, stream)`; settings other than the prompt are refused
        (the whole search runs as exported)."""
        if "generate" not in self.model.signatures:
            raise RequestError(400, f"Model {self.name!r} does not generate text (it has no "
                                    "'generate' signature); use :predict.")
        request = read_json_object(body, "A generate request must be a JSON object with "
                                         "'prompt'")
        extra = set(request) - {"prompt", "stream"}
        if extra:
            raise RequestError(400, f"This model runs its exported search only (no step "
                                    f"functions, or --slots 0): {sorted(extra)} cannot be set "
                                    "per request.")
        prompt = request.get("prompt")
        if not isinstance(prompt, str):
            raise RequestError(400, "'prompt' must be a string.")
        return prompt[: self.max_chars], None, bool(request.get("stream", False))

    def whole_search(self, prompt):
        """The `:generate` answer of the exported whole search, waiting."""
        from keras_transformer.export.generation_service import whole_search_answer

        with self._lock:
            return whole_search_answer(self.model, prompt)

    def _check_model(self, name, version):
        if name != self.name:
            raise RequestError(404, f"Model {name!r} is not served here; this server "
                                    f"serves {self.name!r}.")
        if version is not None and version != self.version:
            raise RequestError(404, f"Version {version} of {name!r} is not served; "
                                    f"version {self.version} is.")

    def status(self, name, version):
        self._check_model(name, version)
        return {"model_version_status": [{"version": self.version, "state": "AVAILABLE",
                                          "status": {"error_code": "OK",
                                                     "error_message": ""}}]}

    def predict(self, name, version, body):
        """The answer to a predict request: `body` (JSON bytes) → a JSON-ready dict.

        Raises:
            RequestError: a bad request (4xx) or a full queue (503).
        """
        return self.respond(self.parse(name, version, body))

    def respond(self, request):
        """The answer to a parsed request, waiting for the model (see `predict`)."""
        try:
            outputs = self.run(request)
        except tf.errors.InvalidArgumentError as error:
            return self.answer(request, None, error)
        return self.answer(request, outputs)

    def parse(self, name, version, body):
        """A predict request, checked: a `PredictRequest` (what `submit` and
        `answer` take), or a `RequestError` for the client."""
        self._check_model(name, version)
        request = read_json_object(
            body, "The request must be a JSON object with 'instances' or 'inputs'")
        signature_name = request.get("signature_name", "serving_default")
        signature = self._signature(signature_name)
        ((input_name, spec),) = signature.structured_input_signature[1].items()
        if ("instances" in request) == ("inputs" in request):
            raise RequestError(400, "The request must have exactly one of 'instances' "
                                    "(row format) or 'inputs' (columnar format).")
        row_format = "instances" in request
        values = request["instances"] if row_format else request["inputs"]
        if isinstance(values, dict):
            if set(values) != {input_name}:
                raise RequestError(400, f"Expected the input {input_name!r}. "
                                        f"Received: {sorted(values)}.")
            values = values[input_name]
        if not isinstance(values, list):
            raise RequestError(400, "'instances'/'inputs' must be a list. "
                                    f"Received a {type(values).__name__}.")
        values = [v[input_name] if isinstance(v, dict) and input_name in v else v
                  for v in values]
        if len(values) > self.max_batch:
            raise RequestError(413, f"{len(values)} instances in one request; the limit is "
                                    f"{self.max_batch}. Split the request.")
        values = self._check_values(input_name, values, spec.dtype)
        return PredictRequest((signature_name, input_name), values, row_format)

    def submit(self, request, callback):
        """Queues a parsed request on the batching queue without waiting:
        `callback(outputs, error)` runs in a batching thread when it is done.
        Returns False (nothing queued) when the server does not batch, or the
        request is empty: run it with `predict`'s `_run` instead.

        Raises:
            RequestError: 503 with `Retry-After` when the queue is full.
        """
        if self.batcher is None or len(request.values) == 0:
            return False
        shape = () if isinstance(request.values, list) else request.values.shape[1:]
        try:
            self.batcher.submit_nowait((*request.key, shape), request.values, callback)
        except QueueFull as error:
            raise RequestError.busy(error) from None
        return True

    def run(self, request):
        """A parsed request through the model (batched, or alone), waiting."""
        return self._run(*request.key, request.values)

    def answer(self, request, outputs, error=None):
        """The JSON-ready answer to `request` from the model's `outputs`, or
        the `RequestError` that `error` (the model call's) means."""
        if isinstance(error, tf.errors.InvalidArgumentError):  # e.g. ids over the vocabulary
            lines = [line for line in error.message.splitlines() if "must be" in line]
            raise RequestError(400, (lines or [error.message])[0].strip()[:300]) from None
        if error is not None:
            raise error
        outputs = {key: _to_json(value) for key, value in outputs.items()}
        if not request.row_format:
            return {"outputs": outputs}
        keys = sorted(outputs)
        return {"predictions": [dict(zip(keys, row))
                                for row in zip(*(outputs[k] for k in keys))]}

    def _check_values(self, input_name, values, dtype):
        """The request's values as the model takes them: a list of strings, or
        an int32 array `(B, L)`."""
        if dtype == tf.string:  # `text` of a translator, `prompt` of a text generator
            if not all(isinstance(v, str) for v in values):
                raise RequestError(400, f"Every instance of '{input_name}' must be a string. "
                                        f"Received: {[type(v).__name__ for v in values][:5]}")
            return [v[: self.max_chars] for v in values]
        try:
            array = np.array(values, dtype=np.int64)
        except (TypeError, ValueError, OverflowError):
            raise RequestError(400, f"'{input_name}' must be a list of equal-length lists of "
                                    "integers.") from None
        if array.ndim != 2 or array.size == 0:
            raise RequestError(400, f"'{input_name}' must be 2-D (batch, length) and "
                                    f"non-empty. Received shape {array.shape}.")
        if array.min() < 0 or array.max() > np.iinfo(np.int32).max:
            raise RequestError(400, f"'{input_name}' holds ids outside [0, 2^31).")
        return array.astype(np.int32)


class PredictRequest:
    """A checked predict request: `key` (signature name, input name), the
    `values` the model takes, and whether it came in the row format."""

    __slots__ = ("key", "values", "row_format")

    def __init__(self, key, values, row_format):
        self.key, self.values, self.row_format = key, values, row_format


def _to_json(array):
    if array.dtype.kind in "SO":
        return [value.decode("utf-8", "replace") for value in array.tolist()]
    return array.tolist()


def set_thread_layout(intra_op_threads=None, inter_op_threads=None):
    """TensorFlow's thread pools (TF Serving's `--tensorflow_intra_op_parallelism`
    and `--tensorflow_inter_op_parallelism`); None leaves TensorFlow's default.

    Must run before TensorFlow executes anything in the process.

    Raises:
        RuntimeError: TensorFlow has started already (the message says so).
    """
    try:
        if intra_op_threads:
            tf.config.threading.set_intra_op_parallelism_threads(intra_op_threads)
        if inter_op_threads:
            tf.config.threading.set_inter_op_parallelism_threads(inter_op_threads)
    except RuntimeError as error:
        raise RuntimeError("TensorFlow's threads can only be set before it runs anything "
                           f"in this process: {error}") from error


def serve(base_dir, host="127.0.0.1", port=8501, ready=None, *, batching=True,
          max_batch_size=64, batch_timeout_micros=2000, max_queued_instances=2048,
          max_connections=1024, max_body_bytes=8 * 1024 * 1024, num_batch_threads=1,
          intra_op_threads=None, inter_op_threads=None, num_slots=16,
          group_lengths="auto"):
    """Serves `base_dir` until SIGTERM or Ctrl-C, then stops gracefully.

    The HTTP side is `keras_transformer.export.http_app.HTTPServer`
    (Starlette on uvicorn). `ready(server)` is called once it listens (in a
    thread of its own, so that the server keeps serving meanwhile). On
    SIGTERM/SIGINT the server stops accepting connections, answers the
    requests in flight and what is queued, and returns 0.
    `num_batch_threads` batches run at once; `intra_op_threads` /
    `inter_op_threads` set TensorFlow's thread pools (see
    `set_thread_layout`): one intra-op thread per batch thread is the fastest
    layout for small models.
    """
    set_thread_layout(intra_op_threads, inter_op_threads)
    model = ModelServer(base_dir, batching=batching, max_batch_size=max_batch_size,
                        batch_timeout_micros=batch_timeout_micros,
                        max_queued_instances=max_queued_instances,
                        num_batch_threads=num_batch_threads, intra_op_threads=intra_op_threads,
                        num_slots=num_slots, group_lengths=group_lengths)
    httpd = HTTPServer(model, host, port, max_connections=max_connections,
                       max_body_bytes=max_body_bytes)
    batching_text = (f"batching up to {max_batch_size} instances, {batch_timeout_micros} µs, "
                     f"{num_batch_threads} batch thread(s)" if batching else "no batching")
    print(f"Serving {model.name!r} version {model.version} on "
          f"http://{host}:{httpd.server_address[1]}/v1/models/{model.name}:predict "
          f"({batching_text})", flush=True)
    if model.generation is not None:
        print(f"Text generation: POST .../{model.name}:generate and :generate_stream, "
              f"{num_slots} sequences decoded together in each of "
              f"{len(model.generation.batcher.group_lengths)} length group(s) (continuous "
              "batching)", flush=True)
    if threading.current_thread() is threading.main_thread():
        # uvicorn handles SIGTERM/SIGINT while it runs and raises them again
        # once it has stopped: these handlers make that a clean exit.
        for number in (signal.SIGTERM, signal.SIGINT):
            signal.signal(number, lambda *_: None)
    if ready:
        threading.Thread(target=_when_listening, args=(httpd, ready), daemon=True).start()
    httpd.serve_forever()
    httpd.server_close()
    finished = not httpd.server.force_exit
    model.close()
    print(f"Stopped serving {model.name!r}"
          + ("." if finished else " (requests still running were dropped)."),
          flush=True)
    return 0


def _when_listening(httpd, ready):
    import time

    while not httpd.server.started and not httpd.server.should_exit:
        time.sleep(0.01)
    if httpd.server.started:
        ready(httpd)
