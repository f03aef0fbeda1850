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

Bad requests (not JSON, wrong fields or types, an unknown model, more than
`max_batch` instances) get a 4xx answer with `{"error": "..."}`; the server
keeps serving. It needs TensorFlow and tensorflow-text only.
"""

import json
import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import tensorflow as tf
import tensorflow_text  # noqa: F401  (registers the tokenizer ops of the graph)

_PREDICT = re.compile(r"^/v1/models/([^/:]+)(?:/versions/(\d+))?:predict$")
_STATUS = re.compile(r"^/v1/models/([^/:]+)(?:/versions/(\d+))?$")


class RequestError(Exception):
    """A client error: HTTP `status` with a message for the client."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


def latest_version(base_dir):
    names = [n for n in os.listdir(base_dir) if n.isdigit()
             and os.path.isdir(os.path.join(base_dir, n))] if os.path.isdir(base_dir) else []
    if not names:
        raise FileNotFoundError(
            f"No SavedModel version in {base_dir!r}: expected numbered directories "
            "(saved_models/<name>/<version>/) as export_saved_model writes them."
        )
    return max(names, key=int)


def load_saved_model(path):
    """`tf.saved_model.load(path)`, with an error that names the file when it fails."""
    try:
        return tf.saved_model.load(path)
    except (OSError, ValueError, tf.errors.OpError) as error:
        raise ValueError(
            f"Could not load the SavedModel at {path!r} (saved_model.pb or variables/ "
            f"missing, truncated or corrupted?): {type(error).__name__}: "
            f"{str(error).splitlines()[0][:300]}") from error


class ModelServer:
    """Loads the newest version of `base_dir` and answers predict requests.

    Args:
        base_dir: `saved_models/<name>`; the model is served as `<name>`.
        max_batch: the most instances one request may carry.
        max_chars: longer texts are cut to this many characters (the model
            truncates to its token limit anyway; this bounds the tokenizer's
            work on huge inputs).
    """

    def __init__(self, base_dir, max_batch=1024, max_chars=10_000):
        self.base_dir = os.path.abspath(base_dir)
        self.name = os.path.basename(self.base_dir.rstrip("/"))
        self.version = latest_version(self.base_dir)
        self.model = load_saved_model(os.path.join(self.base_dir, self.version))
        self.max_batch = max_batch
        self.max_chars = max_chars
        self._lock = threading.Lock()

    def _signature(self, name):
        signatures = self.model.signatures
        if name not in signatures:
            raise RequestError(400, f"Unknown signature_name {name!r}; this model has "
                                    f"{sorted(signatures)}.")
        return signatures[name]

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
        self._check_model(name, version)
        try:
            request = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise RequestError(400, f"The request body is not valid JSON: {error}") from None
        if not isinstance(request, dict):
            raise RequestError(400, "The request must be a JSON object with 'instances' or "
                                    f"'inputs'. Received a {type(request).__name__}.")
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
        tensor = self._to_tensor(input_name, values, spec.dtype)
        with self._lock:  # one batch at a time through the model
            try:
                outputs = signature(**{input_name: tensor})
            except tf.errors.InvalidArgumentError as error:  # e.g. ids over the vocabulary
                lines = [line for line in error.message.splitlines() if "must be" in line]
                raise RequestError(400, (lines or [error.message])[0].strip()[:300]) from None
        outputs = {key: _to_json(value.numpy()) for key, value in outputs.items()}
        if not row_format:
            return {"outputs": outputs}
        keys = sorted(outputs)
        return {"predictions": [dict(zip(keys, row))
                                for row in zip(*(outputs[k] for k in keys))]}

    def _to_tensor(self, input_name, values, dtype):
        if dtype == tf.string:  # `text` of a translator, `prompt` of a text generator
            if not all(isinstance(v, str) for v in values):
                raise RequestError(400, f"Every instance of '{input_name}' must be a string. "
                                        f"Received: {[type(v).__name__ for v in values][:5]}")
            return tf.constant([v[: self.max_chars] for v in values], tf.string)
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
        return tf.constant(array, tf.int32)


def _to_json(array):
    if array.dtype.kind in "SO":
        return [value.decode("utf-8", "replace") for value in array.tolist()]
    return array.tolist()


def make_handler(server_model):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self, status, payload):
            body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _handle(self, method):
            try:
                path = self.path.split("?")[0]
                if method == "POST":
                    match = _PREDICT.match(path)
                    if not match:
                        raise RequestError(404, f"No such endpoint: POST {path}. Expected "
                                                "/v1/models/<name>:predict.")
                    length = int(self.headers.get("Content-Length") or 0)
                    if length > 64 * 1024 * 1024:
                        raise RequestError(413, f"Request body of {length} bytes is too large.")
                    body = self.rfile.read(length)
                    self._answer(200, server_model.predict(*match.groups(), body))
                else:
                    match = _STATUS.match(path)
                    if not match:
                        raise RequestError(404, f"No such endpoint: GET {path}.")
                    self._answer(200, server_model.status(*match.groups()))
            except RequestError as error:
                self._answer(error.status, {"error": str(error)})
            except Exception as error:  # the server keeps serving
                self._answer(500, {"error": f"{type(error).__name__}: {error}"})

        def do_POST(self):  # noqa: N802
            self._handle("POST")

        def do_GET(self):  # noqa: N802
            self._handle("GET")

        def log_message(self, format, *args):  # quiet unless asked
            if os.environ.get("KERAS_TRANSFORMER_SERVER_LOG"):
                super().log_message(format, *args)

    return Handler


def serve(base_dir, host="127.0.0.1", port=8501, ready=None):
    """Serves `base_dir` until interrupted. `ready(server)` is called once listening."""
    model = ModelServer(base_dir)
    httpd = ThreadingHTTPServer((host, port), make_handler(model))
    print(f"Serving {model.name!r} version {model.version} on "
          f"http://{host}:{httpd.server_address[1]}/v1/models/{model.name}:predict", flush=True)
    if ready:
        ready(httpd)
    try:
        httpd.serve_forever()
    finally:
        httpd.server_close()
