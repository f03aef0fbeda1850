"""A training process killed mid-run resumes from its last backup."""

import json
import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import numpy as np
    import keras
    from keras_transformer.models import TransformerConfig, build_transformer
    from keras_transformer.training import MaskedSparseCategoricalCrossentropy

    work = sys.argv[1]
    crash_after = int(os.environ.get("CRASH_AFTER_EPOCH", "-1"))

    class Log(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            weights = float(np.sum(keras.ops.convert_to_numpy(self.model.weights[0])))
            with open(os.path.join(work, "log.jsonl"), "a") as f:
                f.write(json.dumps({"begin": epoch, "weights": weights}) + "\\n")

    class Crash(keras.callbacks.Callback):  # after BackupAndRestore in the list
        def on_epoch_end(self, epoch, logs=None):
            with open(os.path.join(work, "log.jsonl"), "a") as f:
                f.write(json.dumps({"end": epoch, "weights": float(np.sum(
                    keras.ops.convert_to_numpy(self.model.weights[0])))}) + "\\n")
            if epoch == crash_after:
                os._exit(3)  # killed: no clean-up, no final save

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    source = rng.integers(1, 20, size=(64, 6)); target = rng.integers(1, 20, size=(64, 5))
    config = TransformerConfig(vocab_size=20, max_length=8, embed_dim=16, num_heads=2,
                               ffn_dim=32, num_encoder_layers=1, num_decoder_layers=1)
    model = build_transformer(config)
    model.compile(optimizer="adam", loss=MaskedSparseCategoricalCrossentropy())
    model.fit([source, target], target, epochs=4, batch_size=16, verbose=0, callbacks=[
        Log(), keras.callbacks.BackupAndRestore(os.path.join(work, "backup")), Crash()])
    """
)


def _run(work, crash_after=None):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    if crash_after is not None:
        env["CRASH_AFTER_EPOCH"] = str(crash_after)
    return subprocess.run([sys.executable, "-c", SCRIPT, str(work)], env=env,
                          capture_output=True, text=True, timeout=300)


def test_killed_training_resumes_from_the_epoch_after_its_last_backup(tmp_path):
    first = _run(tmp_path, crash_after=1)
    assert first.returncode == 3, first.stderr[-2000:]
    second = _run(tmp_path)
    assert second.returncode == 0, second.stderr[-2000:]
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    begins = [entry["begin"] for entry in log if "begin" in entry]
    # Run 1: epochs 0 and 1, killed after 1. Run 2: starts at epoch 2, not 0.
    assert begins == [0, 1, 2, 3]
    end_of_1 = next(e["weights"] for e in log if e.get("end") == 1)
    begin_of_2 = next(e["weights"] for e in log if e.get("begin") == 2)
    assert abs(end_of_1 - begin_of_2) < 1e-4  # the weights of the backup, not fresh ones
