"""Run directories written by keras_transformer 0.2.0 still load.

`tests/fixtures/runs_0_2/` holds, for an encoder–decoder (post-LN, sinusoidal,
an MoE block) and a decoder-only model (pre-norm RMSNorm, SwiGLU, rotary,
grouped-query, untied output), the `config.json` a recipe writes and the
compiled `.keras` file, written by version 0.2.0, with the logits it gave on
`inputs.npy`. Today's code must read the configuration, rebuild the model from
it, and reload the `.keras` file to the same logits.
"""

import json
import pathlib

import keras
import numpy as np
import pytest

import keras_transformer  # noqa: F401  (registers the classes load_model needs)
from keras_transformer.models import TransformerConfig, build_causal_lm, build_transformer

# Runs under every Keras backend (CI: TensorFlow, then JAX); see tests/conftest.py.
pytestmark = pytest.mark.backend_neutral

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "runs_0_2"
RUNS = {"translation": build_transformer, "char_lm": build_causal_lm}


@pytest.mark.parametrize("run", sorted(RUNS))
def test_a_config_json_of_0_2_rebuilds_the_same_model(run):
    values = json.loads((FIXTURES / run / "config.json").read_text())
    config = TransformerConfig.from_dict(values)
    model = RUNS[run](config)
    saved = keras.saving.load_model(FIXTURES / run / "model.keras", compile=False)
    assert model.count_params() == saved.count_params()
    assert [w.shape for w in model.weights] == [w.shape for w in saved.weights]


# The files were saved before any training step: the optimizer had no slots yet.
@pytest.mark.filterwarnings("ignore:Skipping variable loading for optimizer")
@pytest.mark.parametrize("run", sorted(RUNS))
def test_a_keras_file_of_0_2_reloads_to_the_same_logits(run):
    model = keras.saving.load_model(FIXTURES / run / "model.keras")
    ids = np.load(FIXTURES / run / "inputs.npy")
    logits = model([ids, ids] if model.is_encoder_decoder else ids)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(logits),
                               np.load(FIXTURES / run / "logits.npy"), atol=2e-5)
