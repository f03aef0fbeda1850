"""The core install: `import keras_transformer` and the layers, models and decoding
work without the extras; every module imports, and the first call that needs a
missing extra is an ImportError that names it. (`keras_transformer.data.datasets`
is the exception: its TFDS builders subclass TFDS classes when it is imported.)"""

import json
import os
import subprocess
import sys
import textwrap

# What the extras bring; the core install has none of them.
EXTRAS = ["keras_hub", "keras_nlp", "tensorflow_text", "tensorflow_datasets", "sacrebleu",
          "matplotlib", "tokenizers", "starlette", "uvicorn", "httptools", "uvloop"]

SCRIPT = textwrap.dedent("""
    import importlib.abc, json, sys
    BLOCKED = {blocked!r}

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"No module named {{name!r}} (not installed)")
            return None

    sys.meta_path.insert(0, Block())
    import numpy as np, tensorflow as tf
    import keras_transformer
    from keras_transformer.generation import DecodingConfig, Stepper
    from keras_transformer.models import TransformerConfig, build_transformer
    from keras_transformer.training import MaskedSparseCategoricalCrossentropy
    config = TransformerConfig(vocab_size=20, max_length=8, embed_dim=16, num_heads=2,
                               ffn_dim=32, num_encoder_layers=1, num_decoder_layers=1)
    model = build_transformer(config)
    model.compile("adam", MaskedSparseCategoricalCrossentropy())
    source = np.array([[5, 6, 7, 0]], "int32")
    model.fit([source, source], source, epochs=1, verbose=0)
    stepper = Stepper(model)
    ids, _ = DecodingConfig("beam", beam_size=2).search(
        stepper, stepper.initial_state(tf.constant(source), 8), tf.constant([2]), 8)
    imported, errors = {{}}, {{}}
    for module in ("keras_transformer.data.tokenizers", "keras_transformer.data.datasets",
                   "keras_transformer.evaluation.quality", "keras_transformer.evaluation.plots",
                   "keras_transformer.export.server", "keras_transformer.export.http_app"):
        try:
            __import__(module)
            imported[module] = None
        except ImportError as error:
            imported[module] = str(error)
    from keras_transformer.data import tokenizers
    from keras_transformer.evaluation import plots, quality
    from keras_transformer.export import http_app, server
    first_use = {{
        "keras_transformer.data.tokenizers": lambda: tokenizers.train_wordpiece(["a b"], 10),
        "keras_transformer.evaluation.quality": lambda: quality.score(["a"], ["a"]),
        "keras_transformer.evaluation.plots": lambda: plots.plot_history({{}}, "x.png"),
        "keras_transformer.export.server": lambda: server.load_saved_model("nowhere"),
        "keras_transformer.export.http_app": lambda: http_app.make_app(None),
    }}
    for module, call in first_use.items():
        try:
            call()
            errors[module] = None
        except ImportError as error:
            errors[module] = str(error)
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    print(json.dumps({{"ids": ids.numpy().tolist(), "imported": imported, "errors": errors,
                      "loaded": loaded}}))
""")


def test_the_core_works_without_the_extras_and_names_the_missing_one():
    result = subprocess.run([sys.executable, "-c", SCRIPT.format(blocked=EXTRAS)],
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr[-3000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["loaded"] == []
    assert len(outcome["ids"][0]) == 8
    # Every module imports without its extra, but the TFDS builders' module.
    assert "keras-transformer-layers[data]" in outcome["imported"].pop(
        "keras_transformer.data.datasets")
    assert outcome["imported"] == dict.fromkeys(outcome["imported"]), outcome["imported"]
    # The first call that needs the extra names it.
    for module, extra in (("keras_transformer.data.tokenizers", "data"),
                          ("keras_transformer.evaluation.quality", "eval"),
                          ("keras_transformer.evaluation.plots", "plots"),
                          ("keras_transformer.export.server", "serving"),
                          ("keras_transformer.export.http_app", "serving")):
        message = outcome["errors"][module]
        assert message and f"keras-transformer-layers[{extra}]" in message, (module, message)
