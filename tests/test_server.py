"""The TF-Serving-style REST server, with real HTTP requests on 127.0.0.1."""

import json
import os
import threading
import urllib.error
import urllib.request

import pytest
import tensorflow as tf

from keras_transformer.export import export_saved_model
from keras_transformer.export.server import ModelServer, make_handler
from tests.test_export import translator  # noqa: F401  (fixture)


@pytest.fixture(scope="module")
def server(translator, tmp_path_factory):  # noqa: F811
    from http.server import ThreadingHTTPServer

    base = tmp_path_factory.mktemp("serving") / "translator"
    export_saved_model(translator, str(base))
    model = ModelServer(str(base), max_batch=8)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(model))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", translator
    httpd.shutdown()
    httpd.server_close()


def request(url, body=None, method=None):
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method or ("POST" if data else "GET"),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_row_and_columnar_formats_answer_like_the_translator(server):
    url, translator = server  # noqa: F811
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


def test_a_corrupted_saved_model_gives_an_error_naming_it(tmp_path, translator):  # noqa: F811
    base = tmp_path / "broken"
    path = export_saved_model(translator, str(base))
    with open(os.path.join(path, "saved_model.pb"), "r+b") as handle:
        handle.truncate(100)  # a truncated copy
    with pytest.raises(ValueError, match="Could not load the SavedModel at .*broken/1"):
        ModelServer(str(base))
    with pytest.raises(FileNotFoundError, match="No SavedModel version"):
        ModelServer(str(tmp_path / "empty"))
