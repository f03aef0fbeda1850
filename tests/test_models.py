import json
import os
import subprocess
import sys

import numpy as np
import pytest

import keras
from keras import ops

from keras_transformer.models import TransformerConfig, build_causal_lm, build_transformer
from keras_transformer.training import (
    MaskedAccuracy,
    MaskedSparseCategoricalCrossentropy,
    masked_perplexity,
    transformer_optimizer,
)

# Runs under every Keras backend (CI: TensorFlow, then JAX); see tests/conftest.py.
pytestmark = pytest.mark.backend_neutral

TINY = dict(vocab_size=30, source_vocab_size=25, max_length=16, embed_dim=16, num_heads=2,
            ffn_dim=32, num_encoder_layers=2, num_decoder_layers=2, dropout=0.1)
rng = np.random.default_rng(0)
SOURCE = rng.integers(1, 25, size=(3, 7))
SOURCE[1, 5:] = 0
TARGET = rng.integers(1, 30, size=(3, 5))
TARGET[2, 3:] = 0


def _np(x):
    return ops.convert_to_numpy(x)


@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("norm_first", [False, True])
def test_transformer_outputs_float32_logits_and_reloads(tmp_path, tie, norm_first):
    model = build_transformer(TransformerConfig(**TINY, tie_embeddings=tie, norm_first=norm_first))
    logits = model([SOURCE, TARGET])
    assert tuple(logits.shape) == (3, 5, 30)
    assert keras.backend.standardize_dtype(logits.dtype) == "float32"
    names = [layer.name for layer in model.layers]
    assert ("logits" in names) != tie
    assert ("decoder_norm" in names) == norm_first
    path = str(tmp_path / "model.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    np.testing.assert_allclose(_np(restored([SOURCE, TARGET])), _np(logits), atol=1e-5)
    np.testing.assert_allclose(
        _np(restored([SOURCE[:1], TARGET[:1]])), _np(logits)[:1], atol=1e-5
    )


def test_tied_embeddings_share_one_matrix():
    tied = build_transformer(TransformerConfig(**TINY, tie_embeddings=True))
    untied = build_transformer(TransformerConfig(**TINY, tie_embeddings=False))
    assert untied.count_params() - tied.count_params() == 16 * 30 + 30


def test_causal_lm_has_no_causal_leakage_and_reloads(tmp_path):
    model = build_causal_lm(TransformerConfig(**TINY))
    ids = rng.integers(1, 30, size=(2, 8))
    changed = ids.copy()
    changed[:, 5:] = (changed[:, 5:] % 29) + 1
    a, b = _np(model(ids)), _np(model(changed))
    np.testing.assert_allclose(a[:, :5], b[:, :5], atol=1e-5)
    assert not np.allclose(a[:, 5:], b[:, 5:])
    model.save(str(tmp_path / "lm.keras"))
    restored = keras.saving.load_model(str(tmp_path / "lm.keras"))
    np.testing.assert_allclose(_np(restored(ids)), a, atol=1e-5)


def test_compiled_model_reloads_in_a_fresh_process_after_import_keras_transformer(tmp_path):
    # What the recipes save (compiled with the package's loss, metric and
    # learning-rate schedule) loads with `import keras_transformer` alone, its
    # compile state whole: the same evaluation and optimizer step count.
    model = build_transformer(TransformerConfig(**TINY))
    model.compile(optimizer=transformer_optimizer(16, warmup_steps=10),
                  loss=MaskedSparseCategoricalCrossentropy(label_smoothing=0.1),
                  metrics=[MaskedAccuracy(), masked_perplexity()])
    model.fit([SOURCE, TARGET], TARGET, epochs=2, verbose=0)
    expected = model.evaluate([SOURCE, TARGET], TARGET, return_dict=True, verbose=0)
    path = str(tmp_path / "model.keras")
    model.save(path)
    script = (
        "import json, sys, keras, numpy as np, keras_transformer\n"
        "model = keras.saving.load_model(sys.argv[1])\n"
        "source, target = (np.array(a) for a in json.loads(sys.argv[2]))\n"
        "scores = model.evaluate([source, target], target, return_dict=True, verbose=0)\n"
        "print(json.dumps({'loss_class': type(model.loss).__name__,\n"
        "                  'steps': int(model.optimizer.iterations.numpy()), **scores}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, path, json.dumps([SOURCE.tolist(), TARGET.tolist()])],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    restored = json.loads(result.stdout.strip().splitlines()[-1])
    assert restored.pop("loss_class") == "MaskedSparseCategoricalCrossentropy"
    assert restored.pop("steps") == 2
    assert restored.keys() == expected.keys()
    for name, value in expected.items():
        np.testing.assert_allclose(restored[name], value, rtol=1e-5, err_msg=name)


def test_padding_in_the_source_does_not_leak():
    model = build_transformer(TransformerConfig(**TINY))
    noisy = SOURCE.copy()
    noisy[1, 5:] = 0
    a = _np(model([SOURCE, TARGET]))
    noisy_longer = np.concatenate([noisy, np.zeros((3, 4), int)], axis=1)
    np.testing.assert_allclose(_np(model([noisy_longer, TARGET])), a, atol=1e-5)


def test_logits_stay_float32_and_finite_under_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_float16")
    model = build_transformer(TransformerConfig(**TINY))
    logits = model([SOURCE, TARGET])
    assert keras.backend.standardize_dtype(logits.dtype) == "float32"
    assert np.all(np.isfinite(_np(logits)))


def test_moe_by_config_every_other_block_and_aux_loss_in_fit():
    config = TransformerConfig(**TINY, moe={"num_experts": 4, "top_k": 2}, moe_every=2)
    model = build_transformer(config)
    moe_blocks = [layer.name for layer in model.layers if getattr(layer, "moe", None)]
    assert moe_blocks == ["encoder_block_1", "decoder_block_1"]
    model.compile(optimizer="adam", loss=MaskedSparseCategoricalCrossentropy(), jit_compile=True)
    history = model.fit([SOURCE, TARGET], TARGET, epochs=1, verbose=0)
    assert "encoder_block_1_moe_routing_dropped" in history.history
    assert np.isfinite(history.history["loss"][0])


def test_config_round_trip_and_validation():
    config = TransformerConfig(**TINY)
    assert TransformerConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="embed_dim=10, num_heads=4"):
        TransformerConfig(embed_dim=10, num_heads=4)
    with pytest.raises(ValueError, match="Unknown"):
        TransformerConfig.from_dict({"layers": 3})
    base = TransformerConfig()
    assert (base.embed_dim, base.num_heads, base.ffn_dim, base.num_encoder_layers) == (
        512, 8, 2048, 6)


def test_base_model_has_the_papers_parameter_count():
    # The paper's base model: ~65 M parameters with a shared 37,000-token
    # vocabulary (one matrix for both embeddings and the output projection).
    shared = build_transformer(TransformerConfig(vocab_size=37000, shared_vocabulary=True))
    assert 60e6 < shared.count_params() < 65e6
    separate = build_transformer(TransformerConfig(vocab_size=37000))
    assert separate.count_params() - shared.count_params() == 37000 * 512
