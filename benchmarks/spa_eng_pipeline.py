"""Padding and training throughput of the translation pipeline on spa-eng.

For the Anki/Tatoeba English–Spanish pairs (`--data spa-eng.zip`), with the
translation recipe's vocabularies (WordPiece, `--vocabulary-size` per
language), `max_length` 48 and its model (2+2 layers, d=128), compares:

- plain padded batches of 64 pairs (every batch padded to its longest pair,
  the keras-io example pads to a fixed 40 instead, which is worse);
- fixed-length batches padded to 40 tokens (the keras-io recipe's layout);
- the recipe's batches: bucketed by length, padded to the bucket boundary,
  ~2,048 tokens a batch.

It prints the fraction of padding among source and label positions, and the
training throughput in real (non-padding) target tokens per second over
`--steps` training steps (after a warm-up step). Run:

    python benchmarks/spa_eng_pipeline.py --data ../shared/data/spa-eng.zip
"""

import argparse
import os
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_transformer.data import datasets, pipelines  # noqa: E402
from keras_transformer.data import tokenizers as tk  # noqa: E402
from keras_transformer.models import TransformerConfig, build_transformer  # noqa: E402
from keras_transformer.training import (  # noqa: E402
    MaskedSparseCategoricalCrossentropy,
    transformer_optimizer,
)


def padding(dataset, batches):
    padded = {"source": 0, "labels": 0}
    total = {"source": 0, "labels": 0}
    for (source, _), labels in dataset.take(batches):
        for name, tensor in (("source", source.numpy()), ("labels", labels.numpy())):
            padded[name] += int((tensor == 0).sum())
            total[name] += tensor.size
    return {name: padded[name] / total[name] for name in padded}


def throughput(dataset, config, steps):
    keras.utils.set_random_seed(0)
    model = build_transformer(config)
    model.compile(optimizer=transformer_optimizer(config.embed_dim, 1000, 2.0),
                  loss=MaskedSparseCategoricalCrossentropy(label_smoothing=0.1))
    batches = list(dataset.take(steps + 1))
    model.train_on_batch(*batches[0])
    tokens = 0
    started = time.perf_counter()
    for x, y in batches[1:]:
        model.train_on_batch(x, y)
        tokens += int(np.count_nonzero(y.numpy()))
    return tokens / (time.perf_counter() - started)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="spa-eng.zip (or spa.txt)")
    parser.add_argument("--vocabulary-size", type=int, default=8000)
    parser.add_argument("--steps", type=int, default=60, help="training steps per layout")
    parser.add_argument("--batches", type=int, default=300, help="batches to count padding")
    args = parser.parse_args(argv)
    pairs = datasets.read_spa_eng(args.data)
    rng = np.random.default_rng(0)
    pairs = [pairs[i] for i in rng.permutation(len(pairs))]
    source_tokenizer = tk.train_wordpiece([en for en, _ in pairs], args.vocabulary_size)
    target_tokenizer = tk.train_wordpiece([es for _, es in pairs], args.vocabulary_size)
    max_length = 48
    config = TransformerConfig(
        vocab_size=target_tokenizer.vocabulary_size(),
        source_vocab_size=source_tokenizer.vocabulary_size(), max_length=max_length,
        embed_dim=128, num_heads=4, ffn_dim=512, num_encoder_layers=2, num_decoder_layers=2,
    )
    common = dict(max_length=max_length, shuffle_buffer=20000, seed=0)
    layouts = {
        "padded batches of 64": pipelines.translation_dataset(
            pairs, source_tokenizer, target_tokenizer, batch_size=64, **common),
        "fixed length 40, batches of 64": pipelines.translation_dataset(
            pairs, source_tokenizer, target_tokenizer, batch_size=64, **common,
        ).map(lambda x, y: ((_pad_to(x[0], 40), _pad_to(x[1], 40)), _pad_to(y, 40))),
        "bucketed, ~2,048 tokens a batch (the recipe)": pipelines.translation_dataset(
            pairs, source_tokenizer, target_tokenizer, tokens_per_batch=2048, **common),
    }
    print(f"{len(pairs):,} pairs; vocabularies {source_tokenizer.vocabulary_size():,} / "
          f"{target_tokenizer.vocabulary_size():,}\n")
    print("| batches | source padding | label padding | real target tokens/s (training) |")
    print("|---|---|---|---|")
    for name, dataset in layouts.items():
        fractions = padding(dataset, args.batches)
        speed = throughput(dataset, config, args.steps)
        print(f"| {name} | {fractions['source']:.1%} | {fractions['labels']:.1%} | "
              f"{speed:,.0f} |", flush=True)


def _pad_to(tensor, width):
    tensor = tensor[:, :width]
    return tf.pad(tensor, [[0, 0], [0, width - tf.shape(tensor)[1]]])


if __name__ == "__main__":
    main()
