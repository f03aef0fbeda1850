"""`:generate` and `:generate_stream`: a text generator's SavedModel served
step by step (continuous batching), checked against its own whole-search
signatures, over real HTTP."""

import json
import socket
import threading
import time
import urllib.request

import keras
import numpy as np
import pytest

from keras_transformer.export import export_saved_model
from keras_transformer.export.http_app import HTTPServer
from keras_transformer.export.server import ModelServer
from keras_transformer.generation import DecodingConfig, TextGenerator
from keras_transformer.models import TransformerConfig, build_causal_lm
from tests.helpers import character_tokenizer, make_translator, request

MAX_LENGTH = 24


@pytest.fixture(scope="module")
def model():
    config = TransformerConfig(vocab_size=128, max_length=MAX_LENGTH, embed_dim=16, num_heads=4,
                               ffn_dim=32, num_encoder_layers=0, num_decoder_layers=2,
                               dropout=0.0, norm_first=True)
    model = build_causal_lm(config)
    rng = np.random.default_rng(3)
    for weight in model.weights:  # weights large enough that outputs vary
        weight.assign(rng.normal(size=weight.shape).astype("float32") * 0.8)
    return model


def _export(model, tmp_path_factory, name, decoding):
    generator = TextGenerator(model, character_tokenizer(), max_length=MAX_LENGTH,
                              decoding=decoding)
    base = str(tmp_path_factory.mktemp("saved") / name)
    export_saved_model(generator, base)
    return base


class _Served:
    def __init__(self, base, **options):
        self.model = ModelServer(base, **options)
        self.httpd = HTTPServer(self.model, "127.0.0.1", 0).start()
        name = self.model.name
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1/models/{name}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.model.close()


@pytest.fixture(scope="module")
def greedy(model, tmp_path_factory):
    served = _Served(_export(model, tmp_path_factory, "greedy", DecodingConfig("greedy")),
                     num_slots=2)
    yield served
    served.close()


@pytest.fixture(scope="module")
def sampled(model, tmp_path_factory):
    decoding = DecodingConfig("sample", temperature=0.9, top_k=20, seed=5)
    served = _Served(_export(model, tmp_path_factory, "sampled", decoding), num_slots=3)
    yield served
    served.close()


PROMPTS = ["ab", "Hello", "x", "The quick brown", "zz top"]


def _predicted(served, prompt):
    status, answer = request(served.url + ":predict", {"instances": [prompt]})
    assert status == 200
    return answer["predictions"][0]["text"]


def test_greedy_generate_equals_the_whole_search_also_under_concurrency(greedy):
    expected = {prompt: _predicted(greedy, prompt) for prompt in PROMPTS}
    assert len(set(expected.values())) == len(PROMPTS), "outputs should vary"
    answers = {}

    def ask(prompt):
        answers[prompt] = request(greedy.url + ":generate", {"prompt": prompt})

    threads = [threading.Thread(target=ask, args=(p,)) for p in PROMPTS]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for prompt in PROMPTS:
        status, answer = answers[prompt]
        assert status == 200, answer
        assert answer["text"] == expected[prompt]
        assert answer["completion"] == expected[prompt][len(prompt):]
        assert answer["finish_reason"] in ("end", "length")
    # A short request beside a long one is not held back to its length.
    status, short = request(greedy.url + ":generate", {"prompt": "ab", "max_new_tokens": 3})
    assert short["token_ids"] == answers["ab"][1]["token_ids"][:3]
    assert short["finish_reason"] == "length"


def test_sampling_with_the_exported_settings_equals_the_exported_search(sampled):
    for prompt in PROMPTS[:3]:
        status, answer = request(sampled.url + ":generate", {"prompt": prompt})
        assert status == 200
        assert answer["text"] == _predicted(sampled, prompt)
    # Per-request settings: another seed draws another continuation; the same seed
    # draws the same one.
    asked = {"prompt": "Hello", "seed": 11, "temperature": 1.2, "top_p": 0.9}
    first = request(sampled.url + ":generate", asked)[1]
    assert first == {**request(sampled.url + ":generate", asked)[1],
                     "time_to_first_token": first["time_to_first_token"]}
    assert first["text"] != request(sampled.url + ":generate", {**asked, "seed": 12})[1]["text"]


def _stream(url, body):
    req = urllib.request.Request(url + ":generate_stream", data=json.dumps(body).encode(),
                                 method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        blocks = response.read().decode("utf-8").strip().split("\n\n")
    events = []
    for block in blocks:
        kind, data = block.split("\n")
        events.append((kind.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return events


def test_the_stream_sends_one_event_per_token_then_the_answer(greedy):
    events = _stream(greedy.url, {"prompt": "Hello", "max_new_tokens": 6})
    kinds = [kind for kind, _ in events]
    assert kinds == ["token"] * 6 + ["done"]
    done = events[-1][1]
    assert [data["token_id"] for _, data in events[:-1]] == done["token_ids"]
    assert "".join(data["text"] for _, data in events[:-1]) == done["completion"]
    # "stream": true on :generate is the same stream.
    status_line = _stream(greedy.url.replace(":generate_stream", ""),
                          {"prompt": "Hello", "max_new_tokens": 6, "stream": True})
    assert status_line[-1][1]["token_ids"] == done["token_ids"]


def test_stop_strings_end_the_continuation_before_them(greedy):
    full = request(greedy.url + ":generate", {"prompt": "The quick brown"})[1]["completion"]
    assert len(full) >= 4
    stop = full[2:4]
    status, answer = request(greedy.url + ":generate",
                             {"prompt": "The quick brown", "stop": ["@@@", stop]})
    assert status == 200
    assert answer["finish_reason"] == "stop"
    assert answer["completion"] == full[:full.find(stop)]
    events = _stream(greedy.url, {"prompt": "The quick brown", "stop": stop})
    assert "".join(d["text"] for k, d in events if k == "token") == answer["completion"]


def test_a_client_that_disconnects_frees_its_slot(greedy, monkeypatch):
    batcher = greedy.model.generation.batcher
    assert batcher.steps_per_call == 8  # 20 tokens take 3 calls
    steps = batcher.decoder.steps

    def slow_steps(*args):  # 0.4 s a call: the request is in flight when the client goes
        time.sleep(0.4)
        return steps(*args)

    monkeypatch.setattr(batcher.decoder, "steps", slow_steps)
    port = greedy.httpd.server_address[1]
    body = json.dumps({"prompt": "ab", "max_new_tokens": 20}).encode()
    name = greedy.model.name
    calls = batcher.steps
    with socket.create_connection(("127.0.0.1", port)) as client:
        client.sendall(f"POST /v1/models/{name}:generate_stream HTTP/1.1\r\nHost: x\r\n"
                       f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        received = b""
        while b"event: token" not in received:
            received += client.recv(4096)
    deadline = time.time() + 3.0
    while batcher.active and time.time() < deadline:
        time.sleep(0.01)
    assert batcher.active == 0
    assert batcher.steps - calls < 3  # retired after the call in progress, not at the end


@pytest.mark.parametrize("body, message", [
    ({"prompt": 3}, "'prompt' must be a string"),
    ({"prompt": "a", "temperature": "hot"}, "'temperature' must be a number"),
    ({"prompt": "a", "temperature": 0}, "`temperature` must be > 0"),
    ({"prompt": "a", "max_new_tokens": 1.5}, "'max_new_tokens' must be an integer"),
    ({"prompt": "a", "decoding": "beam"}, "'decoding' must be 'greedy' or 'sample'"),
    ({"prompt": "a", "stop": [""]}, "'stop' must be a list of non-empty strings"),
    ({"prompt": "a", "beams": 2}, r"Unknown field\(s\) \['beams'\]"),
    ({"prompt": ""}, "empty prompt"),
    ([1, 2], "must be a JSON object"),
])
def test_bad_generate_requests_are_told_why(greedy, body, message):
    import re

    status, answer = request(greedy.url + ":generate", body)
    assert status == 400
    assert re.search(message, answer["error"]), answer


def test_a_beam_search_export_answers_generate_with_its_whole_search(model, tmp_path_factory):
    served = _Served(_export(model, tmp_path_factory, "beam", DecodingConfig("beam",
                                                                              beam_size=3)),
                     num_slots=2)
    try:
        status, answer = request(served.url + ":generate", {"prompt": "ab"})
        assert status == 200
        assert answer["text"] == _predicted(served, "ab")
        events = _stream(served.url, {"prompt": "ab"})
        assert [kind for kind, _ in events] == ["done"]
        assert events[0][1]["text"] == answer["text"]
        # Greedy on request runs step by step.
        assert request(served.url + ":generate",
                       {"prompt": "ab", "decoding": "greedy"})[0] == 200
    finally:
        served.close()


def test_a_translator_does_not_generate(tmp_path):
    keras.utils.set_random_seed(0)
    base = str(tmp_path / "translator")
    export_saved_model(make_translator(), base)
    served = _Served(base, num_slots=2)
    try:
        status, answer = request(served.url + ":generate", {"prompt": "hi"})
        assert status == 400
        assert "does not generate text" in answer["error"]
    finally:
        served.close()
