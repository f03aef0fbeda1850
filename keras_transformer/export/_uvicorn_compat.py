"""What `http_app` uses of uvicorn beyond its public `Config`/`Server` API, in one place.

- `json_400_protocol()`: uvicorn's httptools protocol with the 400 answer
  of its HTTP parser in JSON (uvicorn answers plain text), through
  `uvicorn.protocols.http.httptools_impl` (not public); uvicorn's default
  protocol when that module has moved or httptools is missing.
- `open_connections(server)`: the protocols of a `uvicorn.Server`'s open
  connections (`server.server_state.connections`, undocumented); empty if
  that attribute has moved.

If a uvicorn release moves these, this module is what to change; the
serving tests (tests/test_server.py: a bad `Content-Length` answered in
JSON, the connection bound, TCP_NODELAY) show it.
"""

import json

_MALFORMED = json.dumps({
    "error": "Malformed HTTP request: the HTTP parser rejected it (a Content-Length that is "
             "not a non-negative integer, a bad request or header line, ...)."}).encode()


def json_400_protocol():
    """uvicorn's httptools protocol, answering what its parser rejects with
    JSON like every other error; `"auto"` (uvicorn's default, plain-text
    400s) if its internals have moved."""
    try:
        from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
    except ImportError:  # httptools missing, or uvicorn reorganized: plain-text 400s
        return "auto"

    class JSON400Protocol(HttpToolsProtocol):
        def send_400_response(self, msg):
            self.transport.write(b"".join([
                STATUS_LINE[400], b"content-type: application/json\r\n",
                b"content-length: %d\r\n" % len(_MALFORMED), b"connection: close\r\n\r\n",
                _MALFORMED]))
            self.transport.close()

    return JSON400Protocol


def open_connections(server):
    """The protocol objects of `server`'s (a `uvicorn.Server`) open connections."""
    state = getattr(server, "server_state", None)
    return list(getattr(state, "connections", ()))
