"""How fast a TensorFlow decoder of a run's shape could go on this CPU: a floor.

`decode_engines.py` measures the package's decoding against CTranslate2.
This script asks what any decoder written as TensorFlow ops could reach on
the same CPU, by timing only the dense work of one decoding step, the part
no search design can remove: per row, each decoder block's query/key/value
and output projections, the cross-attention's query and output projections,
the feed-forward network and the RMS norms, then the output projection,
log-softmax and the choice (argmax, or beam search's top-k). No attention
over any cache, no cache update or gather, no encoder: a lower bound on a
real step, compiled with XLA (and, with `--no-xla`, as plain graph ops).

It then decodes the held-out sentences with CTranslate2 float32 (2 workers
× 1 thread, its fastest layout on 2 cores) on the run's weights, timed in
the same run, and takes each sentence's output length from it. From the
step times and those lengths it prints two floors per search, in
sentences/s for batches of 64:

- every row stepped until its batch's longest sentence ends (a static-shape
  loop, as XLA compiles it);
- finished sentences dropped at every step (what CTranslate2 does; an
  ideal no static-shape loop reaches).

and the target of issue 44: half of CTranslate2's rate.

    python benchmarks/decode_floor.py --run runs/spa --data ../shared/data/spa-eng.zip
"""

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import decode_engines  # noqa: E402  (the same sentences, batches and export)


def _dense_step(config, beam, rng):
    """One step's dense work for the run's decoder, as a function of `x`."""
    import tensorflow as tf

    d, f = config["embed_dim"], config["ffn_dim"]
    vocab, layers = config["vocab_size"], config["num_decoder_layers"]
    gated = config["activation"] in ("swiglu", "geglu")

    def weight(*shape):
        return tf.constant(rng.normal(size=shape).astype("float32") * 0.05)

    blocks = [dict(qkv=weight(d, 3 * d), out=weight(d, d), cross_q=weight(d, d),
                   cross_out=weight(d, d), up=weight(d, (2 if gated else 1) * f),
                   down=weight(f, d), norms=[weight(d) for _ in range(3)])
              for _ in range(layers)]
    embedding, final_norm = weight(vocab, d), weight(d)

    def rms(x, gain):
        return x * tf.math.rsqrt(tf.reduce_mean(x * x, -1, keepdims=True) + 1e-5) * gain

    def step(x):
        for block in blocks:
            first, second, third = block["norms"]
            projected = rms(x, first) @ block["qkv"]
            x = x + projected[:, :d] @ block["out"]
            x = x + (rms(x, second) @ block["cross_q"]) @ block["cross_out"]
            hidden = rms(x, third) @ block["up"]
            hidden = tf.nn.silu(hidden[:, :f]) * hidden[:, f:] if gated else tf.nn.relu(hidden)
            x = x + hidden @ block["down"]
        log_probs = tf.nn.log_softmax(tf.matmul(rms(x, final_norm), embedding, transpose_b=True))
        if beam == 1:
            return tf.argmax(log_probs, -1)
        return tf.math.top_k(tf.reshape(log_probs, [-1, beam * vocab]), 2 * beam)

    flops = layers * 2 * d * (3 * d + d + 2 * d + (3 if gated else 2) * f) + 2 * d * vocab
    return step, flops


def _step_seconds(config, beam, sentences, xla, rng, repeats=200):
    import tensorflow as tf

    step, flops = _dense_step(config, beam, rng)
    x = tf.constant(rng.normal(size=(sentences * beam, config["embed_dim"])).astype("float32"))
    function = tf.function(step, jit_compile=xla)
    function(x)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeats):
            output = function(x)
        tf.nest.map_structure(lambda tensor: tensor.numpy(), output)
        best = min(best, (time.perf_counter() - start) / repeats)
    return best, flops


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a translation run directory")
    parser.add_argument("--data", help="the run's --data (default: the built-in corpus)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sentences", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="TensorFlow's intra-op threads")
    parser.add_argument("--no-xla", action="store_true", help="plain graph ops, not XLA")
    args = parser.parse_args(argv)

    tf = decode_engines._configure_tensorflow(args.threads, 1)
    import ctranslate2
    import numpy as np

    from keras_transformer.export.ctranslate2 import translate_options
    from keras_transformer.generation import DecodingConfig

    with open(os.path.join(args.run, "config.json")) as handle:
        config = json.load(handle)
    english, ids, tokens, max_length = decode_engines._sentences(args, config)
    batches = decode_engines._batches(english, ids, tokens, args.batch_size)
    workdir = tempfile.mkdtemp(prefix="decode_floor_")
    from keras_transformer.data import tokenizers as tk
    from keras_transformer.export.ctranslate2 import to_ctranslate2
    from keras_transformer.generation.translator import load_translator

    translator = load_translator(args.run)
    source = tk.load_tokenizer(os.path.join(args.run, "source_vocabulary"))
    target = tk.load_tokenizer(os.path.join(args.run, "target_vocabulary"))
    path = to_ctranslate2(translator.model, source, target, os.path.join(workdir, "ct2"))
    engine = ctranslate2.Translator(path, device="cpu", inter_threads=2, intra_threads=1)

    print(f"CPU: {decode_engines._cpu()}; TensorFlow {tf.__version__}, "
          f"{args.threads} intra-op threads, {'plain graph' if args.no_xla else 'XLA'}")
    print(f"model: {args.run}; {len(english)} held-out sentences in batches of "
          f"{args.batch_size}; max length {max_length}")
    rng = np.random.default_rng(0)
    print()
    print("| search | rows | dense-only step, ms | GFLOP/s |")
    print("|---|---|---|---|")
    results = []
    for name, beam in (("greedy", 1), ("beam4", 4)):
        counts = [c for c in (1, 2, 4, 8, 16, 32, 64, 128) if c <= args.batch_size]
        if counts[-1] != args.batch_size:
            counts.append(args.batch_size)
        seconds = {}
        for count in counts:
            seconds[count], flops = _step_seconds(config, beam, count, not args.no_xla, rng)
            print(f"| {name} | {count * beam} | {1000 * seconds[count]:.2f} "
                  f"| {flops * count * beam / seconds[count] / 1e9:.0f} |", flush=True)

        def floor(alive):
            return float(np.interp(alive, counts, [seconds[c] for c in counts])) if alive else 0.0

        decoding = DecodingConfig("beam", beam_size=4) if beam == 4 else DecodingConfig()
        options = translate_options(decoding, max_length)
        engine.translate_batch(batches[0]["tokens"], max_batch_size=0, **options)
        start = time.perf_counter()
        pending = [engine.translate_batch(b["tokens"], asynchronous=True, max_batch_size=0,
                                          **options) for b in batches]
        lengths = [np.array([len(r.result().hypotheses[0]) + 1 for r in p]) for p in pending]
        ct2_rate = len(english) / (time.perf_counter() - start)
        static = sum(lengths_.max() * floor(len(lengths_)) for lengths_ in lengths)
        dropped = sum(floor(int((lengths_ >= s).sum()))
                      for lengths_ in lengths for s in range(1, lengths_.max() + 1))
        steps = np.mean([lengths_.max() for lengths_ in lengths])
        results.append((name, ct2_rate, len(english) / static, len(english) / dropped, steps))

    print()
    print("| search | CTranslate2 float32, 2 × 1 | target (0.5×) | dense-only floor, "
          "static rows | dense-only floor, finished dropped each step | steps per batch |")
    print("|---|---|---|---|---|---|")
    for name, ct2_rate, static, dropped, steps in results:
        print(f"| {name} | {ct2_rate:,.0f} | {ct2_rate / 2:,.0f} | {static:,.0f} "
              f"({static / ct2_rate:.2f}×) | {dropped:,.0f} ({dropped / ct2_rate:.2f}×) "
              f"| {steps:.1f} |")


if __name__ == "__main__":
    main()
