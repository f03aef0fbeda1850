"""Deprecated names keep working, each with a `DeprecationWarning` naming its replacement."""

import importlib
import sys

import pytest

from keras_transformer.generation import DecodingConfig, EncoderDecoderStepper
from keras_transformer.models import TransformerConfig, build_transformer


@pytest.mark.parametrize("old, new, names", [
    ("keras_transformer.generation.evaluation", "keras_transformer.evaluation.quality",
     ["read_tsv", "score", "translate_all"]),
    ("keras_transformer.generation.plots", "keras_transformer.evaluation.plots",
     ["cross_attention", "plot_attention", "plot_history"]),
    ("keras_transformer.generation.compiled", "keras_transformer.generation.id_decoder",
     ["IdDecoder"]),
    ("keras_transformer.generation.greedy", "keras_transformer.generation.reference_decoders",
     ["greedy_generate", "greedy_translate"]),
])
def test_a_moved_module_is_still_importable_under_its_old_name(old, new, names):
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=new.replace(".", r"\.")):
        module = importlib.import_module(old)
    moved = importlib.import_module(new)
    for name in names:
        assert getattr(module, name) is getattr(moved, name)


def test_deprecated_attributes_answer_and_name_their_replacement(translator):
    with pytest.warns(DeprecationWarning, match=r"Translator\.decoding\.beam_size"):
        assert translator.beam_size == 2
    with pytest.warns(DeprecationWarning, match=r"decoding\.length_penalty"):
        assert translator.alpha == translator.decoding.length_penalty
    model = build_transformer(TransformerConfig(
        vocab_size=20, max_length=8, embed_dim=16, num_heads=2, ffn_dim=32,
        num_encoder_layers=1, num_decoder_layers=2))
    with pytest.warns(DeprecationWarning, match=r"read_structure\(model\)\.decoder\.blocks"):
        assert isinstance(EncoderDecoderStepper(model).decoder_blocks, list)


def test_the_text_generator_sampling_attributes(tmp_path):
    from keras_transformer.generation import TextGenerator
    from keras_transformer.models import build_causal_lm
    from tests.helpers import character_tokenizer

    model = build_causal_lm(TransformerConfig(
        vocab_size=128, max_length=8, embed_dim=16, num_heads=2, ffn_dim=32,
        num_encoder_layers=0, num_decoder_layers=1))
    generator = TextGenerator(model, character_tokenizer(), max_length=8,
                              decoding=DecodingConfig("sample", temperature=0.7, top_k=5,
                                                      top_p=0.9))
    for name, value in (("temperature", 0.7), ("top_k", 5), ("top_p", 0.9)):
        with pytest.warns(DeprecationWarning, match=rf"TextGenerator\.decoding\.{name}"):
            assert getattr(generator, name) == pytest.approx(value)


class _Model:
    """What the `http.server` handler calls on a `ModelServer`."""

    def predict(self, name, version, body):
        return {"predictions": [name, version, len(body)]}

    def status(self, name, version):
        return {"model": name, "version": version}


def test_the_http_server_front_end_still_serves_and_names_its_replacement():
    import threading

    from keras_transformer.export import server
    from tests.helpers import request

    with pytest.warns(DeprecationWarning, match=r"http_app\.HTTPServer"):
        handler = server.make_handler(_Model(), max_body_bytes=64)
    httpd = server.ModelHTTPServer(("127.0.0.1", 0), handler, max_connections=4)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/v1/models/m"
    try:
        assert request(url + "/versions/2:predict", b"{}") == (200, {"predictions": ["m", "2", 2]})
        assert request(url) == (200, {"model": "m", "version": None})
        status, answer = request(url + ":predict", b"x" * 65)
        assert status == 413 and "limit is 64 bytes" in answer["error"]
        assert request(url + ":nothing", b"{}")[0] == 404
    finally:
        httpd.shutdown()
        httpd.server_close()
