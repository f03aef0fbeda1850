"""The `keras-transformer` command: help for every option, and a real run."""

import subprocess
import sys

import pytest

from keras_transformer import cli


@pytest.mark.parametrize("task", ["translation", "char-lm"])
def test_train_help_explains_every_option(task, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", task, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    parser = cli.build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]
    task_parser = train._subparsers._group_actions[0].choices[task]
    for action in task_parser._actions:
        if action.option_strings and action.dest != "help":
            assert action.option_strings[-1] in text
            assert action.help, f"{task} {action.option_strings} has no help"


def test_unknown_task_is_an_error_naming_the_choices(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "poetry"])
    assert exit_info.value.code == 2
    assert "translation" in capsys.readouterr().err


def test_console_script_is_installed():
    # `pip install` put `keras-transformer` beside this interpreter.
    result = subprocess.run(
        [sys.executable, "-m", "keras_transformer.cli", "--help"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0 and "train" in result.stdout
    from importlib.metadata import entry_points

    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "keras-transformer"]
    assert script.value == "keras_transformer_console:main"


def test_the_entry_point_imports_neither_the_package_nor_tensorflow():
    # It quiets TensorFlow before the package's `__init__` imports Keras (and so
    # TensorFlow); `test_the_command_prints_no_tensorflow_start_up_noise` runs it.
    check = ("import sys, keras_transformer_console; "
             "print(sorted({'keras_transformer', 'tensorflow', 'keras'} & set(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                            timeout=120)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


def test_train_export_translate_evaluate_through_the_command(tmp_path, capsys):
    run_dir, saved = tmp_path / "run", tmp_path / "saved_models"
    assert cli.main(["train", "translation", "--smoke", "--output-dir", str(run_dir),
                     "--export-dir", str(saved / "smoke")]) == 0
    assert (run_dir / "best.keras").exists() and (saved / "smoke" / "1").exists()
    # export: the next version of another name, greedy this time.
    assert cli.main(["export", str(run_dir), "--name", "mine", "--saved-models", str(saved),
                     "--beam-size", "1"]) == 0
    assert (saved / "mine" / "1" / "saved_model.pb").exists()
    capsys.readouterr()
    # translate through the SavedModel and through the run directory: same text.
    cli.main(["translate", str(saved / "mine"), "one book", "two houses"])
    through_saved_model = capsys.readouterr().out.splitlines()
    assert len(through_saved_model) == 2
    # evaluate: BLEU and chrF on a TSV.
    tsv = tmp_path / "test.tsv"
    tsv.write_text("one book\tun libro\ntwo houses\tdos casas\n", encoding="utf-8")
    assert cli.main(["evaluate", str(saved / "mine"), str(tsv)]) == 0
    assert "BLEU" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["import", "export", "translate", "generate", "serve",
                                     "evaluate"])
def test_serving_commands_explain_every_option(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    parser = cli.build_parser()._subparsers._group_actions[0].choices[command]
    for action in parser._actions:
        if action.dest != "help":
            assert action.help, f"{command} {action.dest} has no help"
            assert (action.option_strings or [action.dest])[-1] in text


def test_translation_recipe_takes_the_model_shape_from_config_and_flags(tmp_path, capsys):
    import json

    import keras

    from keras_transformer import DecoderBlock

    shape = tmp_path / "shape.json"
    shape.write_text(json.dumps({"embed_dim": 48, "num_heads": 3, "num_encoder_layers": 1,
                                 "num_decoder_layers": 3, "norm_first": True,
                                 "positions": "learned", "max_length": 40}))
    run_dir, saved = tmp_path / "run", tmp_path / "saved_models"
    assert cli.main(["train", "translation", "--smoke", "--output-dir", str(run_dir),
                     "--export-dir", str(saved / "shaped"), "--config", str(shape),
                     "--ffn-dim", "80", "--num-heads", "4", "--moe-experts", "4",
                     "--moe-every", "3", "--decoding", "greedy"]) == 0
    config = json.loads((run_dir / "config.json").read_text())
    # The file's fields, the flags over them, the vocabulary from the data.
    assert {key: config[key] for key in ("embed_dim", "num_heads", "ffn_dim",
                                         "num_encoder_layers", "num_decoder_layers",
                                         "norm_first", "positions", "max_length", "moe",
                                         "moe_every")} == {
        "embed_dim": 48, "num_heads": 4, "ffn_dim": 80, "num_encoder_layers": 1,
        "num_decoder_layers": 3, "norm_first": True, "positions": "learned", "max_length": 40,
        "moe": {"num_experts": 4, "top_k": 2}, "moe_every": 3}
    assert config["vocab_size"] < 400
    model = keras.saving.load_model(run_dir / "best.keras")
    blocks = [layer for layer in model.layers if isinstance(layer, DecoderBlock)]
    assert [block.moe for block in blocks] == [None, None, {"num_experts": 4, "top_k": 2}]
    assert "greedy" in capsys.readouterr().out
    cli.main(["translate", str(saved / "shaped"), "one book"])
    assert len(capsys.readouterr().out.splitlines()) == 1


def test_char_lm_recipe_takes_the_model_shape_and_decoding_from_flags(tmp_path, capsys):
    import json
    import zipfile

    run_dir, saved = tmp_path / "run", tmp_path / "saved_models"
    assert cli.main(["train", "char-lm", "--smoke", "--output-dir", str(run_dir),
                     "--export-dir", str(saved / "lm"), "--layers", "2", "--dim", "24",
                     "--heads", "3", "--context", "20", "--no-norm-first",
                     "--decoding", "beam", "--beam-size", "2",
                     "--steps-per-execution", "4", "--ema", "0.9",
                     "--newton-schulz-steps", "2"]) == 0
    config = json.loads((run_dir / "config.json").read_text())
    assert (config["num_decoder_layers"], config["embed_dim"], config["num_heads"],
            config["ffn_dim"], config["max_length"], config["norm_first"]) == (
        2, 24, 3, 96, 20, False)
    # Four steps a compiled call; the smoke text's 3 epochs of 43 batches
    # still make 129 steps, as with one step a call (each epoch ends on a
    # call of 3).
    with zipfile.ZipFile(run_dir / "model.keras") as archive:
        compiled = json.loads(archive.read("config.json"))["compile_config"]
    assert compiled["steps_per_execution"] == 4
    # `--ema`: the optimizer keeps the weights' moving average; Muon makes
    # `--newton-schulz-steps` iterations.
    optimizer = compiled["optimizer"]["config"]
    assert (optimizer["use_ema"], optimizer["ema_momentum"], optimizer["ns_steps"]) == (
        True, 0.9, 2)
    out = capsys.readouterr().out
    assert "(129 steps of 16×20 chars)" in out
    # The validation line does not set nanoGPT's 1.87 (another slice) beside
    # its figure; the smoke text is not Shakespeare, so no note either.
    (line,) = [text for text in out.splitlines() if "Validation loss" in text]
    assert line.endswith("on the last 10 % of the text") and "1.87" not in line
    # The exported generator answers `translate` with continued prompts.
    cli.main(["translate", str(saved / "lm"), "First"])
    assert capsys.readouterr().out.startswith("First")


def test_char_lm_moving_average_follows_the_budget_unless_given():
    import argparse

    from keras_transformer.recipes import char_lm

    def momentum(*flags):
        parser = char_lm.add_arguments(argparse.ArgumentParser())
        return char_lm.moving_average_momentum(parser.parse_args(list(flags)))

    assert momentum() == 0.99  # the 95-second default
    assert momentum("--minutes", "4.9") == 0.99
    assert momentum("--minutes", "5") == momentum("--minutes", "10") == 0.999
    assert momentum("--minutes", "10", "--ema", "0.95") == 0.95
    assert momentum("--minutes", "10", "--ema", "0") == 0.0
    # Fine-tuning and the smoke run keep the raw weights unless asked.
    assert momentum("--init-from", "runs/gpt2") == momentum("--smoke") == 0.0
    assert momentum("--smoke", "--ema", "0.9") == 0.9
    with pytest.raises(ValueError, match=r"momentum in \[0, 1\).*Received: --ema 1"):
        momentum("--ema", "1")


def test_bad_model_options_are_errors_that_say_what_was_received(tmp_path):
    shape = tmp_path / "shape.json"
    shape.write_text('{"embed_dim": 48, "layers": 3}')
    with pytest.raises(ValueError, match=r"unknown TransformerConfig fields \['layers'\]"):
        cli.main(["train", "translation", "--smoke", "--output-dir", str(tmp_path / "r"),
                  "--config", str(shape)])
    with pytest.raises(ValueError, match="embed_dim=50, num_heads=4"):
        cli.main(["train", "translation", "--smoke", "--output-dir", str(tmp_path / "r"),
                  "--embed-dim", "50"])


def test_the_command_prints_no_tensorflow_start_up_noise(tmp_path):
    import os
    import shutil

    from keras_transformer.export import export_saved_model
    from tests.helpers import make_translator

    export_saved_model(make_translator(), str(tmp_path / "quiet"))
    command = shutil.which("keras-transformer", path=os.path.dirname(sys.executable))
    env = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    result = subprocess.run([command, "translate", str(tmp_path / "quiet"), "one book"],
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(result.stdout.splitlines()) == 1
    for noise in ("absl::InitializeLog", "oneDNN", "cuInit", "cuda", "I0000", "E0000"):
        assert noise not in result.stderr, result.stderr[-2000:]


def test_translation_recipe_defaults_on_a_real_corpus(tmp_path, capsys):
    """`--data` gets the current blocks, the moving average and, with `--minutes`, the clock
    schedule."""
    import json

    from keras_transformer.recipes import precision

    from keras_transformer.data import generate_pairs

    corpus = tmp_path / "pairs.tsv"
    corpus.write_text("".join(f"{en}\t{es}\tCC-BY\n" for en, es in generate_pairs(600, seed=3)),
                      encoding="utf-8")
    run_dir = tmp_path / "run"
    assert cli.main(["train", "translation", "--data", str(corpus), "--minutes", "0.1",
                     "--epochs", "1", "--vocabulary-size", "300", "--output-dir", str(run_dir),
                     "--export-dir", str(tmp_path / "saved"), "--decoding", "greedy"]) == 0
    config = json.loads((run_dir / "config.json").read_text())
    assert {key: config[key] for key in ("norm_first", "norm", "activation", "ffn_dim",
                                         "dropout")} == {
        "norm_first": True, "norm": "rms", "activation": "swiglu", "ffn_dim": 344, "dropout": 0.0}
    out = capsys.readouterr().out
    assert "a cosine over 0.1 minutes (peak 0.006)" in out
    assert "optimizer: Muon on the projection matrices, Adam on the rest" in out
    assert "weight decay: 0.1 (decoupled, every weight)" in out
    assert f"dtype policy: {precision.resolve('auto')}" in out
    assert "moving average (momentum 0.999" in out
    # 60 held-out pairs: the last 30 are the test split, scored through the SavedModel.
    assert "540 training and 30 validation pairs; 30 test pairs" in out
    assert "Test split: 30 pairs that training never read, through the SavedModel (greedy)" in out
    # The moving average's momentum is in [0, 1).
    with pytest.raises(ValueError, match=r"--ema.*\[0, 1\).*Received: --ema 1"):
        cli.main(["train", "translation", "--smoke", "--ema", "1",
                  "--output-dir", str(tmp_path / "r1"), "--export-dir", str(tmp_path / "s1")])
    # The clock schedule needs a budget to span.
    with pytest.raises(ValueError, match="--minutes"):
        cli.main(["train", "translation", "--smoke", "--schedule", "clock",
                  "--output-dir", str(tmp_path / "r2"), "--export-dir", str(tmp_path / "s2")])


def test_translation_test_split_is_held_out_from_validation_and_training():
    """The last pairs of the held-out tenth are the test split; training pairs do not change."""
    import argparse

    from keras_transformer.recipes import translation

    pairs = [(f"en {i}", f"es {i}") for i in range(40_000)]
    train, held_out = translation.split(pairs, 0.1, seed=4)
    parse = translation.add_arguments(argparse.ArgumentParser()).parse_args
    real, builtin = parse(["--data", "spa-eng.zip"]), parse([])
    assert translation.test_pair_count(real, len(held_out)) == 1500
    assert translation.test_pair_count(builtin, len(held_out)) == 0
    assert translation.test_pair_count(parse(["--test-pairs", "7"]), len(held_out)) == 7
    assert translation.test_pair_count(real, 1000) == 500  # at most half of a small corpus
    validation, test = translation.split_test(held_out, 1500)
    assert len(validation) == 2500 and validation + test == held_out
    assert not set(test) & (set(validation) | set(train))
    with pytest.raises(ValueError, match=r"between 0 and half the 4,000 held-out pairs "
                                         r"\(2,000\). Received: 2,001"):
        translation.split_test(held_out, 2001)


def test_dtype_policy_auto_follows_the_hardware(monkeypatch):
    from keras_transformer.recipes import precision

    monkeypatch.setattr(precision.tf.config, "list_physical_devices", lambda kind: [])
    monkeypatch.setattr(precision, "_cpu_flags", lambda: {"avx2", "amx_bf16", "amx_tile"})
    assert precision.resolve("auto") == "mixed_bfloat16"
    monkeypatch.setattr(precision, "_cpu_flags", lambda: {"avx2", "fma"})
    assert precision.resolve("auto") == "float32"
    assert precision.resolve("mixed_float16") == "mixed_float16"
    with pytest.raises(ValueError, match="'bfloat16'.*mixed_bfloat16"):
        precision.resolve("bfloat16")


def test_dtype_policy_scope_restores_the_former_policy():
    import keras

    from keras_transformer.recipes import precision

    before = keras.config.dtype_policy().name
    with precision.dtype_policy("mixed_bfloat16"):
        layer = keras.layers.Dense(2)
    assert layer.dtype_policy.name == "mixed_bfloat16"
    assert keras.config.dtype_policy().name == before


@pytest.mark.parametrize("policy, dtype", [("mixed_bfloat16", "DT_BFLOAT16"),
                                           ("mixed_float16", "DT_HALF")])
def test_translation_trained_in_16_bits_is_exported_in_float32(policy, dtype, tmp_path, capsys):
    """Either mixed policy trains in 16 bits and serves a float32 graph."""
    import keras
    import tensorflow as tf

    run_dir, saved = tmp_path / "run", tmp_path / "saved"
    assert cli.main(["train", "translation", "--smoke", "--dtype-policy", policy,
                     "--decoding", "greedy", "--output-dir", str(run_dir),
                     "--export-dir", str(saved)]) == 0
    # float16 trains with loss scaling (Keras's `compile` wraps the optimizer).
    scaling = " (dynamic loss scaling)" if policy == "mixed_float16" else ""
    assert f"dtype policy: {policy}{scaling}\n" in capsys.readouterr().out
    # The training checkpoint computes in 16 bits ...
    trained = keras.saving.load_model(run_dir / "best.keras")
    assert {layer.dtype_policy.name for layer in trained.layers
            if layer.weights and layer.name != "logits"} == {policy}
    # ... the served graph has no 16-bit tensor in it.
    served = tf.saved_model.load(str(saved / "1")).signatures["serving_default"]
    graph = served.graph.as_graph_def()
    assert dtype not in str(graph)
    assert served(text=tf.constant(["the cat sees the dog"]))["translation"].shape == (1,)


def test_the_optimizer_its_peak_and_decay_follow_the_schedule():
    """Muon at 6e-3 with weight decay 0.1 on the clock schedule, Adam (3e-3)
    without decay otherwise; the options win."""
    import argparse

    from keras_transformer.recipes.translation import TrainingSettings, add_arguments

    def settings(*argv):
        args = add_arguments(argparse.ArgumentParser()).parse_args(list(argv))
        found = TrainingSettings.from_args(args)
        return found.optimizer, found.schedule, found.learning_rate, found.weight_decay

    real = ("--data", "spa-eng.zip")
    assert settings(*real, "--minutes", "20") == ("muon", "clock", 6e-3, 0.1)
    assert settings(*real, "--minutes", "20", "--optimizer", "adam") == (
        "adam", "clock", 3e-3, 0.1)
    assert settings(*real, "--minutes", "5", "--learning-rate", "1e-3",
                    "--weight-decay", "0") == ("muon", "clock", 1e-3, 0.0)
    # No budget: the paper's schedule; the built-in corpus: the same.
    for argv in (real, ("--minutes", "5")):
        optimizer, schedule, _, decay = settings(*argv)
        assert (optimizer, schedule, decay) == ("adam", "warmup", 0.0)
    assert settings("--optimizer", "muon")[:2] == ("muon", "warmup")
    assert settings("--weight-decay", "0.01")[3] == 0.01


@pytest.mark.parametrize("optimizer", ["adam", "muon"])
def test_weight_decay_reaches_either_optimizer(optimizer):
    """`--weight-decay` is decoupled decay of every weight: AdamW, or both of Muon's parts."""
    import argparse

    import tensorflow as tf

    from keras_transformer.models import TransformerConfig
    from keras_transformer.recipes.translation import (TrainingSettings, add_arguments,
                                                       build_and_compile)

    args = add_arguments(argparse.ArgumentParser()).parse_args(
        ["--data", "spa-eng.zip", "--minutes", "5", "--optimizer", optimizer,
         "--weight-decay", "0.05", "--dtype-policy", "float32"])
    settings = TrainingSettings.from_args(args)
    assert settings.weight_decay == 0.05
    config = TransformerConfig(vocab_size=50, source_vocab_size=40, max_length=8, embed_dim=16,
                               num_heads=2, ffn_dim=32, num_encoder_layers=1,
                               num_decoder_layers=1)
    model = build_and_compile(config, settings, tf.distribute.get_strategy())
    found = model.optimizer
    if optimizer == "muon":
        assert (found.matrix_weight_decay, found.adam_weight_decay) == (0.05, 0.05)
    else:
        assert found.weight_decay == 0.05

    args.weight_decay = -0.1
    with pytest.raises(ValueError, match="Received: --weight-decay -0.1"):
        TrainingSettings.from_args(args)


def test_learning_rate_is_refused_with_the_warmup_schedule(tmp_path):
    with pytest.raises(ValueError, match="--learning-rate.*Received: --learning-rate 0.001"):
        cli.main(["train", "translation", "--smoke", "--learning-rate", "1e-3",
                  "--output-dir", str(tmp_path / "r"), "--export-dir", str(tmp_path / "s")])


def test_import_generate_export_and_fine_tune_a_keras_hub_model(tmp_path, capsys):
    import keras_hub
    import tensorflow as tf

    from keras_transformer.generation import DecodingConfig, TextGenerator
    from keras_transformer.generation.text_generator import load_language_model_run
    from keras_transformer.models import from_keras_hub
    from tests.helpers import gpt2_tokenizer, small_gpt2

    task = keras_hub.models.GPT2CausalLM(
        backbone=small_gpt2(),
        preprocessor=keras_hub.models.GPT2CausalLMPreprocessor(gpt2_tokenizer(),
                                                               sequence_length=8))
    task.save_to_preset(str(tmp_path / "preset"))
    run, saved = tmp_path / "runs" / "gpt2", tmp_path / "saved_models"
    assert cli.main(["import", str(tmp_path / "preset"), "--output-dir", str(run)]) == 0
    prompts = ["ab cd", "gh"]
    generator = TextGenerator(from_keras_hub(task), gpt2_tokenizer(), max_length=12,
                              decoding=DecodingConfig("greedy"))
    expected = [t.decode() for t in
                generator.generate_text(tf.constant(prompts))["text"].numpy()]
    capsys.readouterr()
    cli.main(["generate", str(run), *prompts])  # greedy by default
    assert capsys.readouterr().out.splitlines() == expected
    assert cli.main(["export", str(run), "--name", "gpt2", "--saved-models", str(saved)]) == 0
    capsys.readouterr()
    cli.main(["generate", str(saved / "gpt2"), *prompts])
    assert capsys.readouterr().out.splitlines() == expected
    # Fine-tuning the imported run with its own tokenizer and special ids.
    assert cli.main(["train", "char-lm", "--smoke", "--init-from", str(run),
                     "--output-dir", str(tmp_path / "tuned"),
                     "--export-dir", str(saved / "tuned")]) == 0
    model, tokenizer, config = load_language_model_run(str(tmp_path / "tuned"))
    assert type(tokenizer).__name__ == "GPT2Tokenizer" and config["max_length"] == 12
    assert model.special_ids == from_keras_hub(task).special_ids
