"""The MoE's weight-gradient matmul alone, by allocator: where 64 experts lose time.

`benchmarks/moe_scaling.py` finds that, at 4,096 tokens on a CPU, the MoE's
weight gradients cost about twice as much at 64 experts as at 8 with
TensorFlow's default allocator, while everything else stays flat. This script
isolates them. At top-2 with `capacity_factor=1.25` the experts' buffers hold
10,240 rows in all: 8 experts × 1,280 rows or 64 × 160. For both it times one
XLA-compiled call of:

- *weight gradient*: `einsum("ecf,ecd->efd")`, the gradient of an expert
  weight `(E, F, D)`: the output is as large as the weight (8 MB at 8
  experts, 64 MB at 64);
- *forward*: `einsum("ecf,efd->ecd")`, the same FLOPs with the `(E, C, D)`
  output (10 MB at both);
- *write the weight's size*: `w * 2`, no FLOPs to speak of, an output as large
  as the weight: what it costs to allocate and fill one.

Each allocator runs in its own process: `system` (TensorFlow's default CPU
allocator, glibc malloc underneath, whose blocks over 32 MB are returned to
the system when freed and page-faulted in again on the next call) and `bfc`
(`TF_CPU_ALLOCATOR_USE_BFC=true`, which keeps them). The figure is the median
over the calls; outputs are dropped after each call, as a training step's
gradients are.

    python benchmarks/weight_gradient_dot.py        # about 20 seconds on 2 cores
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

SHAPES = ((8, 1280), (64, 160))  # (experts, rows per expert): 10,240 rows either way
ALLOCATORS = ("system", "bfc")


def measure(dim, expert_dim, rounds):
    """{"E×C": {variant: ms}} in this process, with its allocator."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    result = {}
    for experts, rows in SHAPES:
        h = tf.random.normal((experts, rows, expert_dim))
        dy = tf.random.normal((experts, rows, dim))
        w = tf.random.normal((experts, expert_dim, dim))
        variants = {
            "weight_gradient": (
                tf.function(lambda a, b: tf.einsum("ecf,ecd->efd", a, b), jit_compile=True),
                (h, dy),
            ),
            "forward": (
                tf.function(lambda a, b: tf.einsum("ecf,efd->ecd", a, b), jit_compile=True),
                (h, w),
            ),
            "write": (tf.function(lambda a: a * 2.0, jit_compile=True), (w,)),
        }
        times = {name: [] for name in variants}
        for fn, inputs in variants.values():
            fn(*inputs), fn(*inputs)  # compile, warm up
        for _ in range(rounds):  # variants in turn: a slow spell hits them alike
            for name, (fn, inputs) in variants.items():
                started = time.perf_counter()
                fn(*inputs)  # synchronous on the CPU; the output is freed at once
                times[name].append(time.perf_counter() - started)
        result[f"{experts}×{rows}"] = {
            name: statistics.median(values) * 1e3 for name, values in times.items()
        }
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--expert-dim", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.dim, args.expert_dim, args.rounds)))
        return
    results = {}
    for allocator in ALLOCATORS:
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        env.pop("TF_CPU_ALLOCATOR_USE_BFC", None)
        if allocator == "bfc":
            env["TF_CPU_ALLOCATOR_USE_BFC"] = "true"
        command = [sys.executable, __file__, "--child", "--dim", str(args.dim),
                   "--expert-dim", str(args.expert_dim), "--rounds", str(args.rounds)]
        output = subprocess.run(command, env=env, check=True, capture_output=True, text=True)
        results[allocator] = json.loads(output.stdout.strip().splitlines()[-1])
    print(f"dim {args.dim}, expert_dim {args.expert_dim}, float32, XLA on CPU; "
          f"medians over {args.rounds} calls\n")
    print("| allocator | experts × rows | weight gradient (ms) | forward, same FLOPs (ms) "
          "| weight gradient / forward | write the weight's size (ms) |")
    print("|---|---|---|---|---|---|")
    for allocator, by_shape in results.items():
        for shape, t in by_shape.items():
            print(f"| {allocator} | {shape} | {t['weight_gradient']:.1f} | {t['forward']:.1f} "
                  f"| {t['weight_gradient'] / t['forward']:.2f} | {t['write']:.1f} |")


if __name__ == "__main__":
    main()
