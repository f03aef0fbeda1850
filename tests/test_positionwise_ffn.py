import keras
import numpy as np
import pytest
from keras import ops

from keras_transformer import PositionwiseFFN
from tests.layer_checks import run_layer_checks

# Runs under every Keras backend (CI: TensorFlow, then JAX); see tests/conftest.py.
pytestmark = pytest.mark.backend_neutral

X = np.random.default_rng(0).normal(size=(2, 5, 8)).astype("float32")


def _np(x):
    return ops.convert_to_numpy(x)


def test_equals_relu_of_two_affine_maps():
    layer = PositionwiseFFN(hidden_dim=32)
    out = _np(layer(X))
    w1, b1, w2, b2 = [_np(w) for w in layer.get_weights()]
    np.testing.assert_allclose(out, np.maximum(0, X @ w1 + b1) @ w2 + b2, atol=1e-5)


def test_each_position_is_transformed_alone():
    layer = PositionwiseFFN(hidden_dim=32)
    changed = X.copy()
    changed[:, 3] += 1.0
    a, b = _np(layer(X)), _np(layer(changed))
    np.testing.assert_allclose(np.delete(a, 3, axis=1), np.delete(b, 3, axis=1), atol=1e-6)
    assert not np.allclose(a[:, 3], b[:, 3])


def test_bad_configuration_is_a_value_error():
    with pytest.raises(ValueError, match="hidden_dim=0"):
        PositionwiseFFN(hidden_dim=0)


@pytest.mark.parametrize("activation", ["relu", "gelu", "gelu_tanh", "swiglu", "geglu"])
def test_common_layer_checks(tmp_path, activation):
    run_layer_checks(
        PositionwiseFFN,
        {"hidden_dim": 32, "activation": activation, "dropout": 0.1},
        {"inputs": X},
        expected_trainable_weights=6 if activation.endswith("glu") else 4,
        tmp_path=tmp_path,
    )


def test_gelu_tanh_is_the_tanh_approximation_and_round_trips():
    layer = PositionwiseFFN(hidden_dim=8, activation="gelu_tanh")
    x = np.linspace(-3, 3, 7, dtype="float32")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(layer.activation(x)),
        0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3))), atol=1e-6)
    assert layer.get_config()["activation"] == "gelu_tanh"
    assert PositionwiseFFN.from_config(layer.get_config()).activation is layer.activation
