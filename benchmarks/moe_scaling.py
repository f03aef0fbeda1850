"""MoE scaling: forward+backward time per token as the number of experts grows.

Our sparse `MoE` (top-2, expert_dim fixed) for num_experts in {4, 8, 16, 32,
64}, side by side with:
- a dense `PositionwiseFFN(expert_dim)`, one expert's size (the target's
  reference), and `PositionwiseFFN(top_k × expert_dim)`, the MoE's active size;
- the floor: one plain 2-D `PositionwiseFFN(expert_dim)` over as many rows as
  the MoE's expert buffers hold (`num_experts × capacity`), i.e. the same
  expert FLOPs with no routing, no dispatch and no batched matmul.
  `MoE / floor` is the cost of everything that makes the layer sparse;
- the MoE again with the gradient with respect to its input only (no weight
  gradients): what is left when the `num_experts × expert_dim × dim` weight
  gradients, the one part whose size grows with the number of experts, are
  not computed;
- a dense mixture that runs every expert on every token and weights the
  outputs by the same sparse top-2 gates (the way keras-hub's Mixtral block
  computes; written here with the same ReLU experts as ours so that only the
  dispatch differs).

Each is timed as one XLA-compiled function computing the outputs, a loss, and
the gradients with respect to every weight (no optimizer step).

`--inference` times the forward pass at inference instead (`training=False`,
the default `eval_capacity_factor=None`: no token dropped, so each expert's
buffer could hold every token): the MoE, the MoE with that one buffer of
`tokens` rows per expert run whole (how the layer computed before it cut the
buffer into chunks that run only when some expert's load reaches them), the
two FFNs and the dense mixture. It also reports the rows the chunks computed
(`num_experts ×` the end of the last chunk run) against the `top_k × tokens`
that hold tokens.

How it is measured, so that rows can be compared:
- each expert count runs in its own Python processes (same start state for
  the memory allocator; the dense mixture's gigabyte buffers, timed last,
  cannot slow the next row), `--processes` of them, the rows interleaved
  (4, 8, ..., 64, 4, 8, ...), and the table gives medians over them: the
  same function can differ by 10 % or more from one process to the next here;
- within a process the variants are timed in turn, one call each per round,
  after a warm-up; the figure is the median over the rounds, so that a slow
  spell of the machine hits every variant alike.

Targets from issue 3: time at 64 experts ≤ 1.3 × time at 8 experts, and top-2
MoE ≤ 2.5 × the dense FFN of one expert's size.

Memory allocator. TensorFlow's CPU allocator takes memory from glibc malloc,
which returns blocks over 32 MB to the system on free and page-faults them
in again on the next step. The MoE's weight gradients are `num_experts` times
larger than one expert's (64 MB each at 64 experts), so that cost grows with
the number of experts. `--allocator bfc` sets TensorFlow's
`TF_CPU_ALLOCATOR_USE_BFC=true` (a pooling allocator that keeps freed memory)
in the timed processes, to show the layer without it.
docs/moe.md gives the weight-gradient matmul alone with either allocator.

    python benchmarks/moe_scaling.py                       # ~11 minutes on 2 cores
    python benchmarks/moe_scaling.py --allocator bfc
    python benchmarks/moe_scaling.py --quick               # fewer rounds
    python benchmarks/moe_scaling.py --batch 128 --experts 8 64 --max-dense-experts 0
    python benchmarks/moe_scaling.py --inference            # ~6 minutes

Backend. The layers are written with `keras.ops`, so `--backend jax` times the
same layer code under Keras's JAX backend (`jax.jit` of `stateless_call` and
`jax.value_and_grad` in place of `tf.function(jit_compile=True)` and a
gradient tape). That is how it ran on a GPU machine that has JAX but no
TensorFlow (with `keras`, `namex` and `optree` added, and the repository on
`PYTHONPATH`); `scripts/check_moe_jax.py` checks the layer's values there
first. `--allocator` applies to TensorFlow only.

    PYTHONPATH=. python benchmarks/moe_scaling.py --backend jax
    python benchmarks/moe_scaling.py --backend jax --batch 64 --length 512 \
        --dim 1024 --expert-dim 4096 --experts 8 64 --max-dense-experts 8
"""

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

EXPERT_COUNTS = (4, 8, 16, 32, 64)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    parser.add_argument("--max-dense-experts", type=int, default=64,
                        help="skip the dense mixture above this many experts (it is slow)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--expert-dim", type=int, default=1024)
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--max-one-buffer-experts", type=int, default=64,
                        help="--inference: skip the one-buffer reference above this many "
                             "experts (its buffer holds num_experts × tokens rows)")
    parser.add_argument("--backend", choices=("tensorflow", "jax"), default="tensorflow",
                        help="Keras backend of the timed processes (jax: for a GPU machine "
                             "without TensorFlow; the layers are written with keras.ops)")
    parser.add_argument("--allocator", choices=("system", "bfc"), default="system",
                        help="TensorFlow's CPU allocator in the timed processes")
    parser.add_argument("--experts", type=int, nargs="+", default=list(EXPERT_COUNTS))
    parser.add_argument("--inference", action="store_true",
                        help="time the forward pass at inference (no dropping) instead")
    parser.add_argument("--processes", type=int, default=3,
                        help="processes per row; rows are interleaved and their medians taken")
    parser.add_argument("--row", type=int, help=argparse.SUPPRESS)  # child: one count
    return parser.parse_args(argv)


def measure_row(args):
    """Times every variant for `args.row` experts; returns {name: seconds}."""
    os.environ["KERAS_BACKEND"] = args.backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import numpy as np
    from keras import ops

    from keras_transformer import MoE, PositionwiseFFN

    class DenseMixture(keras.layers.Layer):
        """Every expert on every token, weighted by sparse top-k gates (reference)."""

        def __init__(self, moe, **kwargs):
            super().__init__(**kwargs)
            self.moe = moe  # borrows the MoE's weights: same experts, same router

        def call(self, inputs, training=None):
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

    class OneBufferMoE(MoE):
        """The MoE with its expert buffers run whole, never in chunks (reference)."""

        def _chunk_bounds(self, num_tokens, capacity, training):
            return [(0, capacity)]

    def compiled_step(layer, x, weight_gradients=True):
        """One XLA-compiled forward+backward call, warmed up; returns a timer.

        `weight_gradients=False`: the gradient with respect to the input only.
        With `--inference`: the forward pass at inference only.
        """
        layer(x)  # build
        build = jax_step if args.backend == "jax" else tensorflow_step
        call = build(layer, x, weight_gradients)

        def run():
            started = time.perf_counter()
            call()
            return time.perf_counter() - started

        run(), run()  # compile, warm up
        return run

    def tensorflow_step(layer, x, weight_gradients):
        import tensorflow as tf

        @tf.function(jit_compile=True)
        def step(x):
            if args.inference:
                return layer(x, training=False)
            with tf.GradientTape() as tape:
                tape.watch(x)
                loss = tf.reduce_mean(tf.square(layer(x, training=True)))
            sources = layer.trainable_variables if weight_gradients else x
            return loss, tape.gradient(loss, sources)

        return lambda: tf.nest.map_structure(lambda t: t.numpy(), step(x))

    def jax_step(layer, x, weight_gradients):
        import jax

        trainable = [v.value for v in layer.trainable_variables]
        non_trainable = [v.value for v in layer.non_trainable_variables]

        def forward(trainable, x, training):
            outputs, _ = layer.stateless_call(trainable, non_trainable, x, training=training)
            return outputs

        if args.inference:
            step = jax.jit(lambda trainable, x: forward(trainable, x, False))
        else:
            def loss(trainable, x):
                return ops.mean(ops.square(forward(trainable, x, True)))

            step = jax.jit(jax.value_and_grad(loss, argnums=0 if weight_gradients else 1))
        return lambda: jax.block_until_ready(step(trainable, x))

    def random_normal(shape, seed):
        """The inputs; under TensorFlow the global-seed draws the tables were measured on."""
        if args.backend == "tensorflow":
            import tensorflow as tf

            return tf.random.normal(shape)
        return keras.random.normal(shape, seed=seed)

    keras.utils.set_random_seed(0)
    num_experts, k = args.row, args.top_k
    x = random_normal((args.batch, args.length, args.dim), seed=0)
    tokens = args.batch * args.length
    rows = num_experts * math.ceil(1.25 * tokens * k / num_experts)
    moe = MoE(num_experts, args.expert_dim, top_k=k, capacity_factor=1.25)
    moe(x)  # its weights drawn first: the router the inference table was measured with
    timers = {
        "ffn": compiled_step(PositionwiseFFN(args.expert_dim), x),
        "active_ffn": compiled_step(PositionwiseFFN(k * args.expert_dim), x),
        "moe": compiled_step(moe, x),
    }
    if args.inference and num_experts <= args.max_one_buffer_experts:
        one_buffer = OneBufferMoE(num_experts, args.expert_dim, top_k=k)
        one_buffer(x)
        one_buffer.set_weights(moe.get_weights())
        timers["one_buffer"] = compiled_step(one_buffer, x)
    if not args.inference:
        timers["moe_no_weight_gradients"] = compiled_step(moe, x, weight_gradients=False)
        timers["moe_cf1"] = compiled_step(
            MoE(num_experts, args.expert_dim, top_k=k, capacity_factor=1.0), x
        )
        timers["floor"] = compiled_step(
            PositionwiseFFN(args.expert_dim), random_normal((1, rows, args.dim), seed=1)
        )
    rounds = 3 if args.quick else 9
    times = {name: [] for name in timers}
    for _ in range(rounds):
        for name, run in timers.items():
            times[name].append(run())
    result = {name: statistics.median(values) for name, values in times.items()}
    result["device"] = device_name(args.backend)
    if args.inference:  # rows the chunks computed: up to the end of the last chunk run
        routing = {name: ops.convert_to_numpy(value)
                   for name, value in moe.compute_routing(x).items()}
        chosen = routing["expert_index"][routing["kept"]]
        busiest = int(max(np.bincount(chosen, minlength=num_experts)))
        chunks = moe._chunk_bounds(tokens, tokens, training=False)
        ends = [hi for lo, hi in chunks if lo == 0 or busiest > lo]
        result["rows"] = num_experts * max(ends)
        result["busiest"] = busiest
    if num_experts <= args.max_dense_experts:  # last: its buffers are the largest
        run = compiled_step(DenseMixture(moe), x)
        result["dense_mixture"] = statistics.median(run() for _ in range(max(2, rounds // 3)))
    return result


def ms(seconds):
    """Milliseconds, at least three significant figures: 255.3, 17.4, 0.512; "–" if None."""
    if seconds is None:
        return "–"
    value = seconds * 1e3
    return f"{value:,.{max(1, 2 - math.floor(math.log10(value)))}f}"


def device_name(backend):
    """What the timed functions ran on, e.g. 'NVIDIA H100 80GB HBM3' or 'cpu'."""
    if backend == "jax":
        import jax

        return jax.devices()[0].device_kind
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return "cpu"
    return tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU")


def main(argv=None):
    args = parse_args(argv)
    if args.row is not None:
        print(json.dumps(measure_row(args)))
        return
    environment = dict(os.environ)
    if args.allocator == "bfc":
        environment["TF_CPU_ALLOCATOR_USE_BFC"] = "true"
    passed = list(argv if argv is not None else sys.argv[1:])
    tokens = args.batch * args.length
    rounds = 3 if args.quick else 9
    print(
        f"{tokens} tokens of width {args.dim}, expert_dim {args.expert_dim}, "
        f"top_k {args.top_k}, {'inference forward' if args.inference else 'forward+backward'}, "
        f"Keras backend {args.backend}, XLA, float32"
        f"{f', allocator: {args.allocator}' if args.backend == 'tensorflow' else ''}; "
        f"medians over {args.processes} processes per row of medians over {rounds} rounds\n",
        flush=True,
    )
    runs = {num_experts: [] for num_experts in args.experts}
    for process in range(args.processes):  # rows interleaved: 4, 8, ..., 64, 4, 8, ...
        for num_experts in args.experts:
            command = [sys.executable, os.path.abspath(__file__), *passed,
                       "--row", str(num_experts)]
            if process > 0:  # the dense mixture once: it is slow and far off
                command += ["--max-dense-experts", "0"]
            child = subprocess.run(command, env=environment, capture_output=True, text=True)
            if child.returncode != 0:
                sys.exit(f"the row for {num_experts} experts failed:\n{child.stderr[-4000:]}")
            run = json.loads(child.stdout.strip().splitlines()[-1])
            runs[num_experts].append(run)
            print(f"  {num_experts} experts, process {process + 1}: MoE {ms(run['moe'])} ms, "
                  f"FFN {ms(run['ffn'])} ms", file=sys.stderr, flush=True)

    def median(num_experts, name):
        values = [run[name] for run in runs[num_experts] if name in run]
        return statistics.median(values) if values else None

    print(f"device: {runs[args.experts[0]][0]['device']}\n")
    if args.inference:
        print_inference_table(args, runs, median, tokens)
        return
    print("| experts | MoE cf=1.25 (ms) | µs/token | × FFN | × active FFN | floor (ms) "
          "| MoE / floor | MoE, input gradient only (ms) | MoE cf=1.0 (ms) | × FFN "
          "| dense mixture (ms) | dense / MoE | FFN (ms) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for num_experts in args.experts:
        moe, ffn = median(num_experts, "moe"), median(num_experts, "ffn")
        tight, floor = median(num_experts, "moe_cf1"), median(num_experts, "floor")
        active, dense = median(num_experts, "active_ffn"), median(num_experts, "dense_mixture")
        no_weights = median(num_experts, "moe_no_weight_gradients")
        ratio_text = "–" if dense is None else f"{dense / moe:.1f}"
        print(
            f"| {num_experts} | {ms(moe)} | {moe / tokens * 1e6:.2f} | "
            f"{moe / ffn:.2f} | {moe / active:.2f} | {ms(floor)} | {moe / floor:.2f} | "
            f"{ms(no_weights)} | {ms(tight)} | {tight / ffn:.2f} | "
            f"{ms(dense)} | {ratio_text} | {ms(ffn)} |"
        )
    if 8 in runs and 64 in runs:
        each = [a["moe"] / b["moe"] for a, b in zip(runs[64], runs[8])]
        print(
            "\ntime at 64 experts / time at 8 experts (cf=1.25): "
            f"{median(64, 'moe') / median(8, 'moe'):.2f} (target ≤ 1.3); "
            f"per process pair: {', '.join(f'{r:.2f}' for r in each)}"
        )
    if 8 in runs:
        each = [run["moe"] / run["ffn"] for run in runs[8]]
        print(
            "top-2 MoE (8 experts) / dense FFN of one expert: cf=1.25 "
            f"{median(8, 'moe') / median(8, 'ffn'):.2f} "
            f"(per process: {', '.join(f'{r:.2f}' for r in each)}), "
            f"cf=1.0 {median(8, 'moe_cf1') / median(8, 'ffn'):.2f} (target ≤ 2.5)"
        )


def print_inference_table(args, runs, median, tokens):
    print("| experts | MoE (ms) | × FFN | × active FFN | rows computed "
          "| rows / (top_k × tokens) | busiest expert / mean load "
          "| one buffer of tokens rows (ms) | one buffer / MoE "
          "| dense mixture (ms) | dense / MoE | FFN (ms) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for num_experts in args.experts:
        moe, ffn = median(num_experts, "moe"), median(num_experts, "ffn")
        active, whole = median(num_experts, "active_ffn"), median(num_experts, "one_buffer")
        dense = median(num_experts, "dense_mixture")
        rows, busiest = runs[num_experts][0]["rows"], runs[num_experts][0]["busiest"]
        mean_load = tokens * args.top_k / num_experts
        ratio_text = "–" if dense is None else f"{dense / moe:.1f}"
        whole_ratio = "–" if whole is None else f"{whole / moe:.1f}"
        print(
            f"| {num_experts} | {ms(moe)} | {moe / ffn:.2f} | {moe / active:.2f} | "
            f"{rows:,} | {rows / (tokens * args.top_k):.2f} | {busiest / mean_load:.2f} | "
            f"{ms(whole)} | {whole_ratio} | {ms(dense)} | {ratio_text} | {ms(ffn)} |"
        )


if __name__ == "__main__":
    main()
