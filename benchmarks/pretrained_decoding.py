"""Greedy decoding of imported keras-hub models against keras-hub's `CausalLM.generate`.

Builds a GPT-2-small-shaped `GPT2Backbone` (12 layers, d=768, 12 heads,
vocabulary 50,257) and a Llama-shaped `LlamaBackbone` of about the same size
(12 layers, d=768, 12 query and 4 key/value heads, SwiGLU 2,048 wide,
vocabulary 32,000, untied output), both with random weights, and decodes the
same prompts greedily, `--new-tokens` (128) tokens after an 8-token prompt,
at batch 1 and 16:

- keras-hub: `CausalLM(backbone, preprocessor=None)` compiled with
  `sampler="greedy"`, `generate` on token ids with `stop_token_ids=None` (it
  runs to `max_length`), twice: as compiled by default (`jit_compile="auto"`,
  which Keras turns off on a machine without an accelerator: a `tf.function`
  of TensorFlow's own kernels) and with `jit_compile=True` (XLA);
- keras_transformer: `from_keras_hub(backbone)` and `IdDecoder` (the cached
  search as one XLA-compiled `while_loop`), its end id the vocabulary's last
  id, which the script checks was never chosen, so that it runs the same
  steps.

Prints new tokens/s (rows × new tokens / seconds, the fastest of
`--repeats` runs after a warm-up that compiles; the sides take turns, so
that a slow spell of a shared machine hits each of them), the ratios, and
the share of rows whose tokens are identical on both sides. Every side runs
in this process on the same weights. Run:
`python benchmarks/pretrained_decoding.py` (~8 minutes on 2 cores).
"""

import argparse
import os
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import keras_hub  # noqa: E402
import numpy as np  # noqa: E402

from keras_transformer.data import SpecialIds  # noqa: E402
from keras_transformer.generation import DecodingConfig, IdDecoder  # noqa: E402
from keras_transformer.models import from_keras_hub  # noqa: E402

PROMPT = 8


def gpt2():
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=50257, num_layers=12, num_heads=12, hidden_dim=768,
        intermediate_dim=3072, max_sequence_length=1024, dropout=0.0)
    return backbone, keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)


def llama():
    backbone = keras_hub.models.LlamaBackbone(
        vocabulary_size=32000, num_layers=12, num_query_heads=12, num_key_value_heads=4,
        hidden_dim=768, intermediate_dim=2048)
    return backbone, keras_hub.models.LlamaCausalLM(backbone=backbone, preprocessor=None)


def fastest_seconds(functions, repeats):
    """The fastest of `repeats` timed calls of each function, taking turns."""
    for function in functions:
        function()  # compiles
    times = [[] for _ in functions]
    for _ in range(repeats):
        for function, seconds in zip(functions, times):
            started = time.perf_counter()
            function()
            seconds.append(time.perf_counter() - started)
    return [min(seconds) for seconds in times]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--models", nargs="+", default=["gpt2", "llama"])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    total = PROMPT + args.new_tokens
    rows = []
    for name in args.models:
        keras.utils.set_random_seed(0)
        backbone, task = {"gpt2": gpt2, "llama": llama}[name]()
        task.compile(sampler="greedy")  # jit_compile="auto": off without an accelerator
        xla_task = type(task)(backbone=backbone, preprocessor=None)
        xla_task.compile(sampler="greedy", jit_compile=True)
        model = from_keras_hub(backbone, max_length=total)
        end = backbone.vocabulary_size - 1
        # keras-hub runs to max_length (no stop id); ours has an end id that
        # the greedy search never reaches: the last id, which we check below.
        special = SpecialIds(start=0, end=end, pad=0, unknown=None, suppressed=(),
                             stripped=())
        decoder = IdDecoder(model, max_length=total - 1, decoding=DecodingConfig("greedy"),
                            special_ids=special)
        for batch in args.batches:
            prompts = np.random.default_rng(batch).integers(
                0, end, size=(batch, PROMPT)).astype("int32")
            token_ids = np.pad(prompts, ((0, 0), (0, args.new_tokens)))
            padding = np.zeros_like(token_ids)
            padding[:, :PROMPT] = 1
            inputs = {"token_ids": token_ids, "padding_mask": padding}

            def theirs(task=task):
                return task.generate(inputs, max_length=total, stop_token_ids=None)

            def theirs_xla():
                return theirs(xla_task)

            def ours():
                return decoder(prompts)

            hub_ids = np.asarray(theirs()["token_ids"])[:, 1:]
            our_ids = ours()[0]
            assert not (our_ids == end).any(), "the end id was chosen: rows stopped early"
            agree = float((hub_ids == our_ids).all(axis=1).mean())
            seconds = fastest_seconds([theirs, theirs_xla, ours], args.repeats)
            hub, hub_xla, our = (batch * args.new_tokens / s for s in seconds)
            rows.append((name, batch, hub, hub_xla, our, agree))
            print(f"{name} batch {batch}: keras-hub {hub:,.0f} tokens/s, keras-hub XLA "
                  f"{hub_xla:,.0f} tokens/s, ours {our:,.0f} tokens/s", flush=True)
    print()
    print("| model | batch | keras-hub `generate`, default | keras-hub `generate`, XLA | "
          "keras_transformer `IdDecoder` (XLA) | ours / keras-hub default | "
          "ours / keras-hub XLA | rows with identical tokens |")
    print("|---|---|---|---|---|---|---|---|")
    for name, batch, hub, hub_xla, our, agree in rows:
        print(f"| {name} | {batch} | {hub:,.0f} | {hub_xla:,.0f} | {our:,.0f} | "
              f"{our / hub:.2f}× | {our / hub_xla:.2f}× | {agree:.0%} |")


if __name__ == "__main__":
    main()
