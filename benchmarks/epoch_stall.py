"""Stalls between epochs: the package's pipelines with tf.data autotuning off and on.

The translation recipe's setting (the built-in corpus, its WordPiece
vocabularies, `translation_dataset` with the recipe's length buckets, and the
recipe's 2+2-layer model, loss and optimizer) is trained with `model.fit`
and validation for `--epochs` epochs, twice, each in a fresh process:

- *off*: the pipelines as the package builds them (`tf.data` autotuning off);
- *on*: the same pipelines with autotuning switched back on
  (`options.autotune.enabled = True`, TensorFlow's default).

The script times every epoch with a callback and splits it into:
- *training steps*, the time inside `train_function` calls;
- *validation*;
- *other*, everything else in the epoch. Most of it goes to creating and
  destroying the data iterators, because `fit` makes a new iterator for the
  training data at each epoch and for the validation data at each evaluation.

With autotuning on, the wait comes from destroying an iterator: it blocked
until about 41 s after that iterator started.

    python benchmarks/epoch_stall.py              # ~4 minutes on 2 cores
    python benchmarks/epoch_stall.py --epochs 2   # quicker
"""

import argparse
import json
import os
import subprocess
import sys
import time

MODES = ("off", "on")


def measure(autotune, epochs):
    """Trains for `epochs` epochs; returns one dict of seconds per epoch."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    from keras_transformer.data import generate_pairs, pipelines
    from keras_transformer.data import tokenizers as tk
    from keras_transformer.models import TransformerConfig, build_transformer
    from keras_transformer.recipes.translation import split
    from keras_transformer.training import (
        MaskedSparseCategoricalCrossentropy,
        transformer_optimizer,
    )

    keras.utils.set_random_seed(0)
    train_pairs, val_pairs = split(generate_pairs(30000, seed=0), 0.1, 0)
    source = tk.train_wordpiece([english for english, _ in train_pairs], 2000)
    target = tk.train_wordpiece([spanish for _, spanish in train_pairs], 2000)
    common = dict(max_length=48, tokens_per_batch=2048)
    train = pipelines.translation_dataset(train_pairs, source, target,
                                          shuffle_buffer=len(train_pairs), seed=0, **common)
    val = pipelines.translation_dataset(val_pairs, source, target, **common)
    if autotune:
        options = tf.data.Options()
        options.autotune.enabled = True
        train, val = train.with_options(options), val.with_options(options)
    config = TransformerConfig(
        vocab_size=target.vocabulary_size(), source_vocab_size=source.vocabulary_size(),
        max_length=48, embed_dim=128, num_heads=4, ffn_dim=512,
        num_encoder_layers=2, num_decoder_layers=2, dropout=0.1,
    )
    model = build_transformer(config)
    model.compile(optimizer=transformer_optimizer(128, warmup_steps=1000, scale=2.0),
                  loss=MaskedSparseCategoricalCrossentropy(label_smoothing=0.1))

    class Timer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.epochs = []

        def on_epoch_begin(self, epoch, logs=None):
            self.epochs.append({"steps": 0.0, "validation": 0.0, "batches": 0})
            self._epoch_started = time.perf_counter()

        def on_train_batch_begin(self, batch, logs=None):
            self._step_started = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.epochs[-1]["steps"] += time.perf_counter() - self._step_started
            self.epochs[-1]["batches"] += 1

        def on_test_begin(self, logs=None):
            self._test_started = time.perf_counter()

        def on_test_end(self, logs=None):
            self.epochs[-1]["validation"] += time.perf_counter() - self._test_started

        def on_epoch_end(self, epoch, logs=None):
            self.epochs[-1]["epoch"] = time.perf_counter() - self._epoch_started

    timer = Timer()
    model.fit(train, validation_data=val, epochs=epochs, callbacks=[timer], verbose=0)
    return timer.epochs


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child == "on", args.epochs)))
        return
    results = {}
    for mode in MODES:
        command = [sys.executable, __file__, "--child", mode, "--epochs", str(args.epochs)]
        child = subprocess.run(command, capture_output=True, text=True)
        if child.returncode != 0:
            sys.exit(f"autotuning {mode} failed:\n{child.stderr[-4000:]}")
        results[mode] = json.loads(child.stdout.strip().splitlines()[-1])
    print(f"translation recipe's model and pipelines, {args.epochs} epochs of model.fit "
          "with validation, one process each\n")
    print("| tf.data autotuning | epoch | batches | epoch (s) | training steps (s) "
          "| validation (s) | other (s) |")
    print("|---|---|---|---|---|---|---|")
    for mode, epochs in results.items():
        for number, e in enumerate(epochs, 1):
            other = e["epoch"] - e["steps"] - e["validation"]
            print(f"| {mode} | {number} | {e['batches']} | {e['epoch']:.1f} | {e['steps']:.1f} "
                  f"| {e['validation']:.1f} | {other:.1f} |")
    for mode, epochs in results.items():
        total = sum(e["epoch"] for e in epochs)
        other = sum(e["epoch"] - e["steps"] - e["validation"] for e in epochs)
        print(f"\nautotuning {mode}: {total:.1f} s for {len(epochs)} epochs, "
              f"{other:.1f} s of it outside training steps and validation", end="")
    print()


if __name__ == "__main__":
    main()
