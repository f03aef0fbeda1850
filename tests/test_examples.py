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


def test_moe_language_model_smoke_reports_expert_loads_with_and_without_balance():
    results = _load("train_moe_lm").main(["--smoke", "--experts", "4"])
    assert set(results) == {"without balance loss", "with balance loss 1e-2"}
    for history, loads, val, _ in results.values():
        assert np.isfinite(val["loss"])
        assert loads and all(abs(load.sum() - 1.0) < 1e-5 for load in loads.values())
        assert all(len(load) == 4 for load in loads.values())
        assert any(key.endswith("_routing_dropped") for key in history)


def test_moe_language_model_builtin_text_is_deterministic_and_encodes_losslessly():
    example = _load("train_moe_lm")
    text = example.builtin_text(50, seed=3)
    assert text == example.builtin_text(50, seed=3)
    words = {w: i for i, w in enumerate(example.ONES)}
    words.update({w: 20 + 10 * i for i, w in enumerate(example.TENS)})

    def value(phrase):
        return sum(words[w] for w in phrase.split())

    for line in text.split("\n"):  # every sentence is correct arithmetic
        left, total = line.rstrip(".").split(" is ")
        a, b = left.split(" plus ")
        assert value(a) + value(b) == value(total), line
    ids, vocabulary = example.encode(text)
    assert ids.min() >= 1 and "".join(vocabulary[i - 1] for i in ids) == text
    x, y = example.windows(ids, 16, 5, np.random.default_rng(0))
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])


def test_translation_example_smoke_trains_saves_and_translates(tmp_path):
    result = _load("train_translation").main(
        ["--smoke", "--output-dir", str(tmp_path), "--export-dir", str(tmp_path / "export")]
    )
    history = result["history"]
    assert history["loss"][-1] < history["loss"][0]
    assert 0.0 <= result["exact_match"] <= 1.0
    assert result["export_path"] == str(tmp_path / "export" / "1")
    assert (tmp_path / "export" / "1" / "saved_model.pb").exists()
    for name in ("best.keras", "config.json", "source_vocabulary/vocabulary.txt",
                 "target_vocabulary/vocabulary.txt"):
        assert (tmp_path / name).exists(), name


def test_char_lm_example_smoke_trains_and_scores(tmp_path):
    result = _load("train_char_lm").main(
        ["--smoke", "--output-dir", str(tmp_path), "--export-dir", str(tmp_path / "export")]
    )
    assert (tmp_path / "export" / "1" / "saved_model.pb").exists()
    # 81 steps (3 epochs, whatever the machine's speed) on a text that
    # repeats, from ln(128) = 4.85 nats for a uniform guess; 0.44 measured.
    assert result["val_loss"] < 2.0
    assert (tmp_path / "model.keras").exists() and (tmp_path / "config.json").exists()


def test_char_lm_tokenizer_keeps_case_and_round_trips():
    from keras_transformer.recipes import char_lm

    tokenizer = char_lm.character_tokenizer()
    text = "ROMEO:\nO, she doth teach the torches to burn bright!"
    ids = char_lm.encode(tokenizer, text)
    assert ids.min() > 0 and ids.max() < 128
    assert char_lm.decode(tokenizer, ids) == text


def test_custom_model_example_trains_decodes_and_exports_its_own_model(tmp_path):
    result = _load("custom_model").main(["--smoke", "--export-dir", str(tmp_path / "mine")])
    assert result["loss"][-1] < result["loss"][0]
    assert result["export_path"] == str(tmp_path / "mine" / "1")
    assert result["served"] == result["translations"] and len(result["served"]) == 4


def test_from_keras_hub_example_smoke_imports_fine_tunes_and_serves(tmp_path):
    result = _load("from_keras_hub").main(["--smoke", "--export-dir", str(tmp_path / "gpt2")])
    assert result["loss"][-1] < result["loss"][0]
    assert result["served"] == result["generated"]
    assert result["export_path"] == str(tmp_path / "gpt2" / "1")
