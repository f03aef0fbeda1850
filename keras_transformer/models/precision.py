"""Mixed precision: a scope that builds layers under a dtype policy, and the
float32 copy of a model trained under one."""

import contextlib

import keras

from keras_transformer._keras_compat import all_layers


@contextlib.contextmanager
def dtype_policy(name):
    """Layers built inside take the Keras dtype policy `name`; the former one comes back after.

    Args:
        name: a Keras dtype policy name (`"float32"`, `"mixed_bfloat16"`,
            `"mixed_float16"`, ...).
    """
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def float32_copy(model):
    """The same functional model with every layer computing in float32.

    A model built under `mixed_bfloat16` or `mixed_float16` keeps float32
    variables but computes in 16 bits, and so does a SavedModel exported from
    it. This clones the model's graph with each layer's `dtype` set to
    `"float32"` and copies the weights, for evaluation and export that answer
    the same on any machine. A model that is float32 throughout comes back
    as it is (sublayers included: a float32 layer that holds a mixed-precision
    sublayer is copied too).

    Args:
        model: a functional `keras.Model` (one of the builders', or one
            stacked from the layers).

    Returns:
        A `keras.Model` with the same weights, computing in float32.
    """
    if all(layer.dtype_policy.name in ("float32", "int8_from_float32")
           for layer in all_layers(model, include_self=False)):
        return model

    def clone(layer):
        config = layer.get_config()
        if "dtype" in config:
            config["dtype"] = "float32"
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    special_ids = getattr(model, "special_ids", None)
    if special_ids is not None:  # the vocabulary's ids stay the model's
        copy.special_ids = special_ids
    return copy
