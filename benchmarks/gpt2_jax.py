"""GPT-2-small shaped decoder under JAX: our layers against keras-hub's GPT2Backbone.

Both models have 12 layers, d=768, 12 heads, FFN 3072, context 1024,
vocabulary 50,257, learned positions, pre-LN with a final norm, GELU, tied
output embedding and no dropout (GPT-2's shape). Ours is stacked from
`PositionalEmbedding` and `DecoderBlock`; keras-hub's is `GPT2Backbone`
with its `token_embedding` reversed for the logits. Both train under
`mixed_bfloat16` with AdamW and `jit_compile=True`, on the same batches,
alternating in one process.

Printed (a table per part):
- training tokens/s, model FLOP/s and MFU: against the bf16 matmul rate
  measured in the same run, and against the 989 TFLOP/s H100/H200 datasheet
  (FLOPs per token: 6 × the matmul parameters + 12 × layers × d × context);
- cached greedy decoding tokens/s at batch 1 and 64 (ours: `IdDecoder`;
  keras-hub: `GPT2CausalLM.generate` with no stop token);
- peak device memory of one training step at long context (B=8, T=2048,
  d=512, 8 heads, 4 layers) with the fused attention kernel against the
  materialized softmax (each in its own process: JAX's peak never resets).

    python benchmarks/gpt2_jax.py                     # everything (a GPU: ~5 min)
    python benchmarks/gpt2_jax.py --small --rounds 2  # a CPU smoke test of the script
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import keras_transformer as kt  # noqa: E402
import keras_transformer.generation  # noqa: E402,F401

GPT2 = dict(layers=12, d=768, heads=12, ffn=3072, vocab=50257, context=1024, batch=16)
SMALL = dict(layers=2, d=64, heads=4, ffn=256, vocab=1000, context=64, batch=4)
LONG = dict(layers=4, d=512, heads=8, ffn=2048, vocab=8000, context=2048, batch=8)
DATASHEET_BF16 = 989e12


def build_ours(c, mask_zero=True):
    tokens = keras.Input((None,), dtype="int32", name="token_ids")
    embedding = kt.PositionalEmbedding(c["vocab"], c["context"], c["d"], positions="learned",
                                       mask_zero=mask_zero)
    x = embedding(tokens)
    for _ in range(c["layers"]):
        x = kt.DecoderBlock(c["heads"], c["ffn"], dropout=0.0, norm_first=True,
                            activation="gelu")(x)
    x = keras.layers.LayerNormalization(epsilon=1e-5)(x)
    return keras.Model(tokens, embedding(x, reverse=True))


def build_keras_hub(c):
    import keras_hub

    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=c["vocab"], num_layers=c["layers"], num_heads=c["heads"],
        hidden_dim=c["d"], intermediate_dim=c["ffn"], dropout=0.0,
        max_sequence_length=c["context"])
    tokens = keras.Input((None,), dtype="int32", name="token_ids")
    padding = keras.Input((None,), dtype="int32", name="padding_mask")
    hidden = backbone({"token_ids": tokens, "padding_mask": padding})
    logits = backbone.token_embedding(hidden, reverse=True)
    return keras.Model([tokens, padding], keras.layers.Activation("linear", dtype="float32")(logits)), backbone


def flops_per_token(c):
    matmul_params = c["layers"] * 12 * c["d"] ** 2 + c["d"] * c["vocab"]
    return 6 * matmul_params + 12 * c["layers"] * c["d"] * c["context"]


def bf16_matmul_rate(size=8192):
    a = jax.random.normal(jax.random.PRNGKey(0), (size, size), jnp.bfloat16)
    b = jax.random.normal(jax.random.PRNGKey(1), (size, size), jnp.bfloat16)
    f = jax.jit(lambda a, b: a @ b)
    f(a, b).block_until_ready()
    times = []
    for _ in range(10):
        started = time.perf_counter()
        f(a, b).block_until_ready()
        times.append(time.perf_counter() - started)
    return 2 * size**3 / statistics.median(times)


def compile_model(model):
    model.compile(optimizer=keras.optimizers.AdamW(1e-4),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  jit_compile=True)


def train_part(c, rounds, steps):
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, c["vocab"], size=(c["batch"], c["context"])).astype("int32")
    labels = rng.integers(1, c["vocab"], size=(c["batch"], c["context"])).astype("int32")
    padding = np.ones_like(tokens)
    models = {}
    keras.utils.set_random_seed(0)
    models["keras_transformer"] = (build_ours(c), tokens)
    keras.utils.set_random_seed(0)
    models["keras_transformer, no padding mask"] = (build_ours(c, mask_zero=False), tokens)
    keras.utils.set_random_seed(0)
    models["keras-hub GPT2Backbone"] = (build_keras_hub(c)[0], [tokens, padding])
    for name, (model, x) in models.items():
        compile_model(model)
        for _ in range(3):
            model.train_on_batch(x, labels)
        print(f"{name}: {model.count_params():,} parameters", flush=True)
    seconds = {name: [] for name in models}
    for _ in range(rounds):
        for name, (model, x) in models.items():
            started = time.perf_counter()
            for _ in range(steps):
                loss = model.train_on_batch(x, labels)
            float(loss)
            seconds[name].append((time.perf_counter() - started) / steps)
    peak = bf16_matmul_rate(8192 if c is GPT2 else 1024)
    per_step = flops_per_token(c) * c["batch"] * c["context"]
    print(f"\nbf16 matmul rate measured: {peak / 1e12:.0f} TFLOP/s; "
          f"model: {per_step / 1e12:.2f} TFLOP per step ({c['batch']}×{c['context']} tokens)")
    print("\n| model | step (ms) | tokens/s | TFLOP/s | MFU (measured peak) | MFU (989 TFLOP/s) |")
    print("|---|---|---|---|---|---|")
    rates = {}
    for name, times in seconds.items():
        step = statistics.median(times)
        rates[name] = c["batch"] * c["context"] / step
        print(f"| {name} | {step * 1e3:.1f} | {rates[name]:,.0f} | {per_step / step / 1e12:.0f} "
              f"| {per_step / step / peak:.0%} | {per_step / step / DATASHEET_BF16:.0%} |")
    base = rates["keras-hub GPT2Backbone"]
    for name in list(rates)[:2]:
        print(f"ratio {name} / keras-hub: {rates[name] / base:.3f} "
              f"(rounds: {[round(b / a, 3) for a, b in zip(seconds[name], seconds['keras-hub GPT2Backbone'])]})")
    return models


def decode_part(c, new_tokens, repeats):
    import keras_hub

    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    keras.utils.set_random_seed(0)
    ours = build_ours(c)
    keras.utils.set_random_seed(0)
    _, backbone = build_keras_hub(c)
    hub = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
    hub.compile(sampler="greedy")
    prompt = 8
    total = prompt + new_tokens
    print(f"\n| batch | ours tokens/s | keras-hub tokens/s | ratio |   ({new_tokens} new tokens "
          f"after a {prompt}-token prompt, cache of {total})")
    print("|---|---|---|---|")
    for batch in (1, 64):
        rng = np.random.default_rng(batch)
        prompts = rng.integers(4, c["vocab"], size=(batch, prompt)).astype("int32")
        decoder = kt.generation.IdDecoder(ours, max_length=total - 1)
        token_ids = np.zeros((batch, total), "int32")
        token_ids[:, :prompt] = prompts
        padding = np.zeros((batch, total), bool)
        padding[:, :prompt] = True
        hub_inputs = {"token_ids": token_ids, "padding_mask": padding}
        decoder(prompts)
        hub.generate(hub_inputs, stop_token_ids=None)
        ours_times, hub_times, steps_run = [], [], []
        for _ in range(repeats):
            started = time.perf_counter()
            ids, _ = decoder(prompts)
            ours_times.append(time.perf_counter() - started)
            steps_run.append(int((ids != 0).any(0).sum()) - (prompt - 1))
            started = time.perf_counter()
            hub.generate(hub_inputs, stop_token_ids=None)
            hub_times.append(time.perf_counter() - started)
        # Ours stops when every row has produced [END]: count the steps it ran.
        ours_rate = batch * statistics.median(steps_run) / statistics.median(ours_times)
        hub_rate = batch * new_tokens / statistics.median(hub_times)
        print(f"| {batch} | {ours_rate:,.0f} | {hub_rate:,.0f} | {ours_rate / hub_rate:.2f} |"
              f"   (ours ran {statistics.median(steps_run)} of {new_tokens} steps)", flush=True)


def memory_part(c, attention):
    """One training step; prints the peak device memory (a subprocess per path)."""
    if attention == "materialized":
        from keras_transformer.layers import multi_head_attention

        multi_head_attention._fused_kernel_supports = lambda dtype: False
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    model = build_ours(c, mask_zero=True)
    compile_model(model)
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, c["vocab"], size=(c["batch"], c["context"])).astype("int32")
    model.train_on_batch(tokens, tokens)
    started = time.perf_counter()
    for _ in range(3):
        loss = model.train_on_batch(tokens, tokens)
    float(loss)
    step = (time.perf_counter() - started) / 3
    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    if peak is None:  # CPU: the process's peak resident memory
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"attention": attention, "peak_bytes": peak, "step_s": step}))


def check_part():
    """The fused kernel against the materialized softmax on this device, bf16."""
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    rng = np.random.default_rng(0)
    layer = kt.MultiHeadAttention(num_heads=8)
    x = rng.normal(size=(4, 256, 512)).astype("float32")
    padding = rng.random((4, 256)) > 0.2
    padding[0, :] = False  # a row whose keys are all hidden: zero attention
    print("\n| mask | relative difference, fused vs materialized (bf16) |")
    print("|---|---|")
    for name, kwargs in (("causal only", dict(use_causal_mask=True)),
                         ("padding + causal", dict(query_mask=padding, use_causal_mask=True)),
                         ("cross, key padding", dict(value_mask=padding))):
        value = x if name.startswith("cross") else None
        fused = np.asarray(layer(x, value, **kwargs), "float32")
        materialized = np.asarray(layer(x, value, return_attention_scores=True, **kwargs)[0],
                                  "float32")
        difference = np.linalg.norm(fused - materialized) / np.linalg.norm(materialized)
        print(f"| {name} | {difference:.1e} |")
    keras.mixed_precision.set_global_policy("float32")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="check,train,decode,memory")
    parser.add_argument("--rounds", type=int, default=5, help="alternating training rounds")
    parser.add_argument("--steps", type=int, default=10, help="training steps per round")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--small", action="store_true", help="tiny shapes (a smoke test)")
    parser.add_argument("--memory-child", choices=["fused", "materialized"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    c = SMALL if args.small else GPT2
    long = dict(LONG, context=128, batch=2) if args.small else LONG
    if args.memory_child:
        memory_part(long, args.memory_child)
        return
    print(f"device: {jax.devices()[0].device_kind}, JAX {jax.__version__}, "
          f"Keras {keras.__version__}", flush=True)
    parts = args.parts.split(",")
    if "check" in parts:
        check_part()
    if "train" in parts:
        train_part(c, args.rounds, args.steps)
    if "decode" in parts:
        decode_part(c, args.new_tokens if not args.small else 16, 3)
    if "memory" in parts:
        rows = []
        for attention in ("materialized", "fused"):
            command = [sys.executable, __file__, "--memory-child", attention]
            if args.small:
                command.append("--small")
            out = subprocess.run(command, capture_output=True, text=True)
            if out.returncode:
                print(out.stderr[-3000:])
                continue
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"\nPeak memory of a training step, B={long['batch']}, T={long['context']}, "
              f"d={long['d']}, {long['heads']} heads, {long['layers']} layers, bf16:")
        print("| attention | peak memory (GiB) | step (ms) |")
        print("|---|---|---|")
        for row in rows:
            print(f"| {row['attention']} | {row['peak_bytes'] / 2**30:.2f} | "
                  f"{row['step_s'] * 1e3:.0f} |")


if __name__ == "__main__":
    main()
