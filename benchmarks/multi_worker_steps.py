"""Training steps/s with one worker against two local workers (MultiWorkerMirroredStrategy).

Both runs train the same encoder–decoder (2+2 layers, d=128, 4 heads,
vocabulary 2,000, sequences of 24 tokens) on the same global batches of 64 for
`--steps` steps after `--warmup` steps, each worker a separate process on
127.0.0.1 with its own `TF_CONFIG`. On this 2-core machine two workers share
the same two cores, so no speed-up is expected: the point is that the recipe
runs, and what the collective all-reduce costs. Run:

    python benchmarks/multi_worker_steps.py
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import textwrap

WORKER = textwrap.dedent(
    """
    import json, sys, time
    import numpy as np
    import keras
    import tensorflow as tf
    from keras_transformer.models import TransformerConfig, build_transformer
    from keras_transformer.training import MaskedSparseCategoricalCrossentropy, distribute

    steps, warmup = int(sys.argv[1]), int(sys.argv[2])
    strategy = distribute.make_strategy("multi_worker")
    config = TransformerConfig(vocab_size=2000, max_length=24, embed_dim=128, num_heads=4,
                               ffn_dim=512, num_encoder_layers=2, num_decoder_layers=2)
    rng = np.random.default_rng(0)
    total = (steps + warmup) * 64
    source = rng.integers(1, 2000, size=(total, 24)).astype("int32")
    target = rng.integers(1, 2000, size=(total, 24)).astype("int32")
    dataset = tf.data.Dataset.from_tensor_slices(((source, target), target)).batch(64)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    dataset = dataset.with_options(options)
    with strategy.scope():
        model = build_transformer(config)
        model.compile(optimizer="adam", loss=MaskedSparseCategoricalCrossentropy())

    class Clock(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if batch == warmup:
                self.started = time.perf_counter()

        def on_train_end(self, logs=None):
            self.seconds = time.perf_counter() - self.started

    clock = Clock()
    model.fit(dataset, epochs=1, verbose=0, callbacks=[clock])
    print(json.dumps({"steps_per_second": steps / clock.seconds}))
    """
)


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def run_workers(count, steps, warmup):
    ports = free_ports(count)
    processes = []
    for index in range(count):
        config = {"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                  "task": {"type": "worker", "index": index}}
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TF_CONFIG": json.dumps(config)}
        processes.append(subprocess.Popen(
            [sys.executable, "-c", WORKER, str(steps), str(warmup)], env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    for process in processes:
        out, err = process.communicate(timeout=1800)
        if process.returncode:
            raise RuntimeError(err[-2000:])
        results.append(json.loads(out.strip().splitlines()[-1])["steps_per_second"])
    return min(results)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args(argv)
    print("| workers | global batch | steps/s | examples/s |")
    print("|---|---|---|---|")
    for count in (1, 2):
        rate = run_workers(count, args.steps, args.warmup)
        print(f"| {count} | 64 | {rate:.2f} | {rate * 64:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
