"""Separate query/key/value projections against one fused projection.

Self-attention projects the same input three times. A fused layer would do it
as one matmul with a `(d, 3, heads, head_dim)` kernel and split the result.
This script times three with TensorFlow under `jit_compile=True`: the
package's three einsums, one `(d, 3, heads, head_dim)` einsum sliced, and one
`(d, 3d)` matmul split on its last axis; forward and backward
(gradients of the input and the kernels, as in a training step), on the shapes
of the package's benchmarks, in alternating rounds:

    python benchmarks/fused_qkv.py [--rounds 5] [--steps 50]

It prints one row per shape: milliseconds of each and the ratios
(separate / fused; above 1 means a fused projection is faster).
"""

import argparse
import os
import statistics
import time

os.environ["KERAS_BACKEND"] = "tensorflow"

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402

import tensorflow as tf  # noqa: E402

# (name, tokens B×T, width d, heads)
SHAPES = [
    ("translation recipe (d=128)", (128, 16), 128, 4),
    ("train_throughput.py (d=256)", (64, 40), 256, 4),
    ("GPT-2 small (d=768)", (4, 1024), 768, 12),
]


def separate_and_fused(d, heads):
    head_dim = d // heads
    kernels = [keras.Variable(np.random.normal(0, 0.02, (d, heads, head_dim)).astype("float32"))
               for _ in range(3)]
    fused = keras.Variable(np.stack([k.numpy() for k in kernels], axis=1))  # (d, 3, N, H)

    def separate_loss(x):
        q, k, v = (ops.einsum("btd,dnh->btnh", x, w) for w in kernels)
        return ops.sum(q * k) + ops.sum(v)

    def fused_loss(x):
        qkv = ops.einsum("btd,dknh->btknh", x, fused)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        return ops.sum(q * k) + ops.sum(v)

    flat = keras.Variable(np.concatenate([k.numpy().reshape(d, d) for k in kernels], axis=1))

    def flat_loss(x):  # one (d, 3d) matmul, split on the last axis
        q, k, v = ops.split(ops.matmul(x, flat), 3, axis=-1)
        shape = (x.shape[0], x.shape[1], heads, head_dim)
        q, k, v = (ops.reshape(y, shape) for y in (q, k, v))
        return ops.sum(q * k) + ops.sum(v)

    return (separate_loss, kernels), (fused_loss, [fused]), (flat_loss, [flat])


def training_step(loss, variables):
    """Gradients of `loss` w.r.t. its input and kernels, one XLA program."""

    @tf.function(jit_compile=True)
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            value = loss(x)
        return tape.gradient(value, [x] + [v.value for v in variables])

    return step


def time_steps(step, x, steps):
    step(x)  # compile
    started = time.perf_counter()
    for _ in range(steps):
        result = step(x)
    result[0].numpy()
    return (time.perf_counter() - started) / steps * 1000


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args(argv)
    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPUs; {args.rounds} alternating "
          f"rounds × {args.steps} steps; forward + backward, jit-compiled\n")
    print("| shape | separate (ms) | fused `(d, 3, N, H)` einsum: ms, separate / fused "
          "(rounds) | fused `(d, 3d)` matmul, split: ms, separate / fused (rounds) |")
    print("|---|---|---|---|")
    for name, (batch, length), d, heads in SHAPES:
        x = tf.constant(np.random.normal(size=(batch, length, d)).astype("float32"))
        steps = [training_step(loss, variables)
                 for loss, variables in separate_and_fused(d, heads)]
        times = [[], [], []]
        for _ in range(args.rounds):
            for i, step in enumerate(steps):
                times[i].append(time_steps(step, x, args.steps))
        cells = [f"{statistics.median(times[0]):.2f}"]
        for fused in times[1:]:
            ratios = [s / f for s, f in zip(times[0], fused)]
            cells.append(f"{statistics.median(fused):.2f}, {statistics.median(ratios):.2f} "
                         f"({min(ratios):.2f}–{max(ratios):.2f})")
        print(f"| {name}, {batch}×{length} tokens | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
