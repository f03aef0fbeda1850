"""What several test modules share: a small translator, a character tokenizer,
a small GPT-2 and its tokenizer, and the checks that an exported model serves
in a fresh TensorFlow-only process and behind the HTTP server. (Fixtures are
in conftest.py; test modules never import each other.)"""

import json
import os
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request


def make_translator(decoding=None, **config_options):
    """A 1+1-layer translator over WordPiece vocabularies of the built-in corpus.

    Beam 2 unless `decoding` (a `DecodingConfig`) says otherwise;
    `config_options` change the `TransformerConfig` (e.g. `norm="rms"`).
    """
    import tensorflow as tf

    from keras_transformer.data import generate_pairs
    from keras_transformer.data import tokenizers as tk
    from keras_transformer.generation import Translator
    from keras_transformer.models import TransformerConfig, build_transformer

    pairs = generate_pairs(300, seed=0)
    source = tk.train_wordpiece([en for en, _ in pairs], 200)
    target = tk.train_wordpiece([es for _, es in pairs], 200)
    tf.random.set_seed(0)
    config = TransformerConfig(
        vocab_size=target.vocabulary_size(), source_vocab_size=source.vocabulary_size(),
        max_length=16, embed_dim=32, num_heads=2, ffn_dim=64, num_encoder_layers=1,
        num_decoder_layers=1, dropout=0.0, **config_options,
    )
    if decoding is None:
        return Translator(build_transformer(config), source, target, max_length=16, beam_size=2)
    return Translator(build_transformer(config), source, target, max_length=16,
                      decoding=decoding)


def character_tokenizer():
    """keras-hub's code-point tokenizer over 128 ids."""
    import keras_hub

    return keras_hub.tokenizers.UnicodeCodepointTokenizer(
        vocabulary_size=128, replacement_char=127, lowercase=False)


def request(url, body=None, method=None):
    """`(status, JSON answer)` of one HTTP request (POST when there is a body)."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method or ("POST" if data else "GET"),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def site_packages_without_keras(directory):
    """A copy (symlinks) of this interpreter's site-packages without
    keras-hub, keras-nlp, tf-keras or keras_transformer: what a machine with
    only `pip install tensorflow tensorflow-text` has. (Keras itself stays:
    the tensorflow wheel depends on it and tensorflow_text imports it.)"""
    import site

    hidden = ("keras_hub", "keras_nlp", "tf_keras", "keras_transformer", "__editable__")
    for source in site.getsitepackages():
        for name in os.listdir(source):
            root = name.split("-")[0].split(".")[0].lower()
            if root.startswith(hidden) or name.endswith(".pth"):
                continue
            target = os.path.join(directory, name)
            if not os.path.exists(target):
                os.symlink(os.path.join(source, name), target)
    return directory


def run_with_tensorflow_only(script, tmp_path):
    """Runs `script` in a fresh interpreter without keras-hub or keras_transformer."""
    os.makedirs(tmp_path, exist_ok=True)
    packages = site_packages_without_keras(str(tmp_path))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": packages}
    result = subprocess.run([sys.executable, "-S", "-c", textwrap.dedent(script)],
                            capture_output=True, text=True, timeout=300, env=env, cwd="/")
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


FRESH = """
    import json, sys
    import tensorflow as tf
    import tensorflow_text  # the tokenizer ops in the graph
    served = tf.saved_model.load({path!r})
    out = served.signatures["serving_default"]({name}=tf.constant({texts!r}))
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("keras_hub", "keras_transformer"))
    print(json.dumps({{"text": [t.decode("utf-8") for t in out[{key!r}].numpy()],
                       "loaded": loaded}}))
"""


def serve_once(base, body):
    """One real HTTP request to a server over the newest version in `base`."""
    from keras_transformer.export.http_app import HTTPServer
    from keras_transformer.export.server import ModelServer

    model = ModelServer(base)
    httpd = HTTPServer(model, "127.0.0.1", 0).start()
    try:
        name = os.path.basename(base)
        return request(f"http://127.0.0.1:{httpd.server_address[1]}/v1/models/{name}:predict",
                       body)
    finally:
        httpd.shutdown()
        httpd.server_close()
        model.close()


def check_export_and_serve(module, texts, input_name, output_key, tmp_path):
    """The SavedModel, in a fresh TensorFlow-only process and behind the server,
    answers exactly what `module` answers in process."""
    import tensorflow as tf

    from keras_transformer.export import export_saved_model

    base = str(tmp_path / "saved" / "mine")
    path = export_saved_model(module, base)
    in_process = module.serving_signatures()["serving_default"](
        **{input_name: tf.constant(texts)})
    expected = [t.decode("utf-8") for t in in_process[output_key].numpy()]
    served = run_with_tensorflow_only(
        FRESH.format(path=path, name=input_name, texts=texts, key=output_key),
        tmp_path / "site")
    assert served == {"text": expected, "loaded": []}
    status, answer = serve_once(base, {"instances": texts})
    assert status == 200
    assert [row[output_key] for row in answer["predictions"]] == expected


def small_gpt2():
    """A 2-layer keras-hub GPT2Backbone over 50 ids with random weights (norms too)."""
    import keras
    import keras_hub
    import numpy as np

    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=50, num_layers=2, num_heads=2, hidden_dim=16, intermediate_dim=32,
        max_sequence_length=12, dropout=0.0)
    # Random norms too, so that a scale or bias left at its initial value shows.
    for weight in backbone.weights:
        if "layer_norm" in weight.path or "gamma" in weight.path or "beta" in weight.path:
            weight.assign(np.random.default_rng(1).normal(1.0, 0.2, weight.shape))
    return backbone


def gpt2_tokenizer():
    """A byte-level BPE tokenizer of GPT-2's kind over 50 ids, `<|endoftext|>` last."""
    import keras_hub

    letters = "abcdefghijklmnopqrstuvwxyz"
    tokens = ["!", "Ġ", *letters, *("Ġ" + c for c in letters[:12])]
    tokens += ["ab", "cd", "Ġab", "ef", "Ġcd", "gh", "ij", "kl", "Ġef"]
    tokens.append("<|endoftext|>")
    assert len(tokens) == 50
    merges = [f"Ġ {c}" for c in letters[:12]] + ["a b", "c d", "Ġ ab", "e f", "Ġ cd", "g h",
                                                 "i j", "k l", "Ġ ef"]
    vocabulary = {token: index for index, token in enumerate(tokens)}
    return keras_hub.models.GPT2Tokenizer(vocabulary=vocabulary, merges=merges)
