"""Training under tf.distribute on this machine: 2 logical CPUs, 2 local workers.

Each case runs in fresh processes: logical devices and collective ops must be
configured before TensorFlow initializes.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from keras_transformer.training import distribute

MIRRORED = textwrap.dedent(
    """
    import json
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
    import keras
    from keras_transformer.models import TransformerConfig, build_transformer
    from keras_transformer.training import MaskedSparseCategoricalCrossentropy, MaskedAccuracy

    config = TransformerConfig(vocab_size=30, max_length=12, embed_dim=16, num_heads=2,
                               ffn_dim=32, num_encoder_layers=1, num_decoder_layers=1,
                               dropout=0.0)
    rng = np.random.default_rng(0)
    source = rng.integers(1, 30, size=(24, 10)).astype("int32")
    target = rng.integers(1, 30, size=(24, 9)).astype("int32")
    # The first half of every global batch of 8 is mostly padding, the second
    # half hardly any: per-replica means would weigh the tokens wrongly.
    for row in range(24):
        cut = 2 if row % 8 < 4 else 8
        source[row, cut:] = 0
        target[row, cut:] = 0
    labels = np.roll(target, -1, axis=1)
    labels[:, -1] = 0
    dataset = tf.data.Dataset.from_tensor_slices(((source, target), labels)).batch(8)

    keras.utils.set_random_seed(0)
    initial = build_transformer(config).get_weights()

    def train(strategy):
        with strategy.scope():
            model = build_transformer(config)
            model.set_weights(initial)
            model.compile(optimizer=keras.optimizers.SGD(0.5),
                          loss=MaskedSparseCategoricalCrossentropy(label_smoothing=0.1),
                          metrics=[MaskedAccuracy()])
        history = model.fit(dataset, epochs=2, verbose=0, shuffle=False)
        return model.get_weights(), history.history["loss"]

    one, one_loss = train(tf.distribute.get_strategy())
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    two, two_loss = train(mirrored)
    moved = max(float(np.abs(a - b).max()) for a, b in zip(one, initial))
    print(json.dumps({
        "replicas": mirrored.num_replicas_in_sync,
        "max_difference": max(float(np.abs(a - b).max()) for a, b in zip(one, two)),
        "moved": moved, "one_loss": one_loss, "two_loss": two_loss}))
    """
)


def _python(script, env=None, timeout=600):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_mirrored_on_two_cpus_equals_one_device_on_the_same_global_batch():
    result = _python(MIRRORED)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["replicas"] == 2
    assert figures["moved"] > 1e-2  # training changed the weights...
    assert figures["max_difference"] < 1e-5  # ...the same way on one and two replicas
    np.testing.assert_allclose(figures["two_loss"], figures["one_loss"], rtol=1e-5)


MOE_LOSS = textwrap.dedent(
    """
    import json
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
    import keras
    from keras_transformer.models import TransformerConfig, build_causal_lm
    from keras_transformer.training import MaskedSparseCategoricalCrossentropy

    moe = {"num_experts": 4, "top_k": 2, "capacity_factor": 4.0, "aux_loss_weight": 0.5,
           "z_loss_weight": 0.0}
    config = TransformerConfig(vocab_size=30, max_length=12, embed_dim=16, num_heads=2,
                               ffn_dim=32, num_encoder_layers=0, num_decoder_layers=1,
                               dropout=0.0, moe=moe, moe_every=1)
    rng = np.random.default_rng(0)
    x = rng.integers(1, 30, size=(8, 10)).astype("int32")
    y = rng.integers(1, 30, size=(8, 10)).astype("int32")
    keras.utils.set_random_seed(0)
    initial = build_causal_lm(config).get_weights()
    loss_fn = MaskedSparseCategoricalCrossentropy()

    def first_step(strategy, learning_rate):
        with strategy.scope():
            model = build_causal_lm(config)
            model.set_weights(initial)
            model.compile(optimizer=keras.optimizers.SGD(learning_rate), loss=loss_fn)
        data = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
        history = model.fit(data, epochs=1, verbose=0, shuffle=False)
        return history.history["loss"][0], model

    mirrored_strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    single, model = first_step(tf.distribute.get_strategy(), 0.0)
    mirrored, _ = first_step(mirrored_strategy, 0.0)
    _, stepped = first_step(mirrored_strategy, 0.5)
    cross_entropy = float(loss_fn(y, model(x)))

    def aux(rows):
        model(x[rows], training=True)
        return sum(model.losses)

    aux_all, aux_halves = float(aux(slice(0, 8))), [float(aux(slice(0, 4))), float(aux(slice(4, 8)))]

    # The step two replicas should take: the gradient of the cross-entropy
    # over the global batch plus the mean of the halves' auxiliary losses.
    with tf.GradientTape() as tape:
        target = loss_fn(y, model(x, training=True))
        target += (aux(slice(0, 4)) + aux(slice(4, 8))) / 2
    gradients = tape.gradient(target, model.trainable_weights)
    for variable, gradient in zip(model.trainable_weights, gradients):
        if gradient is not None:
            variable.assign_sub(0.5 * tf.convert_to_tensor(gradient))
    step_error = max(float(np.max(np.abs(a - b)))
                     for a, b in zip(stepped.get_weights(), model.get_weights()))

    print(json.dumps({"single": single, "mirrored": mirrored, "cross_entropy": cross_entropy,
                      "aux_all": aux_all, "aux_halves": aux_halves,
                      "step_error": step_error}))
    """
)


def test_moe_auxiliary_losses_are_averaged_over_replicas():
    result = _python(MOE_LOSS)
    assert result.returncode == 0, result.stderr[-3000:]
    f = json.loads(result.stdout.strip().splitlines()[-1])
    assert f["aux_all"] > 0.1  # the balancing loss weighs in this setting
    np.testing.assert_allclose(f["single"], f["cross_entropy"] + f["aux_all"], rtol=1e-5)
    # Two replicas: each adds its half's loss divided by 2, so the step
    # minimizes (and fit reports) their mean, not their sum.
    expected = f["cross_entropy"] + np.mean(f["aux_halves"])
    np.testing.assert_allclose(f["mirrored"], expected, rtol=1e-5)
    assert abs(f["mirrored"] - (f["cross_entropy"] + np.sum(f["aux_halves"]))) > 0.05
    for half in f["aux_halves"]:  # Keras alone reports one half's (the last replica's)
        assert abs(f["mirrored"] - (f["cross_entropy"] + half)) > 0.01
    # ... and the weights after one SGD step are the ones that mean gives.
    assert f["step_error"] < 2e-5, f["step_error"]


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def tf_config(ports, index):
    return json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                       "task": {"type": "worker", "index": index}})


def start_workers(command, ports, env_for=lambda index: {}):
    processes = []
    for index in range(len(ports)):
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TF_CONFIG": tf_config(ports, index),
               **env_for(index)}
        processes.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True))
    return processes


def finish(processes, timeout):
    deadline = time.time() + timeout
    outputs = []
    try:
        for process in processes:
            out, _ = process.communicate(timeout=max(1, deadline - time.time()))
            outputs.append(out)
    finally:
        for process in processes:  # never leave a worker behind
            if process.poll() is None:
                process.kill()
                process.wait()
    return [p.returncode for p in processes], outputs


def h5_weights(path):
    import h5py

    values = {}
    with h5py.File(path, "r") as handle:
        handle.visititems(lambda name, item: values.__setitem__(name, item[()])
                          if isinstance(item, h5py.Dataset) else None)
    return values


def test_two_workers_train_with_the_console_command(tmp_path):
    ports = free_ports(2)
    out, export = tmp_path / "run", tmp_path / "saved_models" / "translator"
    command = [sys.executable, "-m", "keras_transformer.cli", "train", "translation", "--smoke",
               "--strategy", "multi_worker", "--output-dir", str(out),
               "--export-dir", str(export)]
    codes, outputs = finish(start_workers(command, ports), timeout=900)
    assert codes == [0, 0], "\n".join(o[-2000:] for o in outputs)
    assert "2 replica(s); this process is the chief" in outputs[0]
    assert "2 replica(s); this process is a worker" in outputs[1]
    # The chief alone wrote the checkpoint and the export...
    assert (out / "best.keras").exists() and (export / "1" / "saved_model.pb").exists()
    worker = out / "worker_1"
    assert not (worker / "best.keras").exists()
    assert sorted(os.listdir(export)) == ["1"]
    # ...and both workers ended with the same weights.
    chief_weights = h5_weights(out / "final.weights.h5")
    worker_weights = h5_weights(worker / "final.weights.h5")
    assert chief_weights.keys() == worker_weights.keys() and chief_weights
    for name, value in chief_weights.items():
        np.testing.assert_allclose(worker_weights[name], value, atol=1e-6, err_msg=name)


RESUMABLE = textwrap.dedent(
    """
    import json, os, sys
    import numpy as np
    import keras
    from keras_transformer.models import TransformerConfig, build_transformer
    from keras_transformer.training import (AtomicBackupAndRestore,
                                            MaskedSparseCategoricalCrossentropy, distribute)

    work = sys.argv[1]
    crash_after = int(os.environ.get("CRASH_AFTER_EPOCH", "-1"))
    mine = distribute.worker_directory(work)
    os.makedirs(mine, exist_ok=True)

    class Log(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            with open(os.path.join(mine, "log.jsonl"), "a") as f:
                f.write(json.dumps({"begin": epoch}) + "\\n")

    class Crash(keras.callbacks.Callback):  # after the backup in the list
        def on_epoch_end(self, epoch, logs=None):
            if epoch == crash_after:
                os._exit(3)

    strategy = distribute.make_strategy("multi_worker")
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    source = rng.integers(1, 20, size=(64, 6)); target = rng.integers(1, 20, size=(64, 5))
    config = TransformerConfig(vocab_size=20, max_length=8, embed_dim=16, num_heads=2,
                               ffn_dim=32, num_encoder_layers=1, num_decoder_layers=1)
    with strategy.scope():
        model = build_transformer(config)
        model.compile(optimizer="adam", loss=MaskedSparseCategoricalCrossentropy())
    model.fit([source, target], target, epochs=4, batch_size=16, verbose=0, callbacks=[
        Log(), AtomicBackupAndRestore(os.path.join(mine, "backup")), Crash()])
    """
)


def test_a_killed_worker_resumes_from_backup_and_restore(tmp_path):
    ports = free_ports(2)
    command = [sys.executable, "-c", RESUMABLE, str(tmp_path)]
    # Worker 1 dies right after its epoch-1 backup; the chief, left waiting in
    # a collective, is stopped too (a cluster manager restarts the job).
    processes = start_workers(command, ports,
                              lambda index: {"CRASH_AFTER_EPOCH": "1"} if index == 1 else {})
    deadline = time.time() + 600
    while processes[1].poll() is None and time.time() < deadline:
        time.sleep(1)
    assert processes[1].returncode == 3, processes[1].communicate()[0][-2000:]
    processes[0].kill()  # the chief waits for worker 1 in a collective: stop it
    processes[0].communicate()
    codes, outputs = finish(start_workers(command, free_ports(2)), timeout=600)
    assert codes == [0, 0], "\n".join(o[-2000:] for o in outputs)
    for directory in (tmp_path, tmp_path / "worker_1"):
        begins = [json.loads(line)["begin"]
                  for line in (directory / "log.jsonl").read_text().splitlines()]
        # Run 1 reached epoch 1 (or began 2 before the kill); run 2 resumes at 2.
        assert begins[:2] == [0, 1] and begins[-2:] == [2, 3], begins


def test_strategy_names_and_roles(monkeypatch):
    with pytest.raises(ValueError, match="one of"):
        distribute.make_strategy("horovod")
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert distribute.is_chief() and distribute.worker_directory("out") == "out"
    with pytest.raises(ValueError, match="TF_CONFIG"):
        distribute.make_strategy("multi_worker")
    monkeypatch.setenv("TF_CONFIG", tf_config([1, 2], 1))
    assert not distribute.is_chief()
    assert distribute.worker_directory("out") == os.path.join("out", "worker_1")
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"chief": ["a:1"], "worker": ["b:2"]},
                                                "task": {"type": "worker", "index": 0}}))
    assert not distribute.is_chief()
