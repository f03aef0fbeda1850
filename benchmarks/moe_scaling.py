"""MoE scaling: forward+backward time per token as the number of experts grows.

Our sparse `MoE` (top-2, expert_dim fixed) for num_experts in {4, 8, 16, 32,
64}, side by side with:
- a dense mixture that runs every expert on every token and weights the
  outputs by the same sparse top-2 gates (the way keras-hub's Mixtral block
  computes; written here with the same ReLU experts as ours so that only the
  dispatch differs);
- a dense `PositionwiseFFN` of one expert's size (the "active" size);
- the floor: one plain 2-D `PositionwiseFFN` matmul over as many rows as the
  MoE's expert buffers hold (`num_experts × capacity`), i.e. the same expert
  FLOPs with no routing, no dispatch and no batched matmul. `MoE / floor` is
  the cost of everything that makes the layer sparse.

Each is timed as one XLA-compiled function computing the outputs, a loss, and
the gradients with respect to every weight (no optimizer step). Medians of
several runs. Targets from issue 3: time at 64 experts ≤ 1.3 × time at 8
experts, and top-2 MoE ≤ 2.5 × the dense FFN of one expert's size.

    python benchmarks/moe_scaling.py                       # ~6 minutes on 2 cores
    python benchmarks/moe_scaling.py --quick               # fewer repeats
    python benchmarks/moe_scaling.py --batch 128 --max-dense-experts 16   # 16,384 tokens
"""

import argparse
import math
import os
import statistics
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import ops  # noqa: E402

from keras_transformer import MoE, PositionwiseFFN  # noqa: E402


class DenseMixture(keras.layers.Layer):
    """Every expert on every token, weighted by sparse top-k gates (reference)."""

    def __init__(self, moe, **kwargs):
        super().__init__(**kwargs)
        self.moe = moe  # borrows the MoE's weights: same experts, same router

    def call(self, inputs):
        moe, d = self.moe, inputs.shape[-1]
        tokens = ops.reshape(inputs, (-1, d))  # [G, D]
        probabilities = ops.softmax(ops.matmul(tokens, moe.router_kernel), axis=-1)
        top, experts = ops.top_k(probabilities, moe.top_k)
        top = top / ops.sum(top, axis=-1, keepdims=True)
        gates = ops.sum(ops.one_hot(experts, moe.num_experts) * top[..., None], axis=1)
        hidden = ops.relu(
            ops.einsum("gd,edf->egf", tokens, moe.inner_kernel) + moe.inner_bias[:, None]
        )  # [E, G, F]: every expert, every token
        outputs = ops.einsum("egf,efd->egd", hidden, moe.output_kernel)
        outputs = outputs + moe.output_bias[:, None]
        mixed = ops.einsum("ge,egd->gd", gates, outputs)
        return ops.reshape(mixed, ops.shape(inputs))


def time_forward_backward(layer, x, repeats):
    """Median seconds of one compiled forward+backward pass."""
    layer(x)  # build

    @tf.function(jit_compile=True)
    def step(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(layer(x, training=True)))
        return loss, tape.gradient(loss, layer.trainable_variables)

    for _ in range(2):
        tf.nest.map_structure(lambda t: t.numpy(), step(x))
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        tf.nest.map_structure(lambda t: t.numpy(), step(x))
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--max-dense-experts", type=int, default=64,
                        help="skip the dense mixture above this many experts (it is slow)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--expert-dim", type=int, default=1024)
    args = parser.parse_args()
    repeats = 3 if args.quick else 7
    keras.utils.set_random_seed(0)
    x = tf.random.normal((args.batch, args.length, args.dim))
    tokens = args.batch * args.length

    ffn = time_forward_backward(PositionwiseFFN(args.expert_dim), x, repeats)
    print(
        f"{tokens} tokens of width {args.dim}, expert_dim {args.expert_dim}, top_k 2, "
        "forward+backward, XLA, float32\n"
    )
    print(f"dense PositionwiseFFN({args.expert_dim}): {ffn * 1e3:.1f} ms "
          f"({ffn / tokens * 1e6:.2f} µs/token)\n")
    print("| experts | MoE cf=1.25 (ms) | µs/token | × FFN | floor (ms) | MoE / floor "
          "| MoE cf=1.0 (ms) | × FFN | dense mixture (ms) | dense / MoE |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    results = {}
    for num_experts in (4, 8, 16, 32, 64):
        moe = MoE(num_experts, args.expert_dim, top_k=2, capacity_factor=1.25)
        sparse = time_forward_backward(moe, x, repeats)
        tight = time_forward_backward(
            MoE(num_experts, args.expert_dim, top_k=2, capacity_factor=1.0), x, repeats
        )
        rows = num_experts * math.ceil(1.25 * tokens * 2 / num_experts)
        floor = time_forward_backward(
            PositionwiseFFN(args.expert_dim), tf.random.normal((1, rows, args.dim)), repeats
        )
        if num_experts > args.max_dense_experts:
            dense_text, ratio_text = "–", "–"
        else:
            dense = time_forward_backward(DenseMixture(moe), x, max(2, repeats // 3))
            dense_text, ratio_text = f"{dense * 1e3:.0f}", f"{dense / sparse:.1f}"
        results[num_experts] = sparse
        print(
            f"| {num_experts} | {sparse * 1e3:.1f} | {sparse / tokens * 1e6:.2f} | "
            f"{sparse / ffn:.2f} | {floor * 1e3:.1f} | {sparse / floor:.2f} | "
            f"{tight * 1e3:.1f} | {tight / ffn:.2f} | "
            f"{dense_text} | {ratio_text} |",
            flush=True,
        )
    print(
        f"\ntime at 64 experts / time at 8 experts (cf=1.25): "
        f"{results[64] / results[8]:.2f} (target ≤ 1.3)"
    )
    print(f"top-2 MoE (8 experts, cf=1.25) / dense FFN: {results[8] / ffn:.2f} (target ≤ 2.5)")


if __name__ == "__main__":
    main()
