"""The HTTP side of `keras-transformer serve`: TF Serving's REST API as a
Starlette application on uvicorn.

    server = HTTPServer(ModelServer("saved_models/translator"), port=8501)
    server.serve_forever()          # until `shutdown()`, SIGTERM or Ctrl-C

Why Starlette on uvicorn: an asynchronous server holds an idle keep-alive
connection (or, later, a token stream) as a few kilobytes of state instead of
a thread, and uvicorn parses HTTP in C (`httptools`) on `uvloop`. Starlette
is the small routing layer FastAPI is built on; the API here is a handful of
routes and needs none of FastAPI's validation or schema.

The routes (`ROUTES`):

- `POST /v1/models/<name>:predict` and `/v1/models/<name>/versions/<v>:predict`;
- `GET /v1/models/<name>` and `/v1/models/<name>/versions/<v>` (status);
- a text generator's `POST /v1/models/<name>:generate` (JSON) and
  `:generate_stream` (server-sent events, one per token; a client that
  disconnects cancels its request), each also under `/versions/<v>`: see
  `keras_transformer.export.generation_service`.

Anything else is a 404 (405 for a known path with another method) with
`{"error": "..."}`. A predict request is parsed on the event loop
(`ModelServer.parse`) and queued for the batching threads
(`ModelServer.submit`), whose callback resolves a future of the loop: no
thread waits for a batch, and the loop keeps accepting and answering
meanwhile. Without batching, the model runs in worker threads (at most one
per open connection).

Limits, each answered rather than a reset connection:

- more than `max_connections` open connections: 503 with `Retry-After: 1`
  and `Connection: close` (uvicorn's own `limit_concurrency` answers a plain
  503 without `Retry-After`, so it is not used); the listen backlog holds
  `max_connections` connections;
- a full batching queue: 503 with `Retry-After: 1` (`ModelServer`);
- a body over `max_body_bytes`: 413, checked on `Content-Length` before the
  body is read and on a chunked body as it arrives; a POST with neither
  header: 411; a `Content-Length` that is not a non-negative integer, or
  any request the HTTP parser rejects: 400 with `{"error": "..."}` (uvicorn
  says so in plain text; `_uvicorn_compat.json_400_protocol` makes it JSON);
- JSON nested too deeply, and every other bad request: 4xx with
  `{"error": "..."}` (`ModelServer`).

Sockets have TCP_NODELAY (asyncio's and uvloop's default for TCP), so an
answer is not held back by Nagle's algorithm. On `shutdown()` (SIGTERM,
Ctrl-C) the server stops accepting connections, closes the idle ones, and
answers the requests in flight (up to `drain_timeout` seconds).
"""

import asyncio
import json
import socket
import threading

from keras_transformer._optional import require
from keras_transformer.export._uvicorn_compat import json_400_protocol, open_connections
from keras_transformer.export.event_stream import (
    EventStream,
    generation_answer,
    stream_generation,
)

_REQUIRED = ("starlette", "uvicorn", "anyio")


def _modules():
    return [require(name, "serving", "`keras-transformer serve` (the HTTP server)")
            for name in _REQUIRED]


class RequestError(Exception):
    """A client error (or 503): HTTP `status` with a message for the client."""

    def __init__(self, status, message, headers=None):
        super().__init__(message)
        self.status = status
        self.headers = headers or {}

    @classmethod
    def busy(cls, message):
        """503 with `Retry-After: 1`: a full queue, which the client may retry."""
        return cls(503, f"The server is busy: {message} Retry shortly.", {"Retry-After": "1"})


def read_json_object(body, expected):
    """The request body `body` (bytes) as a JSON object, or a 400
    `RequestError`; `expected` ends the message for a body that is JSON but
    not an object ("with 'prompt'")."""
    try:
        request = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RequestError(400, f"The request body is not valid JSON: {error}") from None
    except RecursionError:
        raise RequestError(400, "The request body is JSON nested too deeply.") from None
    if not isinstance(request, dict):
        raise RequestError(400, f"{expected}. Received a {type(request).__name__}.")
    return request


def _json_response(status, payload, headers=None):
    from starlette.responses import Response

    return Response(json.dumps(payload, ensure_ascii=False).encode("utf-8"), status,
                    headers=headers, media_type="application/json")


def _register_convertors():
    """`{name:model_name}`: a model name holds no `/` and no `:`, so that
    `translator:predict` is never read as a model called that."""
    from starlette.convertors import CONVERTOR_TYPES, Convertor, register_url_convertor

    if "model_name" in CONVERTOR_TYPES:
        return

    class ModelName(Convertor):
        regex = "[^/:]+"

        def convert(self, value):
            return value

        def to_string(self, value):
            return str(value)

    register_url_convertor("model_name", ModelName())


_PREDICT_HINT = "Expected POST /v1/models/<name>:predict or GET /v1/models/<name>."


async def _read_body(request, max_body_bytes):
    """The request body, within `max_body_bytes` (413 above)."""
    text = request.headers.get("content-length")
    chunked = "chunked" in request.headers.get("transfer-encoding", "").lower()
    close = {"Connection": "close"}  # the rest of the body is not read
    if text is None and not chunked:
        raise RequestError(411, "A POST needs a Content-Length header (or a chunked body).",
                           close)
    if text is not None:
        if not text.strip().isdigit():
            raise RequestError(400, "Content-Length must be a non-negative integer. "
                                    f"Received: {text[:40]!r}.", close)
        if int(text) > max_body_bytes:
            raise RequestError(413, f"Request body of {int(text)} bytes is too large; the "
                                    f"limit is {max_body_bytes} bytes.", close)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_body_bytes:
            raise RequestError(413, f"Request body of more than {max_body_bytes} bytes is too "
                                    f"large; the limit is {max_body_bytes} bytes.", close)
    return bytes(body)


def make_app(model_server, *, max_body_bytes=8 * 1024 * 1024, max_connections=1024,
             open_connections=None):
    """The Starlette application answering TF Serving's REST API for `model_server`.

    Args:
        model_server: a `ModelServer` (its `predict` and `status` do the work).
        max_body_bytes: the largest request body (413 above).
        max_connections: the most open connections; `open_connections()`
            counting more gets 503 with `Retry-After`.
        open_connections: a function returning the number of open
            connections (`HTTPServer` passes uvicorn's); None: no bound.
    """
    starlette, _, anyio = _modules()
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.routing import Route

    _register_convertors()
    # The model work runs in threads, at most one per open connection.
    limiter = anyio.CapacityLimiter(max(1, max_connections))

    async def answer(request, work, *args):
        """`work(*args)` (a JSON-ready dict, or a `RequestError`) as a response."""
        try:
            return _json_response(200, await work(*args))
        except Exception as error:  # noqa: BLE001 (the server keeps serving)
            return _error_response(request, error)

    def in_thread(function):
        async def run(*args):
            return await anyio.to_thread.run_sync(function, *args, limiter=limiter)
        return run

    async def batched(name, version, body):
        # Parsed here; then queued for the batching threads, whose callback
        # resolves a future of this event loop (no thread waits meanwhile).
        parsed = model_server.parse(name, version, body)
        loop = asyncio.get_running_loop()
        future = loop.create_future()

        def resolve(outputs, error):
            if not future.done():
                future.set_result((outputs, error))

        def done(outputs, error):  # in a batching thread
            try:
                loop.call_soon_threadsafe(resolve, outputs, error)
            except RuntimeError:  # the loop has closed: nobody waits any more
                pass

        if not model_server.submit(parsed, done):  # no batching: the model, alone
            return await in_thread(model_server.respond)(parsed)
        outputs, error = await future
        return model_server.answer(parsed, outputs, error)

    async def predict(request):
        params = request.path_params
        version = params.get("version")
        try:
            body = await _read_body(request, max_body_bytes)
        except RequestError as error:
            return _json_response(error.status, {"error": str(error)}, error.headers)
        return await answer(request, batched, params["name"],
                            None if version is None else str(version), body)

    async def generate(request, stream_route=False):
        params = request.path_params
        version = params.get("version")
        try:
            body = await _read_body(request, max_body_bytes)
            model_server.check_model(params["name"], None if version is None else str(version))
            service = model_server.generation
            if service is None:
                prompt, fields, stream = model_server.parse_whole_search(body)
            else:
                prompt, fields, stream = service.parse(body)
            stream = stream or stream_route
            if fields is None:  # beam search, or no step functions: the whole search
                answer_ = await in_thread(model_server.whole_search)(prompt)
                if stream:
                    return EventStream(None, [("done", answer_)])
                return _json_response(200, answer_)
            if stream:
                return stream_generation(service, prompt, fields)
            return _json_response(200, await generation_answer(service, prompt, fields))
        except Exception as error:  # noqa: BLE001 (the server keeps serving)
            return _error_response(request, error)

    async def generate_stream(request):
        return await generate(request, stream_route=True)

    async def status(request):
        params = request.path_params
        version = params.get("version")
        return await answer(request, in_thread(model_server.status), params["name"],
                            None if version is None else str(version))

    async def no_route(request, error):
        headers = getattr(error, "headers", None) or {}
        if error.status_code == 405:
            message = (f"{request.method} is not allowed on {request.url.path}; it takes "
                       f"{headers.get('Allow', 'another method')}. {_PREDICT_HINT}")
        else:
            message = f"No such endpoint: {request.method} {request.url.path}. {_PREDICT_HINT}"
        return _json_response(error.status_code, {"error": message}, headers)

    app = Starlette(routes=[
        Route("/v1/models/{name:model_name}:predict", predict, methods=["POST"]),
        Route("/v1/models/{name:model_name}/versions/{version:int}:predict", predict,
              methods=["POST"]),
        Route("/v1/models/{name:model_name}:generate", generate, methods=["POST"]),
        Route("/v1/models/{name:model_name}/versions/{version:int}:generate", generate,
              methods=["POST"]),
        Route("/v1/models/{name:model_name}:generate_stream", generate_stream,
              methods=["POST"]),
        Route("/v1/models/{name:model_name}/versions/{version:int}:generate_stream",
              generate_stream, methods=["POST"]),
        Route("/v1/models/{name:model_name}", status, methods=["GET"]),
        Route("/v1/models/{name:model_name}/versions/{version:int}", status, methods=["GET"]),
    ], exception_handlers={HTTPException: no_route})
    if open_connections is None:
        return app
    return _ConnectionBound(app, open_connections, max_connections)


def _error_response(request, error):
    """A `RequestError` as its status; anything else as a 500 naming it."""
    if isinstance(error, RequestError):
        return _json_response(error.status, {"error": str(error)}, error.headers)
    return _json_response(500, {
        "error": f"Internal error while answering {request.method} "
                 f"{request.url.path}: {type(error).__name__}: {error}"})


class _ConnectionBound:
    """ASGI middleware: a request on connection number `max_connections + 1`
    (or later) is answered 503 with `Retry-After` and the connection closed."""

    def __init__(self, app, open_connections, max_connections):
        self.app, self.open_connections = app, open_connections
        self.max_connections = max_connections

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and self.open_connections() > self.max_connections:
            response = _json_response(503, {
                "error": f"The server has {self.max_connections} open connections. "
                         "Retry shortly."}, {"Retry-After": "1", "Connection": "close"})
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


class HTTPServer:
    """uvicorn serving `make_app(model_server)` on a socket it binds.

    Args:
        model_server: a `ModelServer`.
        host, port: where to listen (`port=0`: a free port; see
            `server_address`).
        max_connections: the most open connections (503 with `Retry-After`
            above) and the listen backlog.
        max_body_bytes: the largest request body (413 above).
        idle_timeout: seconds an idle keep-alive connection stays open.
        drain_timeout: seconds `shutdown()` waits for requests in flight.

    `serve_forever()` runs it in the calling thread (in the main thread,
    uvicorn also handles SIGTERM and SIGINT: it stops as `shutdown()` does);
    `start()` runs it in a thread of its own and returns once it listens.
    """

    def __init__(self, model_server, host="127.0.0.1", port=8501, *, max_connections=1024,
                 max_body_bytes=8 * 1024 * 1024, idle_timeout=30, drain_timeout=60):
        _, uvicorn, _ = _modules()
        self.model_server = model_server
        self.socket = socket.create_server((host, port), backlog=max_connections)
        self.server_address = self.socket.getsockname()[:2]
        app = make_app(model_server, max_body_bytes=max_body_bytes,
                       max_connections=max_connections,
                       open_connections=lambda: len(open_connections(self.server)))
        config = uvicorn.Config(app, http=json_400_protocol(), lifespan="off",
                                access_log=False, log_level="error",
                                timeout_keep_alive=idle_timeout, backlog=max_connections,
                                timeout_graceful_shutdown=drain_timeout)
        self.server = uvicorn.Server(config)
        self._thread = None

    def serve_forever(self):
        """Serves until `shutdown()` (or SIGTERM/SIGINT in the main thread),
        then answers the requests in flight and returns."""
        self.server.run(sockets=[self.socket])

    def start(self):
        """`serve_forever()` in a daemon thread; returns once it listens."""
        self._thread = threading.Thread(target=self.serve_forever, name="http", daemon=True)
        self._thread.start()
        while not self.server.started:
            if not self._thread.is_alive():
                raise RuntimeError("The HTTP server stopped while starting.")
            self._thread.join(0.01)
        return self

    def shutdown(self, timeout=None):
        """Stops taking connections, answers the requests in flight, and waits
        for `serve_forever()` to return (in `start()`'s thread)."""
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)

    def server_close(self):
        """Closes the listening socket (already closed after a shutdown)."""
        self.socket.close()

    def connection_sockets(self):
        """The sockets of the open connections (for tests: TCP_NODELAY)."""
        sockets = []
        for protocol in open_connections(self.server):
            transport = getattr(protocol, "transport", None)
            sock = transport.get_extra_info("socket") if transport else None
            if sock is not None:
                sockets.append(sock)
        return sockets


__all__ = ["HTTPServer", "RequestError", "make_app"]
