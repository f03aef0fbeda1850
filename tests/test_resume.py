"""A training process killed anywhere resumes from its last backup, losing nothing else."""

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import keras

from keras_transformer.training.checkpoints import AtomicBackupAndRestore, AtomicBestCheckpoint

# Trains a tiny translation model for EPOCHS epochs of 4 steps, backing up
# after every epoch, and logs (flushed) each epoch's first weights' sum at its
# begin and at its end (after the backup). FAULT kills the process inside
# the backup of epoch FAULT_EPOCH: "torn" after writing half of the weights
# file, "uncommitted" after writing it whole, before anything else.
SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import numpy as np
    import keras
    from keras_transformer.models import TransformerConfig, build_transformer
    from keras_transformer.training import MaskedSparseCategoricalCrossentropy
    from keras_transformer.training.checkpoints import AtomicBackupAndRestore, AtomicBestCheckpoint

    work = sys.argv[1]
    epochs = int(os.environ.get("EPOCHS", "4"))
    crash_after = int(os.environ.get("CRASH_AFTER_EPOCH", "-1"))
    fault, fault_epoch = os.environ.get("FAULT"), int(os.environ.get("FAULT_EPOCH", "-1"))

    def log(**entry):
        entry["weights"] = float(np.sum(keras.ops.convert_to_numpy(model.weights[0])))
        with open(os.path.join(work, "log.jsonl"), "a") as f:
            f.write(json.dumps(entry) + "\\n")
            f.flush()

    class Log(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch
            log(begin=epoch, pid=os.getpid())

        def on_epoch_end(self, epoch, logs=None):  # after the backup
            log(end=epoch)
            if epoch == crash_after:
                os._exit(3)  # killed: no clean-up, no final save

    save_weights = keras.Model.save_weights

    def faulty_save_weights(self, *args, **kwargs):
        save_weights(self, *args, **kwargs)
        path = kwargs.get("filepath") or args[0]
        if fault and logger.epoch == fault_epoch:
            if fault == "torn":
                with open(path, "r+b") as f:
                    f.truncate(os.path.getsize(path) // 2)
            os._exit(9)

    keras.Model.save_weights = faulty_save_weights

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    source = rng.integers(1, 20, size=(64, 6)); target = rng.integers(1, 20, size=(64, 5))
    config = TransformerConfig(vocab_size=20, max_length=8, embed_dim=16, num_heads=2,
                               ffn_dim=32, num_encoder_layers=1, num_decoder_layers=1)
    model = build_transformer(config)
    model.compile(optimizer="adam", loss=MaskedSparseCategoricalCrossentropy())
    logger = Log()  # after the backup: logs the restored weights, and ends once backed up
    model.fit([source, target], target, epochs=epochs, batch_size=16, verbose=0, shuffle=False,
              callbacks=[AtomicBackupAndRestore(os.path.join(work, "backup")), logger])
    """
)


def _env(**extra):
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **{k: str(v) for k, v in extra.items()})


def _run(work, **extra):
    return subprocess.run([sys.executable, "-c", SCRIPT, str(work)], env=_env(**extra),
                          capture_output=True, text=True, timeout=300)


def _log(work):
    return [json.loads(line) for line in (work / "log.jsonl").read_text().splitlines()]


def _check_resumes(log, epochs):
    """Each run resumes at the epoch after the last backup its predecessor logged
    (or one later: killed between the backup and the log line), with the very
    weights that epoch ended with; the last run finishes every epoch."""
    runs = []
    for entry in log:
        if "pid" in entry and (not runs or runs[-1]["pid"] != entry["pid"]):
            runs.append({"pid": entry["pid"], "entries": []})
        runs[-1]["entries"].append(entry)
    ends = {}
    for previous, run in zip([None] + runs, runs):
        first = run["entries"][0]["begin"]
        if previous is None:
            assert first == 0
        else:
            logged = [e["end"] for e in previous["entries"] if "end" in e]
            last_logged = logged[-1] if logged else -1
            began = max(e["begin"] for e in previous["entries"] if "begin" in e)
            assert last_logged + 1 <= first <= began + 1, (last_logged, first, began)
            if first - 1 in ends:  # the backup's weights, not fresh or later ones
                assert abs(ends[first - 1] - run["entries"][0]["weights"]) < 1e-5
        for entry in run["entries"]:
            if "end" in entry:
                ends[entry["end"]] = entry["weights"]
    assert sorted(ends) == list(range(epochs))
    return runs


def test_killed_training_resumes_from_the_epoch_after_its_last_backup(tmp_path):
    first = _run(tmp_path, CRASH_AFTER_EPOCH=1)
    assert first.returncode == 3, first.stderr[-2000:]
    second = _run(tmp_path)
    assert second.returncode == 0, second.stderr[-2000:]
    log = _log(tmp_path)
    assert [e["begin"] for e in log if "begin" in e] == [0, 1, 2, 3]
    _check_resumes(log, epochs=4)
    assert not (tmp_path / "backup").exists()  # deleted once training ended normally


@pytest.mark.parametrize("fault", ["torn", "uncommitted"])
def test_killed_while_writing_a_backup_resumes_from_the_previous_one(tmp_path, fault):
    # Keras's BackupAndRestore, "torn": the next run cannot start (truncated
    # file); "uncommitted": it resumes at epoch 2 with epoch 2's weights and
    # trains that epoch twice.
    first = _run(tmp_path, FAULT=fault, FAULT_EPOCH=2)
    assert first.returncode == 9, first.stderr[-2000:]
    backup = tmp_path / "backup"
    assert len(list(backup.glob("backup-*.weights.h5"))) == 2  # the committed one, the new one
    second = _run(tmp_path)
    assert second.returncode == 0, second.stderr[-2000:]
    log = _log(tmp_path)
    # Epoch 2 is done again from epoch 1's backup: lost = the work since that backup.
    assert [e["begin"] for e in log if "begin" in e] == [0, 1, 2, 2, 3]
    _check_resumes(log, epochs=4)


def test_killed_at_random_points_loses_only_the_work_since_its_last_backup(tmp_path):
    """SIGKILL from outside at random moments (seeded delays), 4 times, then
    let it finish: whatever each kill hit (a step, a backup write, the log),
    every run resumes from the last backup with its weights."""
    epochs, draw = 40, random.Random(7)
    kills = 0
    for _ in range(4):
        seen = len(_log(tmp_path)) if (tmp_path / "log.jsonl").exists() else 0
        process = subprocess.Popen([sys.executable, "-c", SCRIPT, str(tmp_path)],
                                   env=_env(EPOCHS=epochs), stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        try:
            deadline = time.time() + 120
            while time.time() < deadline and process.poll() is None:
                if (tmp_path / "log.jsonl").exists() and len(_log(tmp_path)) > seen:
                    break  # training has begun
                time.sleep(0.02)
            time.sleep(draw.uniform(0.0, 1.5))
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                kills += 1
            process.wait(30)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert kills >= 3
    final = _run(tmp_path, EPOCHS=epochs)
    assert final.returncode == 0, final.stderr[-2000:]
    runs = _check_resumes(_log(tmp_path), epochs=epochs)
    assert len(runs) >= kills + 1


def _model():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="adam", loss="mse")
    return model


def _fit(model, backup, epochs):
    model.fit(np.ones((8, 3)), np.zeros((8, 2)), epochs=epochs, batch_size=4, verbose=0,
              callbacks=[AtomicBackupAndRestore(backup, delete_checkpoint=False)])


def test_a_damaged_backup_is_a_clear_error_naming_the_file(tmp_path):
    backup = tmp_path / "backup"
    _fit(_model(), backup, epochs=2)
    metadata = json.loads((backup / "training_metadata.json").read_text())
    assert metadata["epoch"] == 2 and metadata["weights"] == "backup-00000002.weights.h5"
    assert sorted(p.name for p in backup.iterdir()) == [metadata["weights"],
                                                        "training_metadata.json"]
    weights = backup / metadata["weights"]
    weights.write_bytes(weights.read_bytes()[:100])  # damaged on disk, not by a kill
    with pytest.raises(OSError, match=str(weights)):
        _fit(_model(), backup, epochs=3)
    (backup / "training_metadata.json").write_text("{not json")
    with pytest.raises(ValueError, match="training_metadata.json.*Delete"):
        _fit(_model(), backup, epochs=3)


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="save_freq.*received 0"):
        AtomicBackupAndRestore("backup", save_freq=0)
    with pytest.raises(ValueError, match="backup_dir.*received ''"):
        AtomicBackupAndRestore("")


def test_best_checkpoint_saves_on_improvement_only(tmp_path):
    path = tmp_path / "best.keras"
    model = _model()
    saved = []

    class Record(keras.callbacks.Callback):  # after the checkpoint: was this epoch saved?
        def on_epoch_end(self, epoch, logs=None):
            on_disk = keras.models.load_model(path).get_weights()
            saved.append(all(np.array_equal(a, b)
                             for a, b in zip(on_disk, self.model.get_weights())))

    losses = iter([3.0, 2.0, 2.5, 1.0])

    class FakeLoss(keras.callbacks.Callback):  # before it: sets the monitored value
        def on_epoch_end(self, epoch, logs=None):
            logs["val_loss"] = next(losses)

    model.fit(np.ones((8, 3)), np.zeros((8, 2)), epochs=4, verbose=0,
              callbacks=[FakeLoss(), AtomicBestCheckpoint(str(path)), Record()])
    assert saved == [True, True, False, True]  # val_loss 3.0, 2.0, 2.5, 1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.keras"]  # no staging left
    keras.models.load_model(path)
    with pytest.raises(ValueError, match="end in '.keras'"):
        AtomicBestCheckpoint(str(tmp_path / "best.h5"))
    with pytest.raises(KeyError, match="'val_acc'.*available"):
        _model().fit(np.ones((8, 3)), np.zeros((8, 2)), verbose=0,
                     callbacks=[AtomicBestCheckpoint(str(path), monitor="val_acc")])


KILLED_WHILE_SAVING_BEST = textwrap.dedent(
    """
    import os, sys
    import numpy as np
    import keras
    from keras_transformer.training import AtomicBestCheckpoint

    save, calls = keras.Model.save, []

    def torn_save(self, filepath, *args, **kwargs):
        save(self, filepath, *args, **kwargs)
        calls.append(filepath)
        if len(calls) == 2:  # the second save: half-written, then killed
            with open(filepath, "r+b") as f:
                f.truncate(os.path.getsize(filepath) // 2)
            os._exit(9)

    keras.Model.save = torn_save
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    x, y = np.ones((8, 3)), np.zeros((8, 2))
    model.fit(x, y, validation_data=(x, y), epochs=3, verbose=0,
              callbacks=[AtomicBestCheckpoint(sys.argv[1])])
    """
)


def test_killed_while_saving_the_best_model_keeps_the_previous_best(tmp_path):
    path = tmp_path / "best.keras"
    result = subprocess.run([sys.executable, "-c", KILLED_WHILE_SAVING_BEST, str(path)],
                            env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 9, result.stderr[-2000:]
    model = keras.models.load_model(path)  # epoch 1's model, whole
    assert model.count_params() == 8
