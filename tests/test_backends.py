"""The package under every Keras backend: cached decoding with `keras.ops`
search loops, and a model trained under JAX exported and served by TensorFlow.

The tests without `tensorflow_only` run twice in CI: under TensorFlow and
under JAX (`scripts/test.sh` runs the backend-neutral files again with
`KERAS_BACKEND=jax`).
"""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from keras_transformer.data.special_tokens import START_ID
from keras_transformer.generation import (
    DecodingConfig,
    IdDecoder,
    SearchCore,
    greedy_generate,
    greedy_translate,
)
from keras_transformer.models import TransformerConfig, build_causal_lm, build_transformer
from keras_transformer.training import MaskedSparseCategoricalCrossentropy
from tests.backend import BACKEND, tensorflow_only

# Runs under every Keras backend (CI: TensorFlow, then JAX); see tests/conftest.py.
pytestmark = pytest.mark.backend_neutral

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LENGTH = 12


def _config(**overrides):
    values = dict(vocab_size=40, source_vocab_size=30, max_length=LENGTH, embed_dim=32,
                  num_heads=4, ffn_dim=64, num_encoder_layers=2, num_decoder_layers=2,
                  dropout=0.1)
    values.update(overrides)
    return TransformerConfig(**values)


def _copy_task(rng, batch, vocab):
    """Source ids and target ids for "copy the source" (with [START]/[END])."""
    lengths = rng.integers(3, LENGTH - 2, size=batch)
    source = np.zeros((batch, LENGTH), "int32")
    target = np.zeros((batch, LENGTH + 1), "int32")
    for row, n in enumerate(lengths):
        tokens = rng.integers(4, vocab, size=n)
        source[row, :n] = tokens
        target[row, 0], target[row, 1 : n + 1], target[row, n + 1] = START_ID, tokens, 3
    return source, target


def test_the_builders_models_fit_and_decode_with_the_cache():
    keras.utils.set_random_seed(0)
    model = build_transformer(_config())
    model.compile(optimizer=keras.optimizers.Adam(3e-3),
                  loss=MaskedSparseCategoricalCrossentropy(), jit_compile=BACKEND != "torch")
    source, target = _copy_task(np.random.default_rng(0), 256, 30)
    history = model.fit([source, target[:, :-1]], target[:, 1:], batch_size=32, epochs=3,
                        verbose=0)
    losses = history.history["loss"]
    assert np.isfinite(losses).all() and losses[-1] < losses[0]

    # The cached search (compiled with the backend's XLA) equals full passes.
    greedy = IdDecoder(model, max_length=LENGTH)
    ids, scores = greedy(source[:16])
    reference = greedy_translate(model, source[:16], LENGTH)
    np.testing.assert_array_equal(ids[:, : reference.shape[1]], reference)
    assert np.all(ids[:, reference.shape[1]:] == 0) and np.isfinite(scores).all()
    # Beam search with one beam is greedy; four beams score at least as well.
    beam_1, _ = IdDecoder(model, LENGTH, DecodingConfig("beam", beam_size=1))(source[:16])
    np.testing.assert_array_equal(beam_1, ids)
    _, beam_scores = IdDecoder(model, LENGTH, DecodingConfig("beam", beam_size=4,
                                                             length_penalty=0.0))(source[:16])
    assert np.all(beam_scores >= scores - 1e-4)


def test_a_decoder_only_model_decodes_with_the_cache_and_samples_by_seed():
    keras.utils.set_random_seed(1)
    model = build_causal_lm(_config(num_decoder_layers=2, norm_first=True,
                                    positions="learned", moe={"num_experts": 4}))
    prompts = np.random.default_rng(1).integers(4, 40, size=(8, 3)).astype("int32")
    ids, _ = IdDecoder(model, max_length=LENGTH - 1)(prompts)
    reference = greedy_generate(model, prompts, LENGTH)
    np.testing.assert_array_equal(ids, reference)
    sampler = IdDecoder(model, LENGTH - 1, DecodingConfig("sample", top_k=10, seed=3))
    first, _ = sampler(prompts)
    np.testing.assert_array_equal(sampler(prompts)[0], first)  # same seed, same text
    assert not np.array_equal(sampler(prompts, seed=4)[0], first)
    np.testing.assert_array_equal(first[:, :2], prompts[:, 1:])  # the prompt is kept


def test_one_row_is_searched_as_two_and_decodes_as_it_does_in_a_batch(monkeypatch):
    # XLA on CPU runs a one-row matrix product on one core: a batch of one
    # row is searched as two (the row and a copy), beams as they are.
    keras.utils.set_random_seed(2)
    model = build_causal_lm(_config(num_decoder_layers=2))
    prompts = np.random.default_rng(2).integers(4, 40, size=(3, 3)).astype("int32")
    searched_rows = []
    search = SearchCore._search

    def spy(self, inputs, *args):
        searched_rows.append(int(keras.ops.shape(inputs)[0]))
        return search(self, inputs, *args)

    monkeypatch.setattr(SearchCore, "_search", spy)
    greedy = IdDecoder(model, max_length=LENGTH - 1)
    batch, batch_scores = greedy(prompts)
    for row in range(3):
        ids, scores = greedy(prompts[row:row + 1])
        assert ids.shape == (1, LENGTH - 1) and scores.shape == (1,)
        np.testing.assert_array_equal(ids, batch[row:row + 1])
        np.testing.assert_allclose(scores, batch_scores[row:row + 1], rtol=1e-5, atol=1e-5)
    assert searched_rows == [3, 2]  # traced once per batch shape
    sampled, _ = IdDecoder(model, LENGTH - 1, DecodingConfig("sample", seed=1))(prompts[:1])
    assert sampled.shape == (1, LENGTH - 1) and searched_rows[-1] == 2
    beams, _ = IdDecoder(model, LENGTH - 1, DecodingConfig("beam", beam_size=2))(prompts[:1])
    assert beams.shape == (1, LENGTH - 1) and searched_rows[-1] == 1


@tensorflow_only
def test_one_row_is_searched_as_two_when_the_batch_size_is_dynamic():
    import tensorflow as tf

    keras.utils.set_random_seed(3)
    model = build_causal_lm(_config(num_decoder_layers=1))
    prompts = np.random.default_rng(3).integers(4, 40, size=(2, 3)).astype("int32")
    core = SearchCore(model, LENGTH - 1)
    signature = [tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([None], tf.int32)]
    compiled = tf.function(core.search, input_signature=signature, jit_compile=True)
    for rows in (1, 2):
        lengths = np.full([rows], 3, "int32")
        ids, scores = compiled(prompts[:rows], lengths)
        expected, _ = core.search(prompts[:rows], lengths)
        assert ids.shape == (rows, LENGTH - 1) and scores.shape == (rows,)
        np.testing.assert_array_equal(ids, expected)


def test_import_under_jax_does_not_import_tensorflow():
    pytest.importorskip("jax")
    pytest.importorskip("tensorflow")  # the second half imports it (not on a JAX-only GPU box)
    code = textwrap.dedent("""
        import sys
        import keras_transformer
        from keras_transformer import generation, layers, models, training
        from keras_transformer.generation import IdDecoder, beam_search
        assert "tensorflow" not in sys.modules, "TensorFlow was imported"
        from keras_transformer.generation import Translator  # a TensorFlow module
        assert "tensorflow" in sys.modules
    """)
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


TRAIN_UNDER_JAX = textwrap.dedent("""
    import json, sys
    import keras, numpy as np
    assert keras.backend.backend() == "jax"
    from keras_transformer.generation import DecodingConfig, IdDecoder
    from keras_transformer.models import TransformerConfig, build_transformer
    from keras_transformer.training import MaskedSparseCategoricalCrossentropy
    work = sys.argv[1]
    data = np.load(work + "/data.npz")
    keras.utils.set_random_seed(0)
    model = build_transformer(TransformerConfig.from_dict(json.load(open(work + "/config.json"))))
    model.compile(optimizer=keras.optimizers.Adam(3e-3),
                  loss=MaskedSparseCategoricalCrossentropy(), jit_compile=True)
    model.fit([data["source"], data["target"][:, :-1]], data["target"][:, 1:],
              batch_size=32, epochs=4, verbose=0)
    model.save(work + "/model.keras")
    decoder = IdDecoder(model, max_length=int(sys.argv[2]),
                        decoding=DecodingConfig("beam", beam_size=2))
    np.save(work + "/ids.npy", decoder(data["source"][:8])[0])
""")


@tensorflow_only
def test_a_model_trained_under_jax_exports_and_serves_with_tensorflow(tmp_path):
    # tf.data and the tokenizers prepare the data; JAX trains and decodes;
    # TensorFlow exports the weights as a SavedModel that serves the same text.
    pytest.importorskip("jax")
    import tensorflow as tf

    from keras_transformer.data import generate_pairs, pipelines
    from keras_transformer.data import tokenizers as tk
    from keras_transformer.export import export_saved_model
    from keras_transformer.generation import Translator

    pairs = generate_pairs(600, seed=0)
    source_tokenizer = tk.train_wordpiece([en for en, _ in pairs], 200)
    target_tokenizer = tk.train_wordpiece([es for _, es in pairs], 200)
    dataset = pipelines.translation_dataset(pairs, source_tokenizer, target_tokenizer,
                                            batch_size=600, max_length=16)
    (source, target_in), target_out = next(iter(dataset))
    # Dense arrays of one width for the JAX process: [START] + target + [END].
    source = np.pad(source.numpy(), ((0, 0), (0, 16 - source.shape[1])))
    target = np.concatenate([target_in.numpy(), target_out.numpy()[:, -1:]], axis=1)
    target = np.pad(target, ((0, 0), (0, 17 - target.shape[1])))
    config = TransformerConfig(vocab_size=target_tokenizer.vocabulary_size(),
                               source_vocab_size=source_tokenizer.vocabulary_size(),
                               max_length=17, embed_dim=32, num_heads=2, ffn_dim=64,
                               num_encoder_layers=1, num_decoder_layers=1, dropout=0.0)
    np.savez(tmp_path / "data.npz", source=source, target=target)
    (tmp_path / "config.json").write_text(json.dumps(config.to_dict()))
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", TRAIN_UNDER_JAX, str(tmp_path), "16"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    jax_ids = np.load(tmp_path / "ids.npy")

    model = keras.saving.load_model(tmp_path / "model.keras")
    translator = Translator(model, source_tokenizer, target_tokenizer, max_length=16,
                            decoding=DecodingConfig("beam", beam_size=2))
    tf_ids = translator.translate_ids(tf.constant(source[:8]))["token_ids"].numpy()
    np.testing.assert_array_equal(tf_ids, jax_ids)  # the same search on both backends
    exported = export_saved_model(translator, str(tmp_path / "saved_models" / "jax"))
    served = tf.saved_model.load(exported)
    texts = [en for en, _ in pairs[:8]]
    out = served.signatures["serving_default"](tf.constant(texts))
    expected = translator.translate(tf.constant(texts))
    assert [t.decode() for t in out["translation"].numpy()] == [
        t.decode() for t in expected["translation"].numpy()]
    assert len({t for t in out["translation"].numpy()}) > 1  # it learned something
