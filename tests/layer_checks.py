"""Checks that every public layer must pass, with public Keras APIs only.

`run_layer_checks` runs, for one layer configuration:
- config round trip (`get_config` → `from_config` → same config, also through
  `keras.saving.serialize_keras_object` and the registered name);
- eager and symbolic calls agree with `compute_output_shape`;
- the number of trainable and non-trainable weights;
- one `fit` step with `jit_compile=True` that changes the weights and gives a
  finite loss;
- `.keras` save/load reproduces the outputs, also at another batch size;
- finite outputs under `mixed_float16` and `mixed_bfloat16`.
"""

import numpy as np

import keras


def run_layer_checks(
    layer_cls,
    init_kwargs,
    inputs,
    call_kwargs=None,
    expected_trainable_weights=None,
    expected_non_trainable_weights=0,
    tmp_path=None,
):
    """Runs the common checks. `inputs` maps call-argument names to arrays."""
    call_kwargs = call_kwargs or {}
    _check_config_round_trip(layer_cls, init_kwargs)

    layer = layer_cls(**init_kwargs)
    eager_output = layer(**inputs, **call_kwargs)
    output_shape = layer.compute_output_shape(
        **{f"{name}_shape": np.shape(value) for name, value in inputs.items()}
    )
    assert tuple(eager_output.shape) == tuple(output_shape), (
        f"eager output {eager_output.shape} != compute_output_shape {output_shape}"
    )
    if expected_trainable_weights is not None:
        got = len(layer.trainable_weights)
        assert got == expected_trainable_weights, (
            f"{got} trainable weights, expected {expected_trainable_weights}"
        )
    assert len(layer.non_trainable_weights) == expected_non_trainable_weights

    model = _functional_model(layer_cls(**init_kwargs), inputs, call_kwargs)
    symbolic_shape = tuple(model.outputs[0].shape)
    assert symbolic_shape[1:] == tuple(output_shape)[1:], (
        f"symbolic output {symbolic_shape} != compute_output_shape {output_shape}"
    )
    _check_fit_step(model, inputs)
    if tmp_path is not None:
        _check_save_load(model, inputs, tmp_path)
    for policy in ("mixed_float16", "mixed_bfloat16"):
        mixed = layer_cls(**init_kwargs, dtype=policy)
        output = mixed(**inputs, **call_kwargs)
        assert keras.backend.standardize_dtype(output.dtype) == policy.split("_")[1]
        assert np.all(np.isfinite(keras.ops.convert_to_numpy(output).astype("float32")))


def _check_config_round_trip(layer_cls, init_kwargs):
    layer = layer_cls(**init_kwargs)
    config = layer.get_config()
    restored = layer_cls.from_config(config)
    assert restored.get_config() == config
    serialized = keras.saving.serialize_keras_object(layer)
    assert serialized["registered_name"] == f"keras_transformer>{layer_cls.__name__}"
    again = keras.saving.deserialize_keras_object(serialized)
    assert type(again) is layer_cls
    assert again.get_config() == config


def _functional_model(layer, inputs, call_kwargs):
    symbolic = {
        name: keras.Input(
            shape=np.shape(value)[1:], dtype=str(np.asarray(value).dtype), name=name
        )
        for name, value in inputs.items()
    }
    output = layer(**symbolic, **call_kwargs)
    return keras.Model(symbolic, output)


def _check_fit_step(model, inputs):
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse", jit_compile=True)
    before = [keras.ops.convert_to_numpy(w) for w in model.trainable_weights]
    prediction = model.predict(inputs, verbose=0)
    target = np.random.default_rng(0).normal(size=prediction.shape).astype("float32")
    history = model.fit(inputs, target, epochs=1, batch_size=len(target), verbose=0)
    assert np.isfinite(history.history["loss"][0])
    after = [keras.ops.convert_to_numpy(w) for w in model.trainable_weights]
    assert any(not np.allclose(b, a) for b, a in zip(before, after)), (
        "one fit step changed no trainable weight"
    )


def _check_save_load(model, inputs, tmp_path):
    path = str(tmp_path / "model.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    np.testing.assert_allclose(
        restored.predict(inputs, verbose=0), model.predict(inputs, verbose=0), atol=1e-6
    )
    # Another batch size: the first example alone.
    first = {name: np.asarray(value)[:1] for name, value in inputs.items()}
    np.testing.assert_allclose(
        restored.predict(first, verbose=0), model.predict(first, verbose=0), atol=1e-6
    )
