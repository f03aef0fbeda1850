"""# A keras-hub model in your own stack: import, fine-tune, serve

keras-hub has pretrained Transformers (GPT-2, Llama, Mistral, Qwen2, ...);
its models stop at `generate()` in Python. `from_keras_hub` rebuilds one from
keras_transformer's layers, with its weights and its special token ids, so
that it fine-tunes with `fit` (LoRA too) and exports as a SavedModel that
serves text in, text out behind TF Serving's REST API.

    python examples/from_keras_hub.py                          # a small GPT-2 built here
    python examples/from_keras_hub.py --preset gpt2_base_en    # where the network allows
    python examples/from_keras_hub.py --smoke                  # a few seconds, for the tests

Without `--preset`, the script builds what a preset holds: a small GPT-2
(random weights) and a byte-level BPE tokenizer trained on the built-in
corpus, saved with keras-hub's `save_to_preset`; `from_keras_hub` then loads
that directory exactly as it would load a downloaded preset.
"""

import argparse
import json
import os
import tempfile
import time
import urllib.request

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import keras_hub  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_transformer.data import generate_pairs  # noqa: E402
from keras_transformer.data.pipelines import causal_lm_dataset  # noqa: E402
from keras_transformer.export import export_saved_model  # noqa: E402
from keras_transformer.generation import DecodingConfig, TextGenerator  # noqa: E402
from keras_transformer.models import enable_lora, from_keras_hub  # noqa: E402
from keras_transformer.models.pretrained import preset_tokenizer  # noqa: E402
from keras_transformer.training import (  # noqa: E402
    MaskedSparseCategoricalCrossentropy,
    TimeBudget,
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0].lstrip("# "))
    parser.add_argument("--preset", help="a keras-hub preset (a name where the network "
                                         "allows, or a local directory); default: a small "
                                         "GPT-2 built here")
    parser.add_argument("--minutes", type=float, default=1.0, help="fine-tuning budget")
    parser.add_argument("--lora-rank", type=int, default=0,
                        help="fine-tune LoRA updates of this rank only (0: every weight)")
    parser.add_argument("--learning-rate", type=float, default=None,
                        help="default: 1e-3 (3e-3 with LoRA); use ~1e-4 for real weights")
    parser.add_argument("--export-dir", default="saved_models/from_keras_hub")
    parser.add_argument("--smoke", action="store_true", help="a tiny run, for the tests")
    return parser.parse_args(argv)


# ## A preset
#
# A keras-hub preset is a directory: the backbone's config and weights, and
# the tokenizer's config and vocabulary. We write one the way keras-hub does,
# from a GPT-2 task (`GPT2CausalLM`) whose tokenizer is a byte-level BPE
# trained on the built-in corpus, with GPT-2's `<|endoftext|>` as its last
# token (it starts, ends and pads GPT-2's sequences).
def write_small_gpt2_preset(directory, texts, smoke):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    trainer = trainers.BpeTrainer(vocab_size=300 if smoke else 800, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator(texts, trainer)
    state = json.loads(bpe.to_str())["model"]
    vocabulary = dict(state["vocab"])
    vocabulary["<|endoftext|>"] = len(vocabulary)
    merges = [m if isinstance(m, str) else " ".join(m) for m in state["merges"]]
    tokenizer = keras_hub.models.GPT2Tokenizer(vocabulary=vocabulary, merges=merges)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=len(vocabulary), num_layers=2, num_heads=4,
        hidden_dim=32 if smoke else 128, intermediate_dim=64 if smoke else 512,
        max_sequence_length=64)
    task = keras_hub.models.GPT2CausalLM(
        backbone=backbone,
        preprocessor=keras_hub.models.GPT2CausalLMPreprocessor(tokenizer, sequence_length=64))
    task.save_to_preset(directory)
    return directory


def main(argv=None):
    args = parse_args(argv)
    keras.utils.set_random_seed(0)
    pairs = generate_pairs(200 if args.smoke else 5000, seed=0)
    texts = [english for english, _ in pairs]

    # ## Import
    #
    # `from_keras_hub` takes a preset (or a keras-hub backbone or task) and
    # returns a functional model of keras_transformer's layers: learned
    # positions, pre-LN `DecoderBlock`s with GELU's tanh approximation, a
    # final LayerNorm, the output tied to the token embedding. Its logits are
    # keras-hub's (tests/test_pretrained.py). The tokenizer comes from the
    # same preset; `model.special_ids` are its start, end and padding ids.
    preset = args.preset or write_small_gpt2_preset(
        tempfile.mkdtemp(prefix="gpt2_preset_"), texts, args.smoke)
    model = from_keras_hub(preset)
    tokenizer = preset_tokenizer(preset)
    special = model.special_ids
    print(f"Imported {preset}: {model.count_params():,} weights, end id {special.end}")

    # ## Fine-tune
    #
    # Each sentence becomes `<|endoftext|> tokens <|endoftext|>`, right-padded;
    # the padding labels are -1 (GPT-2 pads with its end token, which the
    # model must still learn to produce), and the loss skips them. With
    # `--lora-rank`, `enable_lora` freezes the model and trains low-rank
    # updates of the attention's query and value projections only.
    length = min(32, model.max_length)
    data = causal_lm_dataset(texts, tokenizer, length, batch_size=32,
                             special_ids=special, shuffle_buffer=len(texts), seed=0)
    if args.lora_rank:
        enable_lora(model, args.lora_rank)
    learning_rate = args.learning_rate or (3e-3 if args.lora_rank else 1e-3)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss=MaskedSparseCategoricalCrossentropy(pad_id=special.label_padding))
    started = time.time()
    history = model.fit(data, epochs=2 if args.smoke else 100, verbose=2, shuffle=False,
                        callbacks=[TimeBudget(args.minutes)])
    print(f"Fine-tuned for {time.time() - started:.0f} s: loss "
          f"{history.history['loss'][0]:.3f} → {history.history['loss'][-1]:.3f}")

    # ## Generate, export, serve
    #
    # `TextGenerator` puts the tokenizer, the cached greedy search (one
    # XLA-compiled `while_loop`) and the detokenizer in one `tf.Module`; the
    # SavedModel holds all three and loads with TensorFlow and
    # tensorflow-text only. `keras-transformer serve <export-dir>` answers TF
    # Serving's REST API with it; here we start the same server in this
    # process and ask it once.
    generator = TextGenerator(model, tokenizer, max_length=length,
                              decoding=DecodingConfig("greedy"))
    prompts = ["one book", "three houses"]
    in_process = [t.decode("utf-8") for t in
                  generator.generate_text(tf.constant(prompts))["text"].numpy()]
    path = export_saved_model(generator, args.export_dir)
    served = serve_and_ask(args.export_dir, prompts)
    for prompt, text in zip(prompts, served):
        print(f"  {prompt!r} → {text!r}")
    print(f"Exported to {path}; the server answers what the model generates: "
          f"{served == in_process}")
    return {"loss": history.history["loss"], "export_path": path,
            "generated": in_process, "served": served}


def serve_and_ask(base_dir, prompts):
    """One request to the package's HTTP server over the newest version in `base_dir`."""
    from keras_transformer.export.http_app import HTTPServer
    from keras_transformer.export.server import ModelServer

    model = ModelServer(base_dir)
    httpd = HTTPServer(model, "127.0.0.1", 0).start()  # Starlette on uvicorn, in a thread
    try:
        url = (f"http://127.0.0.1:{httpd.server_address[1]}/v1/models/"
               f"{os.path.basename(os.path.normpath(base_dir))}:predict")
        body = json.dumps({"instances": prompts}).encode()
        request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            return [row["text"] for row in json.load(response)["predictions"]]
    finally:
        httpd.shutdown()
        httpd.server_close()
        model.close()


if __name__ == "__main__":
    main()
