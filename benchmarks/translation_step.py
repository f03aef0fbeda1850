"""Times the translation recipe's training step under its dropout, dtype-policy and EMA choices.

The recipe's own pipeline (WordPiece vocabularies of 2,000, length buckets of
about 2,048 tokens a batch, cached) feeds the recipe's real-corpus model
(`REAL_CORPUS_MODEL`) built three ways, side by side in one process:

- float32, dropout 0.1 (the real-corpus default before dropout was dropped);
- float32, dropout 0;
- mixed_bfloat16, dropout 0 (what `--dtype-policy auto` picks on a CPU with AMX);
- the same with the moving average of the weights (`--ema 0.999`, Keras's
  `use_ema`: the optimizer updates a copy of every weight each step).

Each configuration runs `model.fit` over one pass of the batches to trace and
warm up, then the rounds alternate between configurations, one timed pass
each; the table gives the best pass per configuration:

    python benchmarks/translation_step.py --data ../shared/data/spa-eng.zip --pairs 30000

Without `--data` it reads the built-in corpus. It prints what `auto` picks on
the machine: without AMX, bfloat16 is emulated and the third row is slower.
"""

import argparse
import dataclasses
import time

import keras

from keras_transformer.data import pipelines
from keras_transformer.data import tokenizers as tk
from keras_transformer.models import build_transformer
from keras_transformer.recipes import precision, translation
from keras_transformer.training import MaskedSparseCategoricalCrossentropy

CONFIGURATIONS = (("float32", 0.1, 0.0), ("float32", 0.0, 0.0), ("mixed_bfloat16", 0.0, 0.0),
                  ("mixed_bfloat16", 0.0, 0.999))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="the recipe's --data (default: the built-in corpus)")
    parser.add_argument("--pairs", type=int, default=30000,
                        help="training pairs to take (a pass is one epoch over them)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating timed rounds")
    args = parser.parse_args(argv)

    recipe_args = translation.add_arguments(argparse.ArgumentParser()).parse_args(
        ["--data", args.data] if args.data else [])
    pairs, _ = translation.split(translation.read_pairs(recipe_args), 0.1, 0)
    pairs = pairs[: args.pairs]
    source = tk.train_wordpiece([english for english, _ in pairs], 2000)
    target = tk.train_wordpiece([spanish for _, spanish in pairs], 2000)
    batches = pipelines.translation_dataset(
        pairs, source, target, shuffle_buffer=len(pairs), seed=0,
        max_length=translation.REAL_CORPUS_MODEL.max_length, tokens_per_batch=2048).cache()
    steps = sum(1 for _ in batches)
    print(f"{len(pairs):,} pairs, {steps} steps a pass; `--dtype-policy auto` picks "
          f"{precision.resolve('auto')} on this machine")

    models = {}
    for policy, dropout, ema in CONFIGURATIONS:
        config = dataclasses.replace(
            translation.REAL_CORPUS_MODEL, dropout=dropout,
            vocab_size=target.vocabulary_size(), source_vocab_size=source.vocabulary_size())
        keras.utils.set_random_seed(0)
        with precision.dtype_policy(policy):
            model = build_transformer(config)
            averaging = dict(use_ema=True, ema_momentum=ema) if ema else {}
            model.compile(keras.optimizers.Adam(1e-3, **averaging),
                          loss=MaskedSparseCategoricalCrossentropy(label_smoothing=0.1))
        model.fit(batches, epochs=1, verbose=0)  # tracing, and the cache filled
        models[policy, dropout, ema] = model

    best = {key: float("inf") for key in models}
    for _ in range(args.rounds):
        for key, model in models.items():
            started = time.perf_counter()
            model.fit(batches, epochs=1, verbose=0)
            best[key] = min(best[key], (time.perf_counter() - started) / steps)

    baseline = best[CONFIGURATIONS[0]]
    print("\n| dtype policy | dropout | EMA | ms a step | speed-up |")
    print("|---|---|---|---|---|")
    for (policy, dropout, ema), seconds in best.items():
        print(f"| {policy} | {dropout:g} | {ema:g} | {seconds * 1e3:.1f} | "
              f"{baseline / seconds:.2f}× |")


if __name__ == "__main__":
    main()
