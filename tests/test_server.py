"""The TF-Serving-style REST server, with real HTTP requests on 127.0.0.1."""

import json
import os
import signal
import threading

import pytest
import tensorflow as tf

from keras_transformer.export import export_saved_model
from keras_transformer.export.http_app import HTTPServer
from keras_transformer.export.server import ModelServer
from tests.helpers import request


@pytest.fixture(scope="module")
def exported_base(translator, tmp_path_factory):
    base = tmp_path_factory.mktemp("serving") / "translator"
    export_saved_model(translator, str(base))
    return str(base)


def start(model, **options):
    """An `HTTPServer` for `model` on a free port of 127.0.0.1, serving in a thread."""
    return HTTPServer(model, "127.0.0.1", 0, **options).start()


@pytest.fixture(scope="module")
def model_server(exported_base):
    model = ModelServer(exported_base, max_batch=8)
    yield model
    model.close()


@pytest.fixture(scope="module")
def server(translator, model_server):
    httpd = start(model_server, max_body_bytes=1024 * 1024)
    yield f"http://127.0.0.1:{httpd.server_address[1]}", translator
    httpd.shutdown()
    httpd.server_close()


def test_row_and_columnar_formats_answer_like_the_translator(server):
    url, translator = server
    texts = ["twenty-one books", "¿Dónde está el niño?"]
    expected = [t.decode("utf-8") for t in
                translator.translate(tf.constant(texts))["translation"].numpy()]
    status, rows = request(f"{url}/v1/models/translator:predict", {"instances": texts})
    assert status == 200
    assert [row["translation"] for row in rows["predictions"]] == expected
    assert set(rows["predictions"][0]) == {"translation", "token_ids", "scores"}
    status, columns = request(f"{url}/v1/models/translator/versions/1:predict",
                              {"inputs": {"text": texts}})
    assert status == 200 and columns["outputs"]["translation"] == expected
    status, rows = request(f"{url}/v1/models/translator:predict",
                           {"instances": [{"text": t} for t in texts]})
    assert status == 200 and [r["translation"] for r in rows["predictions"]] == expected
    status, ids = request(f"{url}/v1/models/translator:predict",
                          {"signature_name": "translate_ids", "inputs": [[5, 6, 7]]})
    assert status == 200 and len(ids["outputs"]["token_ids"][0]) == 16


def test_model_status(server):
    url, _ = server
    status, body = request(f"{url}/v1/models/translator")
    assert status == 200
    assert body["model_version_status"][0] == {
        "version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}
    }


@pytest.mark.parametrize("path, body, code, message", [
    ("translator:predict", b"{not json", 400, "not valid JSON"),
    ("translator:predict", b"\xff\xfe\x00", 400, "not valid JSON"),
    ("translator:predict", [1, 2], 400, "JSON object"),
    ("translator:predict", {"instances": "hello"}, 400, "must be a list"),
    ("translator:predict", {"instances": [1, 2]}, 400, "must be a string"),
    ("translator:predict", {"instances": ["a"], "inputs": ["b"]}, 400, "exactly one"),
    ("translator:predict", {}, 400, "exactly one"),
    ("translator:predict", {"inputs": {"words": ["a"]}}, 400, "Expected the input 'text'"),
    ("translator:predict", {"instances": ["a"], "signature_name": "nope"}, 400,
     "Unknown signature_name"),
    ("translator:predict", {"signature_name": "translate_ids", "inputs": [[1, 2], [3]]}, 400,
     "equal-length"),
    ("translator:predict", {"signature_name": "translate_ids", "inputs": [[-1]]}, 400,
     "outside"),
    ("translator:predict", {"signature_name": "translate_ids", "inputs": [[5, 10**6]]}, 400,
     "source vocabulary size"),
    ("translator:predict", {"instances": ["a"] * 9}, 413, "limit is 8"),
    ("other:predict", {"instances": ["a"]}, 404, "not served here"),
    ("translator/versions/7:predict", {"instances": ["a"]}, 404, "Version 7"),
    ("translator:classify", {"instances": ["a"]}, 404, "No such endpoint"),
])
def test_bad_requests_get_4xx_and_the_server_keeps_serving(server, path, body, code, message):
    url, _ = server
    status, answer = request(f"{url}/v1/models/{path}", body)
    assert status == code and message in answer["error"], answer
    status, _ = request(f"{url}/v1/models/translator:predict", {"instances": ["one book"]})
    assert status == 200


def test_a_corrupted_saved_model_gives_an_error_naming_it(tmp_path, translator):
    base = tmp_path / "broken"
    path = export_saved_model(translator, str(base))
    with open(os.path.join(path, "saved_model.pb"), "r+b") as handle:
        handle.truncate(100)  # a truncated copy
    with pytest.raises(ValueError, match="Could not load the SavedModel at .*broken/1"):
        ModelServer(str(base))
    with pytest.raises(FileNotFoundError, match="No SavedModel version"):
        ModelServer(str(tmp_path / "empty"))


def raw_request(url, method, path, headers=None, body=b""):
    """One request with exactly these headers: `(status, headers, JSON answer)`."""
    import http.client
    import urllib.parse

    address = urllib.parse.urlparse(url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=120)
    try:
        connection.putrequest(method, path)
        for key, value in (headers or {}).items():
            connection.putheader(key, value)
        connection.endheaders()
        if body:
            connection.send(body)
        response = connection.getresponse()
        return response.status, response.headers, json.loads(response.read())  # headers: any case
    finally:
        connection.close()


@pytest.mark.parametrize("headers, body, code, message", [
    ({"Content-Length": "200001"}, b"[" * 100000 + b"]" * 100000 + b"\n", 400,
     "nested too deeply"),
    ({"Content-Length": "-5"}, b"", 400, "non-negative integer"),
    ({"Content-Length": "ten"}, b"", 400, "non-negative integer"),
    ({}, b"", 411, "Content-Length"),
    ({"Content-Length": str(2 * 1024 * 1024)}, b"", 413, "limit is 1048576 bytes"),
])
def test_malformed_http_is_a_4xx_and_the_server_keeps_serving(server, headers, body, code,
                                                            message):
    url, _ = server
    status, _, answer = raw_request(url, "POST", "/v1/models/translator:predict", headers, body)
    assert status == code and message in answer["error"], answer
    status, _ = request(f"{url}/v1/models/translator:predict", {"instances": ["one book"]})
    assert status == 200


def test_a_server_error_is_a_500_naming_what_failed(server, model_server, monkeypatch):
    url, _ = server

    def broken(key, values):
        raise RuntimeError("the disk went away")

    with monkeypatch.context() as patch:
        patch.setattr(model_server, "_call", broken)
        status, answer = request(f"{url}/v1/models/translator:predict", {"instances": ["a"]})
    assert status == 500
    assert "RuntimeError: the disk went away" in answer["error"]
    assert "POST /v1/models/translator:predict" in answer["error"]
    status, _ = request(f"{url}/v1/models/translator:predict", {"instances": ["one book"]})
    assert status == 200


def concurrent_requests(url, bodies):
    """Sends each body from its own thread at once; `(status, headers, answer)` each,
    or the exception a client got."""
    results = [None] * len(bodies)
    start_together = threading.Barrier(len(bodies))

    def client(i):
        start_together.wait()
        try:
            results[i] = raw_request(url, "POST", "/v1/models/translator:predict",
                                     {"Content-Type": "application/json",
                                      "Content-Length": str(len(bodies[i]))}, bodies[i])
        except Exception as error:  # noqa: BLE001 (a reset connection, say)
            results[i] = error

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    return results


def test_256_concurrent_clients_all_get_their_own_answers(translator, exported_base):
    model = ModelServer(exported_base)
    httpd = start(model)
    texts = [f"{i} books and {i % 7} houses" for i in range(256)]
    expected = [t.decode("utf-8") for t in
                translator.translate(tf.constant(texts))["translation"].numpy()]
    try:
        results = concurrent_requests(f"http://127.0.0.1:{httpd.server_address[1]}",
                                      [json.dumps({"instances": [t]}).encode() for t in texts])
    finally:
        httpd.shutdown()
        httpd.server_close()
        model.close()
    assert [r if isinstance(r, Exception) else r[0] for r in results] == [200] * 256
    assert [r[2]["predictions"][0]["translation"] for r in results] == expected
    assert model.batcher.calls <= 256 // 4  # batched: 256 requests in few model calls


def test_a_full_queue_answers_503_with_retry_after_never_a_reset(exported_base):
    model = ModelServer(exported_base, max_batch_size=1, batch_timeout_micros=0,
                        max_queued_instances=2)
    httpd = start(model)
    body = json.dumps({"instances": ["seven plus five is twelve"]}).encode()
    try:
        results = concurrent_requests(f"http://127.0.0.1:{httpd.server_address[1]}",
                                      [body] * 48)
    finally:
        httpd.shutdown()
        httpd.server_close()
        model.close()
    assert not [r for r in results if isinstance(r, Exception)]
    statuses = [status for status, _, _ in results]
    assert set(statuses) <= {200, 503} and 503 in statuses and 200 in statuses
    busy = [(headers, answer) for status, headers, answer in results if status == 503]
    assert all(headers.get("Retry-After") == "1" and "busy" in answer["error"]
               for headers, answer in busy)


def test_sigterm_finishes_requests_in_flight_refuses_new_ones_and_exits_0(exported_base):
    import subprocess
    import sys
    import time

    process = subprocess.Popen(
        [sys.executable, "-m", "keras_transformer.cli", "serve", exported_base, "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    try:
        line = process.stdout.readline()  # "Serving 'translator' version 1 on http://..."
        url = line.split(" on ")[1].split("/v1/")[0]
        # A long request: 1,024 sentences in one call (more than a batch: it runs alone).
        big = json.dumps({"instances": [f"{i} books" for i in range(1024)]}).encode()
        answer = []
        client = threading.Thread(target=lambda: answer.append(raw_request(
            url, "POST", "/v1/models/translator:predict",
            {"Content-Length": str(len(big))}, big)))
        client.start()
        time.sleep(1.0)
        assert client.is_alive(), "the request finished before SIGTERM: make it longer"
        process.send_signal(signal.SIGTERM)
        client.join(timeout=300)
        assert process.wait(timeout=120) == 0
        status, _, body = answer[0]
        assert status == 200 and len(body["predictions"]) == 1024
        with pytest.raises(ConnectionRefusedError):
            raw_request(url, "GET", "/v1/models/translator")
        assert "Stopped serving" in process.stdout.read()
    finally:
        process.kill()


def held_connections(url, count):
    """`count` keep-alive connections, each with one answered request, left open."""
    import http.client
    import urllib.parse

    address = urllib.parse.urlparse(url)
    connections = []
    for _ in range(count):
        connection = http.client.HTTPConnection(address.hostname, address.port, timeout=60)
        connection.request("GET", "/v1/models/translator")
        response = connection.getresponse()
        response.read()
        assert response.status == 200
        connections.append(connection)
    return connections


def test_the_connection_bound_answers_503_with_retry_after_then_recovers(model_server):
    import time

    httpd = start(model_server, max_connections=2)
    url = f"http://127.0.0.1:{httpd.server_address[1]}"
    held = held_connections(url, 2)
    try:
        status, headers, answer = raw_request(url, "GET", "/v1/models/translator")
        assert status == 503 and headers.get("Retry-After") == "1"
        assert headers.get("Connection") == "close" and "2 open connections" in answer["error"]
        held.pop().close()
        deadline = time.monotonic() + 10
        while len(httpd.connection_sockets()) > 1 and time.monotonic() < deadline:
            time.sleep(0.05)  # until the server has seen the connection close
        status, _, _ = raw_request(url, "GET", "/v1/models/translator")
        assert status == 200
    finally:
        for connection in held:
            connection.close()
        httpd.shutdown()
        httpd.server_close()


def test_connections_have_tcp_nodelay(model_server):
    # Without TCP_NODELAY, Nagle's algorithm can hold an answer's last segment
    # until the client's delayed ACK (~40 ms a request on Linux).
    import socket

    httpd = start(model_server)
    held = held_connections(f"http://127.0.0.1:{httpd.server_address[1]}", 2)
    try:
        sockets = httpd.connection_sockets()
        assert len(sockets) == 2
        assert all(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) for sock in sockets)
    finally:
        for connection in held:
            connection.close()
        httpd.shutdown()
        httpd.server_close()


def test_a_chunked_body_is_read_within_the_body_limit(server):
    import http.client
    import urllib.parse

    url, _ = server
    address = urllib.parse.urlparse(url)

    def chunked(body):
        connection = http.client.HTTPConnection(address.hostname, address.port, timeout=120)
        try:
            connection.request("POST", "/v1/models/translator:predict",
                               body=iter([body[:5], body[5:]]),
                               headers={"Transfer-Encoding": "chunked"}, encode_chunked=True)
            response = connection.getresponse()
            return response.status, json.loads(response.read())
        finally:
            connection.close()

    status, answer = chunked(json.dumps({"instances": ["one book"]}).encode())
    assert status == 200 and len(answer["predictions"]) == 1
    status, answer = chunked(b" " * (1024 * 1024 + 10))
    assert status == 413 and "limit is 1048576 bytes" in answer["error"]


@pytest.mark.parametrize("method, path, code", [
    ("GET", "/v1/models/translator/versions/1", 200),
    ("GET", "/v1/models/translator:predict", 405),
    ("POST", "/v1/models/translator", 405),
    ("GET", "/v2/health", 404),
    ("GET", "/v1/models/translator/versions/x", 404),
])
def test_the_route_table(server, method, path, code):
    url, _ = server
    status, headers, answer = raw_request(url, method, path, {"Content-Length": "0"}
                                          if method == "POST" else None)
    assert status == code, answer
    if code == 404:
        assert "No such endpoint" in answer["error"] and path in answer["error"]
    if code == 405:
        assert headers.get("Allow") in answer["error"] and path in answer["error"]
