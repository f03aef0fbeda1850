"""Training throughput: keras_transformer's layers vs keras-hub's, side by side.

The same encoder–decoder (2+2 layers, d=256, 4 heads, FFN 1024, vocabulary
8000, length 40, batch 64, dropout 0.1, learned positions) is built from our
`PositionalEmbedding`/`EncoderBlock`/`DecoderBlock` and from keras-hub's
`TokenAndPositionEmbedding`/`TransformerEncoder`/`TransformerDecoder`, compiled
with `jit_compile=True` and Adam, and trained on the same batches. The two
alternate in rounds within one process, so both see the same machine state.

Printed: target tokens/s of each (median over rounds), their ratio, and the
model FLOP/s as a fraction of the float32 matmul peak measured in the same run.

    python benchmarks/train_throughput.py                # ~3 minutes on 2 cores
    python benchmarks/train_throughput.py --rounds 3 --steps 5   # quicker
"""

import argparse
import os
import statistics
import time
import warnings

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import keras_hub  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_transformer as kt  # noqa: E402

# keras-hub's layers pass masked tensors to layers that drop the mask; noise here.
warnings.filterwarnings("ignore", message=".*mask attached to it.*")

CONFIG = dict(layers=2, d=256, heads=4, ffn=1024, vocab=8000, length=40, batch=64)


def build_ours(c):
    source = keras.Input((c["length"],), dtype="int32")
    target = keras.Input((c["length"],), dtype="int32")
    x = kt.PositionalEmbedding(c["vocab"], c["length"], c["d"], positions="learned")(source)
    for _ in range(c["layers"]):
        x = kt.EncoderBlock(c["heads"], c["ffn"], dropout=0.1)(x)
    y = kt.PositionalEmbedding(c["vocab"], c["length"], c["d"], positions="learned")(target)
    for _ in range(c["layers"]):
        y = kt.DecoderBlock(c["heads"], c["ffn"], dropout=0.1)(y, x)
    return keras.Model([source, target], keras.layers.Dense(c["vocab"])(y))


def build_keras_hub(c):
    source = keras.Input((c["length"],), dtype="int32")
    target = keras.Input((c["length"],), dtype="int32")
    x = keras_hub.layers.TokenAndPositionEmbedding(
        c["vocab"], c["length"], c["d"], mask_zero=True
    )(source)
    for _ in range(c["layers"]):
        x = keras_hub.layers.TransformerEncoder(c["ffn"], c["heads"], dropout=0.1)(x)
    y = keras_hub.layers.TokenAndPositionEmbedding(
        c["vocab"], c["length"], c["d"], mask_zero=True
    )(target)
    for _ in range(c["layers"]):
        y = keras_hub.layers.TransformerDecoder(c["ffn"], c["heads"], dropout=0.1)(y, x)
    return keras.Model([source, target], keras.layers.Dense(c["vocab"])(y))


def training_flops_per_step(c):
    """Matmul FLOPs of one training step (forward × 3 for forward + backward)."""
    d, f, T, S, V = c["d"], c["ffn"], c["length"], c["length"], c["vocab"]

    def attention(q_len, k_len):  # QKᵀ and probabilities·V
        return 4 * q_len * k_len * d

    # Per token: q, k, v, output projections (8d²) and the FFN (4df).
    encoder_layer = S * (8 * d * d + 4 * d * f) + attention(S, S)
    decoder_layer = (
        T * (8 * d * d + 4 * d * f) + attention(T, T)  # self-attention + FFN
        + T * 4 * d * d + S * 4 * d * d + attention(T, S)  # cross-attention
    )
    forward = c["layers"] * (encoder_layer + decoder_layer) + T * 2 * d * V
    return 3 * forward * c["batch"]


def matmul_peak_flops(size=1024, repeats=20):
    """Measured float32 matmul FLOP/s on this machine (XLA, best of 3)."""
    a = tf.random.normal((size, size))
    b = tf.random.normal((size, size))

    @tf.function(jit_compile=True)
    def chain(a, b):
        for _ in range(repeats):
            a = tf.matmul(a, b) * 1e-3
        return a

    chain(a, b).numpy()
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        chain(a, b).numpy()
        best = min(best, time.perf_counter() - started)
    return repeats * 2 * size**3 / best


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6, help="alternating rounds")
    parser.add_argument("--steps", type=int, default=10, help="training steps per round")
    parser.add_argument("--policy", default="float32",
                        help="Keras dtype policy of both models, e.g. mixed_bfloat16 (worth it "
                             "where the CPU has AVX512-BF16 or AMX)")
    args = parser.parse_args()
    keras.mixed_precision.set_global_policy(args.policy)
    print(f"dtype policy: {args.policy}")
    c = CONFIG
    rng = np.random.default_rng(0)
    source = rng.integers(1, c["vocab"], size=(c["batch"], c["length"])).astype("int32")
    target = rng.integers(1, c["vocab"], size=(c["batch"], c["length"])).astype("int32")
    labels = rng.integers(1, c["vocab"], size=(c["batch"], c["length"])).astype("int32")

    models = {}
    for name, build in (("keras_transformer", build_ours), ("keras-hub", build_keras_hub)):
        keras.utils.set_random_seed(0)
        model = build(c)
        model.compile(
            optimizer="adam",
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            jit_compile=True,
        )
        for _ in range(3):  # compile and warm up
            model.train_on_batch([source, target], labels)
        models[name] = model
        print(f"{name}: {model.count_params():,} parameters")

    seconds = {name: [] for name in models}
    for _ in range(args.rounds):
        for name, model in models.items():
            started = time.perf_counter()
            for _ in range(args.steps):
                loss = model.train_on_batch([source, target], labels)
            float(loss)
            seconds[name].append((time.perf_counter() - started) / args.steps)

    peak = matmul_peak_flops()
    flops = training_flops_per_step(c)
    tokens = c["batch"] * c["length"]
    print(
        f"\nfloat32 matmul peak measured: {peak / 1e9:.1f} GFLOP/s; "
        f"model: {flops / 1e9:.2f} GFLOP per training step"
    )
    print("\n| model | step (ms) | target tokens/s | GFLOP/s | fraction of peak |")
    print("|---|---|---|---|---|")
    rates = {}
    for name, times in seconds.items():
        step = statistics.median(times)
        rates[name] = tokens / step
        print(
            f"| {name} | {step * 1e3:.1f} | {rates[name]:,.0f} | "
            f"{flops / step / 1e9:.1f} | {flops / step / peak:.0%} |"
        )
    ratio = rates["keras_transformer"] / rates["keras-hub"]
    print(f"\nratio keras_transformer / keras-hub: {ratio:.3f}")


if __name__ == "__main__":
    main()
