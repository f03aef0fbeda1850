"""Decoding speed: the cached XLA search against full recomputation, and serving latency.

Translates 256 sentences with the translation recipe's model shape (2+2
layers, d=128, 4 heads, vocabularies of 2,000) and prints:

1. tokens/s of greedy decoding up to 16, 32 and 64 output tokens, cached
   (`Translator`: one XLA-compiled `while_loop`, static key/value caches)
   against full recomputation (`greedy_translate`: the whole model re-run on
   the growing prefix at every step, the way the TF tutorial and the keras-io
   example decode), and the ratio; per-token time of the cached search per
   length (flat = the cache works);
2. the exported SavedModel (text in, text out, beam 1 and 4): latency p50/p95
   of one sentence, and sentences/s at batch 64.

Weights are random and `[END]` is never chosen (its logit is pushed down),
so every row runs to the full length and both decoders do the same work.
Timings are medians of `--repeats` runs after a warm-up (compilation
excluded). Run: `python benchmarks/decode_speed.py` (~3 minutes here).
"""

import argparse
import os
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_transformer.data import generate_pairs  # noqa: E402
from keras_transformer.data import tokenizers as tk  # noqa: E402
from keras_transformer.data.tokenizers import END_ID  # noqa: E402
from keras_transformer.export import export_saved_model  # noqa: E402
from keras_transformer.data.tokenizers import START_ID  # noqa: E402
from keras_transformer.generation import (  # noqa: E402
    EncoderDecoderStepper,
    Translator,
    greedy_search,
    greedy_translate,
)
from keras_transformer.models import TransformerConfig, build_transformer  # noqa: E402


def median_seconds(function, repeats):
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return float(np.median(times)), times


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lengths", type=int, nargs="+", default=[16, 32, 64])
    args = parser.parse_args(argv)
    keras.utils.set_random_seed(0)

    pairs = generate_pairs(5000, seed=0)
    source_tokenizer = tk.train_wordpiece([en for en, _ in pairs], 2000)
    target_tokenizer = tk.train_wordpiece([es for _, es in pairs], 2000)
    longest = max(args.lengths)
    config = TransformerConfig(
        vocab_size=target_tokenizer.vocabulary_size(),
        source_vocab_size=source_tokenizer.vocabulary_size(), max_length=longest,
        embed_dim=128, num_heads=4, ffn_dim=512, num_encoder_layers=2, num_decoder_layers=2,
        dropout=0.1, tie_embeddings=False,
    )
    model = build_transformer(config)
    # Never end early: both decoders run every row to the full length.
    logits = model.get_layer("logits")
    bias = logits.bias.numpy()
    bias[END_ID] = -1e4
    logits.bias.assign(bias)

    texts = [en for en, _ in pairs[: args.sentences]]
    print(f"{args.sentences} sentences, model {model.count_params():,} parameters\n")
    # Per-step cost of the cached search depends on the cache's size (every
    # step attends over, and updates, a static buffer), not on the position:
    # with one 64-slot cache for every length, time per token is flat.
    stepper = EncoderDecoderStepper(model)
    fixed = tf.function(
        lambda source, steps: greedy_search(stepper, stepper.initial_state(source, longest),
                                            tf.fill([tf.shape(source)[0]], START_ID), steps),
        jit_compile=True,
    )
    print("| output tokens | cached tokens/s | full recompute tokens/s | speed-up | "
          "cached ms/token (cache sized to the output) | cached ms/token (64-slot cache) |")
    print("|---|---|---|---|---|---|")
    for length in args.lengths:
        translator = Translator(model, source_tokenizer, target_tokenizer, max_length=length)
        source_ids = translator.tokenize(tf.constant(texts))
        translator.translate_ids(source_ids)  # compile
        cached, _ = median_seconds(lambda: translator.translate_ids(source_ids), args.repeats)
        source = source_ids.numpy()
        source = source[:, : max(1, int((source != 0).sum(1).max()))]
        greedy_translate(model, source[:8], 2)  # warm up
        full, _ = median_seconds(lambda: greedy_translate(model, source, length),
                                 max(1, args.repeats - 2))
        fixed(source_ids, length)  # compile
        flat, _ = median_seconds(lambda: fixed(source_ids, length), args.repeats)
        tokens = args.sentences * length
        print(f"| {length} | {tokens / cached:,.0f} | {tokens / full:,.0f} | "
              f"{full / cached:.1f}× | {cached / length * 1e3:.2f} | "
              f"{flat / length * 1e3:.2f} |")

    print("\nSavedModel (text in, text out), max 64 output tokens:\n")
    print("| beam | p50 one sentence (ms) | p95 one sentence (ms) | sentences/s at batch 64 |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as directory:
        for beam in (1, 4):
            translator = Translator(model, source_tokenizer, target_tokenizer,
                                    max_length=longest, beam_size=beam)
            path = export_saved_model(translator, os.path.join(directory, f"beam{beam}"))
            serve = tf.saved_model.load(path).signatures["serving_default"]
            one = tf.constant(texts[:1])
            batch = tf.constant(texts[:64])
            serve(text=one), serve(text=batch)  # compile both batch shapes
            _, latencies = median_seconds(lambda: serve(text=one), 50)
            batch_seconds, _ = median_seconds(lambda: serve(text=batch), args.repeats)
            p50, p95 = np.percentile(latencies, [50, 95]) * 1e3
            print(f"| {beam} | {p50:.0f} | {p95:.0f} | {64 / batch_seconds:,.0f} |")


if __name__ == "__main__":
    main()
