"""The examples run end to end in their smoke setting."""

import importlib.util
import pathlib

import numpy as np

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quickstart_smoke_trains_and_decodes():
    result = _load("quickstart").main(["--smoke", "--epochs", "3"])
    assert np.all(np.isfinite(result["loss"]))
    assert result["loss"][-1] < result["loss"][0]
    assert 0.0 <= result["exact_match"] <= 1.0


def test_quickstart_data_is_teacher_forced_reversal():
    quickstart = _load("quickstart")
    source, decoder_input, labels = quickstart.make_data(50, 6, np.random.default_rng(0))
    for src, inp, lab in zip(source, decoder_input, labels):
        digits = src[src != 0]
        n = len(digits)
        np.testing.assert_array_equal(inp[: n + 1], [quickstart.START, *digits[::-1]])
        np.testing.assert_array_equal(lab[: n + 1], [*digits[::-1], quickstart.END])
        # Labels are the decoder inputs shifted left by one.
        np.testing.assert_array_equal(lab[:n], inp[1 : n + 1])
        assert not inp[n + 1 :].any() and not lab[n + 1 :].any()
