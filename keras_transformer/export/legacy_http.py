"""Deprecated: `keras-transformer serve`'s former `http.server` front end.

`make_handler(server_model)` and `ModelHTTPServer` served a `ModelServer`
over the standard library's threading HTTP server. `serve` now runs
`keras_transformer.export.http_app.HTTPServer` (Starlette on uvicorn); these
stay importable (also from `keras_transformer.export.server`) for code that
built its own server from them, and warn when used.
"""

import json
import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from keras_transformer.export.http_app import RequestError

_PREDICT = re.compile(r"^/v1/models/([^/:]+)(?:/versions/(\d+))?:predict$")
_STATUS = re.compile(r"^/v1/models/([^/:]+)(?:/versions/(\d+))?$")


def make_handler(server_model, max_body_bytes=8 * 1024 * 1024, idle_timeout=30):
    """Deprecated: the `http.server` request handler class for `server_model`
    (a `ModelServer`), for `ModelHTTPServer`. `serve` runs
    `keras_transformer.export.http_app.HTTPServer` (Starlette on uvicorn).

    `max_body_bytes` bounds a request body (413 above); an idle keep-alive
    connection is closed after `idle_timeout` seconds.
    """
    from keras_transformer import _deprecation

    _deprecation.warn("keras_transformer.export.server.make_handler",
                      "keras_transformer.export.http_app.HTTPServer")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = idle_timeout
        # Headers and body go out as separate writes: without TCP_NODELAY,
        # Nagle's algorithm holds the body until the client's delayed ACK
        # (~40 ms a request on Linux).
        disable_nagle_algorithm = True

        def _answer(self, status, payload, headers=None):
            body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            if getattr(self.server, "draining", False):
                self.close_connection = True
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)

        def _read_body(self):
            text = self.headers.get("Content-Length")
            if self.headers.get("Transfer-Encoding") or text is None:
                self.close_connection = True
                raise RequestError(411, "A POST needs a Content-Length header (chunked "
                                        "transfer encoding is not supported).")
            try:
                length = int(text)
            except ValueError:
                length = -1
            if length < 0:
                self.close_connection = True  # the body's end is unknown
                raise RequestError(400, "Content-Length must be a non-negative integer. "
                                        f"Received: {text[:40]!r}.")
            if length > max_body_bytes:
                self.close_connection = True  # the body is not read
                raise RequestError(413, f"Request body of {length} bytes is too large; the "
                                        f"limit is {max_body_bytes} bytes.")
            return self.rfile.read(length)

        def _handle(self, method):
            track = getattr(self.server, "track_request", None)
            if track:
                track(+1)
            try:
                path = self.path.split("?")[0]
                if method == "POST":
                    match = _PREDICT.match(path)
                    if not match:
                        raise RequestError(404, f"No such endpoint: POST {path}. Expected "
                                                "/v1/models/<name>:predict.")
                    body = self._read_body()
                    self._answer(200, server_model.predict(*match.groups(), body))
                else:
                    match = _STATUS.match(path)
                    if not match:
                        raise RequestError(404, f"No such endpoint: GET {path}.")
                    self._answer(200, server_model.status(*match.groups()))
            except RequestError as error:
                self._answer(error.status, {"error": str(error)}, error.headers)
            except Exception as error:  # noqa: BLE001 (the server keeps serving)
                self._answer(500, {"error": f"Internal error while answering {method} "
                                            f"{self.path}: {type(error).__name__}: {error}"})
            finally:
                if track:
                    track(-1)

        def do_POST(self):  # noqa: N802
            self._handle("POST")

        def do_GET(self):  # noqa: N802
            self._handle("GET")

        def log_message(self, format, *args):  # quiet unless asked
            if os.environ.get("KERAS_TRANSFORMER_SERVER_LOG"):
                super().log_message(format, *args)

    return Handler


class ModelHTTPServer(ThreadingHTTPServer):
    """Deprecated with `make_handler` (use `http_app.HTTPServer`): a threading
    HTTP server with a listen backlog that fits and a bound on
    open connections.

    Up to `max_connections` connections are served at once (a thread each,
    mostly waiting on the batching queue); one more is answered 503 with
    `Retry-After` and closed. `request_queue_size` (the listen backlog) is the
    same bound, so a burst of connections waits in the kernel's queue instead
    of being reset. `drain(timeout)` stops taking connections and waits for the
    requests in flight.
    """

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, handler, max_connections=1024):
        self.request_queue_size = max_connections
        self.max_connections = max_connections
        self._slots = threading.BoundedSemaphore(max_connections)
        self._in_flight = 0
        self._idle = threading.Condition()
        self.draining = False
        super().__init__(address, handler)

    def track_request(self, change):
        with self._idle:
            self._in_flight += change
            self._idle.notify_all()

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):
            try:
                body = json.dumps({"error": f"The server has {self.max_connections} open "
                                            "connections. Retry shortly."}).encode()
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\n"
                                b"Content-Type: application/json\r\nConnection: close\r\n"
                                + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def drain(self, timeout=60.0):
        """Stops accepting connections (the listening socket is closed, so new
        ones are refused) and waits up to `timeout` s for requests in flight.
        Call after `shutdown()`. Returns whether every request finished."""
        self.draining = True
        self.socket.close()
        with self._idle:
            return self._idle.wait_for(lambda: self._in_flight == 0, timeout)
