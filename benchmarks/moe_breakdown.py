"""Where the MoE's training step spends its time: dispatch, or the batched experts.

`benchmarks/moe_scaling.py` compares the whole layer with a *floor*, one
plain 2-D FFN over as many rows as the expert buffers hold. This script
splits the gap between the two, at top-2, `capacity_factor=1.25`, 4,096 tokens
of width 256 and `expert_dim=1024` (the buffers hold 10,240 rows: 8 experts ×
1,280 or 64 × 160). Each row is one XLA-compiled forward+backward call
(gradients of every weight, no optimizer step):

- *floor (2-D)*: `PositionwiseFFN(1024)` over the 10,240 rows (as in
  `moe_scaling.py`);
- *experts alone*: the same two layers as the MoE's batched einsums over
  buffers that are already filled, `(E, C, D)`, with the MoE's own weights:
  no router, no gather into the buffers, no scatter back;
- *MoE*: the whole layer on the `(32, 128, 256)` input.

`experts alone − floor` is the cost of batching the matmuls per expert;
`MoE − experts alone` is the cost of routing and dispatch. It then times the
six batched matmuls of the step one by one (forward, input gradient, weight
gradient of each expert layer) at both expert counts.

Each expert count runs in its own process; figures are medians over the calls,
and the whole table is taken twice, to show the spread.

    python benchmarks/moe_breakdown.py      # about a minute on 2 cores
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

EXPERTS = (8, 64)
# The six batched matmuls of a training step: name → (equation, operands).
DOTS = {
    "forward 1": ("ecd,edf->ecf", ("x", "w1")),
    "forward 2": ("ecf,efd->ecd", ("h", "w2")),
    "input gradient 2": ("ecd,efd->ecf", ("x", "w2")),
    "input gradient 1": ("ecf,edf->ecd", ("h", "w1")),
    "weight gradient 1": ("ecd,ecf->edf", ("x", "h")),
    "weight gradient 2": ("ecf,ecd->efd", ("h", "x")),
}


def measure(num_experts, rounds):
    """{name: [ms, ms]} for one expert count, in this process."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    from keras_transformer import MoE, PositionwiseFFN

    dim, expert_dim, top_k = 256, 1024, 2
    keras.utils.set_random_seed(0)
    x = tf.random.normal((32, 128, dim))
    moe = MoE(num_experts, expert_dim, top_k=top_k, capacity_factor=1.25)
    moe(x)
    capacity = moe.compute_routing(x, training=True)["capacity"]
    buffers = tf.random.normal((num_experts, capacity, dim))
    rows = tf.reshape(buffers, (-1, dim))
    floor = PositionwiseFFN(expert_dim)  # as in moe_scaling.py: one FFN over the rows
    floor(rows[None])

    def step(forward, weights):
        @tf.function(jit_compile=True)
        def run(inputs):
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(tf.square(forward(inputs)))
            return loss, tape.gradient(loss, weights)

        return run

    def experts_alone(b):
        h = tf.nn.relu(tf.einsum("ecd,edf->ecf", b, moe.inner_kernel) + moe.inner_bias[:, None])
        return tf.einsum("ecf,efd->ecd", h, moe.output_kernel) + moe.output_bias[:, None]

    expert_weights = [moe.inner_kernel, moe.inner_bias, moe.output_kernel, moe.output_bias]
    calls = {
        "floor (2-D)": (step(floor, floor.trainable_variables), rows[None]),
        "experts alone": (step(experts_alone, expert_weights), buffers),
        "MoE": (step(lambda t: moe(t, training=True), moe.trainable_variables), x),
    }
    operands = {
        "x": buffers,
        "h": tf.random.normal((num_experts, capacity, expert_dim)),
        "w1": tf.random.normal((num_experts, dim, expert_dim)),
        "w2": tf.random.normal((num_experts, expert_dim, dim)),
    }
    for name, (equation, names) in DOTS.items():
        einsum = tf.function(lambda a, b, e=equation: tf.einsum(e, a, b), jit_compile=True)
        calls[name] = (einsum, tuple(operands[n] for n in names))

    def timed(function, inputs):
        inputs = inputs if isinstance(inputs, tuple) else (inputs,)
        for _ in range(2):  # compile, warm up
            tf.nest.map_structure(lambda t: t.numpy(), function(*inputs))
        times = []
        for _ in range(rounds):
            started = time.perf_counter()
            tf.nest.map_structure(lambda t: t.numpy(), function(*inputs))
            times.append(time.perf_counter() - started)
        return 1e3 * statistics.median(times)

    result = {name: [] for name in calls}
    for _ in range(2):
        for name, (function, inputs) in calls.items():
            result[name].append(timed(function, inputs))
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15, help="calls per figure")
    parser.add_argument("--experts", type=int, help=argparse.SUPPRESS)  # child process
    args = parser.parse_args(argv)
    if args.experts is not None:
        print(json.dumps(measure(args.experts, args.rounds)))
        return
    results = {}
    for num_experts in EXPERTS:
        child = subprocess.run(
            [sys.executable, __file__, "--experts", str(num_experts), "--rounds", str(args.rounds)],
            check=True, capture_output=True, text=True,
        )
        results[num_experts] = json.loads(child.stdout.strip().splitlines()[-1])
    print("4096 tokens of width 256, expert_dim 1024, top_k 2, capacity_factor 1.25, "
          f"float32, XLA on CPU; ms, medians over {args.rounds} calls, the table taken twice\n")
    print("| call | " + " | ".join(f"{e} experts (ms)" for e in EXPERTS) + " | 64 / 8 |")
    print("|---|" + "---|" * (len(EXPERTS) + 1))
    for name in results[EXPERTS[0]]:
        cells = [" / ".join(f"{t:.1f}" for t in results[e][name]) for e in EXPERTS]
        ratio = statistics.median(results[64][name]) / statistics.median(results[8][name])
        print(f"| {name} | " + " | ".join(cells) + f" | {ratio:.2f} |")


if __name__ == "__main__":
    main()
