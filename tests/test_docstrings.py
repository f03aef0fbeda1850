"""The `Example:` sections of the public docstrings run and print what they say."""

import doctest
import importlib

import keras
import pytest

MODULES = [
    "keras_transformer.layers.positional_embedding",
    "keras_transformer.layers.multi_head_attention",
    "keras_transformer.layers.positionwise_ffn",
    "keras_transformer.layers.encoder_block",
    "keras_transformer.layers.decoder_block",
    "keras_transformer.layers.block_options",
    "keras_transformer.layers.moe",
    "keras_transformer.layers.moe_routing",
    "keras_transformer.training.metrics",
    "keras_transformer.training.schedules",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    results = doctest.testmod(
        module, extraglobs={"keras": keras}, optionflags=doctest.NORMALIZE_WHITESPACE
    )
    assert results.attempted > 0, f"{name} has no docstring example"
    assert results.failed == 0
