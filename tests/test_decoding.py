"""DecodingConfig: one options object for every generator and command."""

import argparse

import pytest

from keras_transformer.generation import DecodingConfig


def parse(argv, default=None):
    parser = DecodingConfig.add_arguments(argparse.ArgumentParser(), default)
    return DecodingConfig.from_args(parser.parse_args(argv))


def test_options_override_the_commands_default():
    beam = DecodingConfig("beam", beam_size=4)
    assert parse([], beam) == beam
    assert parse(["--beam-size", "1"], beam).strategy == "greedy"
    assert parse(["--beam-size", "6", "--alpha", "0.2"]) == DecodingConfig(
        "beam", beam_size=6, length_penalty=0.2)
    assert parse(["--decoding", "sample", "--temperature", "0.7", "--top-k", "5",
                  "--top-p", "0.9", "--decoding-seed", "3"], beam) == DecodingConfig(
        "sample", beam_size=4, temperature=0.7, top_k=5, top_p=0.9, seed=3)


def test_the_older_keyword_arguments_mean_what_they_meant():
    assert DecodingConfig.from_legacy() == DecodingConfig("greedy")
    assert DecodingConfig.from_legacy(beam_size=4, alpha=0.3) == DecodingConfig(
        "beam", beam_size=4, length_penalty=0.3)
    assert DecodingConfig.from_legacy(temperature=0.0).strategy == "greedy"
    assert DecodingConfig.from_legacy(temperature=0.8, top_k=20) == DecodingConfig(
        "sample", temperature=0.8, top_k=20)


@pytest.mark.parametrize("arguments, message", [
    (dict(strategy="nucleus"), "strategy='nucleus'"),
    (dict(beam_size=0), "beam_size=0"),
    (dict(temperature=0.0), "temperature=0.0"),
    (dict(top_k=-1), "top_k=-1"),
    (dict(top_p=1.5), "top_p=1.5"),
])
def test_bad_settings_say_what_was_received(arguments, message):
    with pytest.raises(ValueError, match=message):
        DecodingConfig(**arguments)
