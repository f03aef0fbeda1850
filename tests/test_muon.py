"""`training.optimizers.Muon`: Keras's Muon with the attention kernels and the
MoE experts orthogonalized as matrices rather than sent to AdamW, on any
Keras the package supports."""

import keras
import numpy as np
import pytest

from keras_transformer.models import TransformerConfig, build_causal_lm
from keras_transformer.training.optimizers import Muon, matrix_shape

KERAS_MUON = getattr(keras.optimizers, "Muon", None)


def _model(moe=False):
    config = TransformerConfig(vocab_size=50, max_length=12, embed_dim=16, num_heads=4,
                               ffn_dim=32, num_encoder_layers=0, num_decoder_layers=2,
                               dropout=0.0, norm_first=True,
                               moe={"num_experts": 4, "top_k": 2} if moe else None)
    return build_causal_lm(config)


def _by_path(model, ending):
    return next(v for v in model.trainable_variables if v.path.endswith(ending))


def test_the_matrix_view_of_each_variable():
    model = _model(moe=True)
    views = {v.path: matrix_shape(v) for v in model.trainable_variables}
    query = next(p for p in views if p.endswith("query/kernel"))
    output = next(p for p in views if p.endswith("attention_output/kernel"))
    experts = next(p for p in views if p.endswith("inner_kernel"))
    assert views[query] == (16, 16)  # (d, N, H) → (d, N·H)
    assert views[output] == (16, 16)  # (N, H, d) → (N·H, d)
    assert views[experts] == (4, 16, 32)  # four matrices of (d, f)
    assert all(views[p] is None for p in views if p.endswith(("bias", "gamma", "beta")))
    muon = Muon()
    for variable in model.trainable_variables:
        adamw = muon.orthogonalizes(variable) is None
        if "embedding" in variable.path or variable.path.startswith("logits"):
            assert adamw, variable.path  # as Muon's authors advise
        else:
            assert adamw == (views[variable.path] is None), variable.path
    assert Muon(exclude_layers=["query"]).orthogonalizes(_by_path(model, "query/kernel")) is None


@pytest.mark.skipif(KERAS_MUON is None or "rms_rate" not in KERAS_MUON().get_config(),
                    reason="keras.optimizers.Muon with Moonlight's scale needs Keras 3.13+")
def test_a_dense_kernel_and_a_bias_update_as_in_keras_muon():
    """Where the variable is a plain matrix (or goes to AdamW), the update is Keras's."""
    settings = dict(learning_rate=0.02, weight_decay=0.1, adam_weight_decay=0.05,
                    adam_beta_2=0.99)
    rng = np.random.default_rng(1)
    kernel = rng.normal(size=(12, 20)).astype("float32")
    bias = rng.normal(size=(20,)).astype("float32")
    steps = [[rng.normal(size=(12, 20)).astype("float32"), rng.normal(size=(20,)).astype("float32")]
             for _ in range(3)]
    results = []
    for optimizer in (Muon(**settings), KERAS_MUON(**settings)):
        variables = [keras.Variable(kernel, name="kernel"), keras.Variable(bias, name="bias")]
        optimizer.build(variables)
        for gradients in steps:
            optimizer.apply([keras.ops.convert_to_tensor(g) for g in gradients], variables)
        results.append([v.numpy() for v in variables])
    ours, theirs = results
    assert not np.allclose(ours[0], kernel) and not np.allclose(ours[1], bias)
    np.testing.assert_allclose(ours[0], theirs[0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ours[1], theirs[1], rtol=1e-4, atol=1e-5)


def _condition(matrix):
    values = np.linalg.svd(matrix, compute_uv=False)
    return values.max() / values.min()


@pytest.mark.parametrize("ending, rows", [("query/kernel", 16), ("attention_output/kernel", 16),
                                          ("inner_kernel", None)])
def test_an_update_is_orthogonalized_as_a_matrix(ending, rows):
    model = _model(moe=True)
    variable = _by_path(model, ending)
    before = np.array(variable.numpy())
    rng = np.random.default_rng(0)
    gradient = rng.normal(size=variable.shape).astype("float32")
    optimizer = Muon(learning_rate=1.0, weight_decay=0.0)
    optimizer.build([variable])
    optimizer.apply([keras.ops.convert_to_tensor(gradient)], [variable])
    update = (before - variable.numpy()).reshape(matrix_shape(variable))
    matrices = [update] if update.ndim == 2 else list(update)
    for matrix in matrices:
        # Newton–Schulz leaves every singular value near one (0.7–1.2): a
        # condition number near 1, where the gradient's own is large and
        # AdamW's first step (the gradient's sign) has one of tens.
        assert _condition(matrix) < 2.5
    gradients = gradient.reshape(matrix_shape(variable))
    assert _condition(gradients if gradients.ndim == 2 else gradients[0]) > 3

def test_a_model_trains_with_muon_and_the_optimizer_serializes():
    model = _model()
    model.compile(optimizer=Muon(learning_rate=3e-3, weight_decay=0.1),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 50, size=(32, 12))
    history = model.fit(ids, np.roll(ids, -1, axis=1), epochs=3, batch_size=8, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    config = keras.optimizers.serialize(model.optimizer)
    restored = keras.optimizers.deserialize(config)
    assert isinstance(restored, Muon) and restored.exclude_layers == ["logits"]
