"""# A character language model with mixture-of-experts blocks

A decoder-only Transformer whose feed-forward layers are sparse mixtures of
experts (`MoE`, top-2 of 8), trained twice on the same text: once without and
once with the load-balancing loss. At the end we print how the tokens were
spread over the experts of each block. With the loss the experts share the
work; without it, the router is free to crowd tokens onto a few experts, which
then overflow their capacity and drop tokens.

    python examples/train_moe_lm.py                          # built-in text, ~6 minutes
    python examples/train_moe_lm.py --data ../shared/data/tinyshakespeare-train.txt.gz
    python examples/train_moe_lm.py --smoke                  # seconds, for the tests
"""

import argparse
import gzip
import os
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_transformer import DecoderBlock, PositionalEmbedding, RoutingStatistics  # noqa: E402

# ## The text
#
# By default the script writes its own text: sums spelled out in words
# ("seven plus twelve is nineteen."), deterministic, so that the example needs
# no download. `--data` reads any UTF-8 text file (gzipped or not).
ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen " \
       "fourteen fifteen sixteen seventeen eighteen nineteen".split()
TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()


def number_words(n):
    if n < 20:
        return ONES[n]
    tens, ones = divmod(n, 10)
    return TENS[tens - 2] + ("" if ones == 0 else " " + ONES[ones])


def builtin_text(sentences, seed=0):
    rng = np.random.default_rng(seed)
    lines = []
    for a, b in rng.integers(0, 50, size=(sentences, 2)):
        lines.append(f"{number_words(a)} plus {number_words(b)} is {number_words(a + b)}.")
    return "\n".join(lines)


def read_text(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as handle:
        return handle.read()


# ## Characters to training windows
#
# Id 0 is padding (unused here, but the layers reserve it); characters get
# ids 1..n. A window of `length + 1` characters gives the input (all but the
# last) and the labels (all but the first): next-character prediction.
def encode(text, vocabulary=None):
    vocabulary = vocabulary or sorted(set(text))
    index = {char: i + 1 for i, char in enumerate(vocabulary)}
    return np.array([index.get(char, 0) for char in text], "int32"), vocabulary


def windows(ids, length, count, rng):
    starts = rng.integers(0, len(ids) - length - 1, size=count)
    chunks = np.stack([ids[s : s + length + 1] for s in starts])
    return chunks[:, :-1], chunks[:, 1:]


# ## The model
#
# Embedding with sinusoidal positions, decoder-only blocks (causal
# self-attention, no encoder) whose FFN is `MoE(num_experts, top_k=2)`, and a
# dense layer to the character logits.
def build_model(vocab_size, length, dim, layers, num_experts, aux_loss_weight):
    ids = keras.Input((length,), dtype="int32", name="ids")
    x = PositionalEmbedding(vocab_size, length, dim)(ids)
    moe = {"num_experts": num_experts, "top_k": 2, "aux_loss_weight": aux_loss_weight}
    for i in range(layers):
        x = DecoderBlock(num_heads=4, ffn_dim=2 * dim, dropout=0.0, moe=moe,
                         name=f"block_{i}")(x)
    logits = keras.layers.Dense(vocab_size, name="logits")(x)
    return keras.Model(ids, logits)


def expert_loads(model):
    """Per-expert share of the processed tokens, per MoE layer, this epoch.

    Each MoE layer owns a `RoutingStatistics` metric, which Keras lists in
    `model.metrics` with the compiled ones.
    """
    return {
        metric.name: keras.ops.convert_to_numpy(metric.expert_load())
        for metric in model.metrics
        if isinstance(metric, RoutingStatistics)
    }


def train(args, aux_loss_weight, data):
    (x_train, y_train), (x_val, y_val), vocab_size = data
    keras.utils.set_random_seed(args.seed)
    model = build_model(vocab_size, args.length, args.dim, args.layers, args.experts,
                        aux_loss_weight)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=True,
    )
    started = time.time()
    history = model.fit(x_train, y_train, batch_size=32, epochs=args.epochs, verbose=2)
    loads = expert_loads(model)  # of the last training epoch
    val = model.evaluate(x_val, y_val, batch_size=64, verbose=0, return_dict=True)
    return history.history, loads, val, time.time() - started


def bar(fraction, experts):
    return "#" * int(round(fraction * experts * 10))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="a local UTF-8 text file (.txt or .gz)")
    parser.add_argument("--smoke", action="store_true", help="tiny run for the tests")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--windows", type=int, default=6000, help="training windows")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.smoke:
        args.epochs, args.windows, args.layers, args.length = 1, 64, 1, 32

    text = read_text(args.data) if args.data else builtin_text(20000)
    split = int(len(text) * 0.9)  # the last 10 % for validation
    train_ids, vocabulary = encode(text[:split])
    val_ids, _ = encode(text[split:], vocabulary)
    rng = np.random.default_rng(args.seed)
    data = (
        windows(train_ids, args.length, args.windows, rng),
        windows(val_ids, args.length, max(64, args.windows // 10), rng),
        len(vocabulary) + 1,
    )
    print(f"{len(text):,} characters, {len(vocabulary)} distinct; "
          f"{args.windows} windows of {args.length}")

    # ## Without and with the load-balancing loss
    results = {}
    for label, weight in (("without balance loss", 0.0), ("with balance loss 1e-2", 1e-2)):
        print(f"\n## {label}")
        results[label] = train(args, weight, data)

    # ## How the experts were used
    print("\nPer-expert share of the tokens in the last epoch "
          "(one # per 1/10 of an even share):")
    for label, (history, loads, val, seconds) in results.items():
        print(f"\n{label}: validation loss {val['loss']:.3f} in {seconds:.0f} s")
        for name, load in loads.items():
            dropped = history[f"{name}_dropped"][-1]
            max_load = history[f"{name}_max_load"][-1]
            print(f"  {name}: busiest expert {max_load:.2f}× an even share, "
                  f"{dropped:.1%} of assignments dropped over capacity")
            for expert, fraction in enumerate(load):
                print(f"    expert {expert}: {fraction:6.1%} {bar(fraction, len(load))}")
    return results


if __name__ == "__main__":
    main()
