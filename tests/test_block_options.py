"""One description of a block's options: the blocks, `TransformerConfig` and the
command's flags check and offer the same options the same way."""

import argparse
import dataclasses

import numpy as np
import pytest

from keras_transformer import DecoderBlock, EncoderBlock, PositionalEmbedding
from keras_transformer.layers import BlockOptions
from keras_transformer.layers.block_options import NORMS, POSITIONS, command_line_fields
from keras_transformer.models import TransformerConfig

# Runs under every Keras backend (CI: TensorFlow, then JAX); see tests/conftest.py.
pytestmark = pytest.mark.backend_neutral

BAD = [
    ({"num_heads": 0}, "num_heads"),
    ({"ffn_dim": -1}, "ffn_dim"),
    ({"dropout": 1.0}, "dropout"),
    ({"norm": "batch"}, "norm"),
    ({"layer_norm_epsilon": 0.0}, "layer_norm_epsilon"),
    ({"activation": "no_such_activation"}, "activation"),
    ({"num_key_value_heads": 3}, "num_key_value_heads"),
    ({"moe": {"top_k": 2}}, "moe"),
]


@pytest.mark.parametrize("change, name", BAD)
def test_the_blocks_and_the_config_refuse_a_bad_option_with_the_same_message(change, name):
    arguments = {"num_heads": 4, "ffn_dim": 64, **change}
    with pytest.raises(ValueError, match=f"`{name}`") as from_options:
        BlockOptions(**arguments)
    for block in (EncoderBlock, DecoderBlock):
        with pytest.raises(ValueError) as from_block:
            block(**arguments)
        assert str(from_block.value) == str(from_options.value)
    with pytest.raises(ValueError, match=f"`{name}`"):
        TransformerConfig(embed_dim=16, **arguments)


def test_a_config_gives_each_block_its_options():
    config = TransformerConfig(num_heads=4, embed_dim=32, ffn_dim=64, norm="rms",
                               positions="rotary", num_key_value_heads=2,
                               moe={"num_experts": 4}, moe_every=2)
    first, second = config.block_options(0), config.block_options(1)
    assert first.moe is None and second.moe == {"num_experts": 4}
    assert first.rotary and first.norm == "rms" and first.num_key_value_heads == 2
    block = DecoderBlock(**second.block_arguments())
    assert block.moe == {"num_experts": 4} and block.rotary and block.norm == "rms"
    assert not TransformerConfig(positions="learned").block_options(0).rotary


def test_every_block_option_with_a_flag_is_offered_by_the_command():
    from keras_transformer.recipes import model_options

    parser = model_options.add_model_arguments(argparse.ArgumentParser(), TransformerConfig())
    actions = {a.dest: a for a in parser._actions}
    for name, meta in command_line_fields():
        assert meta["flag"] in actions[name].option_strings
        assert actions[name].help.startswith(meta["help"])
    assert tuple(actions["norm"].choices) == NORMS
    assert tuple(actions["positions"].choices) == POSITIONS
    flagged = {name for name, _ in command_line_fields()}
    fields = {f.name for f in dataclasses.fields(BlockOptions)}
    # What has no flag of its own: set by --positions, --moe-experts, or not
    # offered (a pretrained architecture's details, read from its preset).
    assert fields - flagged == {"layer_norm_epsilon", "rotary", "moe", "use_bias",
                                "rotary_max_wavelength", "rotary_scaling", "sliding_window"}


def test_rotary_positions_add_nothing_and_none_is_the_same():
    ids = np.array([[3, 4, 5, 0]], "int32")
    rotary = PositionalEmbedding(10, 8, 4, positions="rotary", scale=False)
    none = PositionalEmbedding(10, 8, 4, positions="none", scale=False)
    rotary.build((1, 4))
    none.build((1, 4))
    none.set_weights(rotary.get_weights())
    np.testing.assert_array_equal(np.asarray(rotary(ids)), np.asarray(none(ids)))
    np.testing.assert_array_equal(np.asarray(rotary(ids)),
                                  np.asarray(rotary.get_weights()[0])[ids])
    assert not rotary.adds_positions and not none.adds_positions
    assert PositionalEmbedding(10, 8, 4).adds_positions
    with pytest.raises(ValueError, match="positions"):
        PositionalEmbedding(10, 8, 4, positions="alibi")
