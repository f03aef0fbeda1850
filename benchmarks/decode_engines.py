"""Decoding speed against CTranslate2 on the same weights, side by side in one run.

A trained translation run (`keras-transformer train translation ...
--output-dir RUN`) is decoded by:

- the package's exported SavedModel, exported once for greedy and once for
  beam 4 (α 0.6): `translate_ids` (ids in and out) and `serving_default`
  (strings in and out, tokenization inside the graph);
- `IdDecoder` (ids in and out, XLA);
- CTranslate2 on the same weights (`keras_transformer.export.ctranslate2`):
  float32 with 1 worker × 2 threads and 2 workers × 1 thread, int8 with
  2 workers × 1 thread.

Each engine runs in a process of its own (its threads set before TensorFlow
or CTranslate2 starts), all loaded before the first round; the rounds then
alternate between engines, one engine at a time, and the median of the
rounds is printed. Every engine gets the same batches in the same order
(held-out English sentences of the run's corpus, in the recipe's order),
tokenized once outside the timing, except the string rows, which time
their own tokenization and detokenization (and say so). A round of an
engine with W workers keeps W batches in flight.

Printed: the CPU, each engine's thread layout, sentences/s at batch 64,
milliseconds per sentence at batch 1, the ratios to CTranslate2 float32 in
its best layout, and the fidelity line: greedy outputs equal to CTranslate2
float32's on the first 200 sentences.

    python benchmarks/decode_engines.py --run runs/spa --data ../shared/data/spa-eng.zip
    python benchmarks/decode_engines.py --run runs/translation      # the built-in corpus

`--engines` picks a subset (names as printed), `--layout W,T` sets the
package's own workers and threads (default 1,2 and 2,1: both are run).
The package's int8 SavedModel (`keras_transformer.models.quantize`) runs
too (`--no-int8`: not), and the int8/float32 speed-ups of the SavedModel
and of CTranslate2 are printed. `--base-model` decodes a base-size model
(d=512, 6+6 blocks) with random weights and the run's vocabularies instead,
for speed only.
"""

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time

GREEDY, BEAM = "greedy", "beam4"


def _cpu():
    name, flags = "unknown CPU", ""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name") and name == "unknown CPU":
                    name = line.split(":", 1)[1].strip()
                if line.startswith("flags") and not flags:
                    flags = line
    except OSError:
        pass
    features = [f for f in ("avx2", "avx512f", "amx_tile") if f" {f}" in flags]
    return f"{name}, {os.cpu_count()} cores, {'/'.join(features) or 'no AVX2'}"


# ## The engines
#
# Each runs in its own process: `setup()` loads, `run(batches)` decodes a list
# of batches and returns the outputs (token lists), timed by the caller.

def _use_code(code):
    """Import `keras_transformer` from the checkout `code` (a before/after run)."""
    if code:
        sys.path.insert(0, os.path.abspath(code))


def _configure_tensorflow(threads, workers):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")  # retracing notes: each new shape compiles once
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(max(2, workers))
    return tf


def _in_flight(function, batches, workers):
    """`function` over `batches`, keeping `workers` batches in flight."""
    if workers == 1:
        return [function(batch) for batch in batches]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(function, batches))


class SavedModelEngine:
    def __init__(self, path, signature, workers, threads):
        self.path, self.signature = path, signature
        self.workers, self.threads = workers, threads

    def setup(self):
        tf = _configure_tensorflow(self.threads, self.workers)
        import tensorflow_text  # noqa: F401  (the tokenizers' ops)

        self.tf = tf
        self.function = tf.saved_model.load(self.path).signatures[self.signature]

    def run(self, batches):
        tf = self.tf
        if self.signature == "serving_default":
            def one(batch):
                return list(self.function(text=tf.constant(batch["text"]))["translation"].numpy())
        else:
            def one(batch):
                ids = self.function(source_ids=tf.constant(batch["ids"]))["token_ids"].numpy()
                return _cut(ids)
        return [row for rows in _in_flight(one, batches, self.workers) for row in rows]


class IdDecoderEngine:
    def __init__(self, run_dir, strategy, workers, threads, code=None):
        self.run_dir, self.strategy = run_dir, strategy
        self.workers, self.threads, self.code = workers, threads, code

    def setup(self):
        _use_code(self.code)
        _configure_tensorflow(self.threads, self.workers)
        from keras_transformer.generation import DecodingConfig, IdDecoder
        from keras_transformer.generation.translator import load_translator

        decoding = DecodingConfig("beam", beam_size=4) if self.strategy == BEAM else None
        translator = load_translator(self.run_dir)
        self.decoder = IdDecoder(translator.model, translator.max_length, decoding)

    def run(self, batches):
        def one(batch):
            return _cut(self.decoder(batch["ids"])[0])
        return [row for rows in _in_flight(one, batches, self.workers) for row in rows]


class CTranslate2Engine:
    def __init__(self, path, strategy, workers, threads, max_length):
        self.path, self.strategy = path, strategy
        self.workers, self.threads, self.max_length = workers, threads, max_length

    def setup(self):
        import ctranslate2

        from keras_transformer.export.ctranslate2 import translate_options
        from keras_transformer.generation import DecodingConfig

        self.translator = ctranslate2.Translator(
            self.path, device="cpu", inter_threads=self.workers, intra_threads=self.threads)
        decoding = DecodingConfig("beam", beam_size=4) if self.strategy == BEAM else DecodingConfig()
        self.options = translate_options(decoding, self.max_length)

    def run(self, batches):
        pending = [self.translator.translate_batch(batch["tokens"], asynchronous=True,
                                                   max_batch_size=0, **self.options)
                   for batch in batches]
        outputs = []
        for results in pending:
            outputs.extend(result.result().hypotheses[0] for result in results)
        return [tuple(row) for row in outputs]


def _cut(ids):
    """Token id rows up to (without) `[END]`, as tuples of ints."""
    rows = []
    for row in ids.tolist():
        rows.append(tuple(row[: row.index(3)] if 3 in row else row))
    return rows


def _worker(engine, connection):
    try:
        engine.setup()
        connection.send(("ready", None))
        while True:
            message = connection.recv()
            if message is None:
                return
            batches = message
            start = time.perf_counter()
            outputs = engine.run(batches)
            connection.send(("done", (time.perf_counter() - start, outputs)))
    except Exception as error:  # reported by the parent
        import traceback

        connection.send(("error", f"{type(error).__name__}: {error}\n{traceback.format_exc()}"))


class Process:
    def __init__(self, name, engine):
        self.name, self.engine = name, engine
        context = multiprocessing.get_context("spawn")
        self.connection, child = context.Pipe()
        self.process = context.Process(target=_worker, args=(engine, child), daemon=True)
        self.process.start()

    def wait_ready(self):
        kind, payload = self.connection.recv()
        if kind == "error":
            raise RuntimeError(f"{self.name}: {payload}")

    def run(self, batches):
        self.connection.send(batches)
        kind, payload = self.connection.recv()
        if kind == "error":
            raise RuntimeError(f"{self.name}: {payload}")
        return payload

    def close(self):
        try:
            self.connection.send(None)
        except OSError:
            pass
        self.process.join(timeout=10)


# ## The data and the exports

def _sentences(args, config):
    from keras_transformer.data import tokenizers as tk
    from keras_transformer.recipes import translation

    recipe_args = translation.add_arguments(argparse.ArgumentParser()).parse_args(
        (["--data", args.data] if args.data else []) + ["--seed", str(args.seed)])
    _, held_out = translation.split(translation.read_pairs(recipe_args), 0.1, args.seed)
    english = [source for source, _ in held_out[: args.sentences]]
    source = tk.load_tokenizer(os.path.join(args.run, "source_vocabulary"))
    vocabulary = source.get_vocabulary()
    max_length = config["max_length"]
    ids = [list(row)[:max_length] for row in _token_ids(source, english)]
    return english, ids, [[vocabulary[i] for i in row] for row in ids], max_length


def _token_ids(tokenizer, texts):
    import numpy as np

    output = tokenizer(texts)
    output = output.to_list() if hasattr(output, "to_list") else output
    return [np.asarray(row).tolist() for row in output]


def _batches(english, ids, tokens, size):
    import numpy as np

    batches = []
    for start in range(0, len(ids), size):
        rows = ids[start : start + size]
        width = max(1, max(len(r) for r in rows))
        padded = np.zeros((len(rows), width), "int32")
        for i, row in enumerate(rows):
            padded[i, : len(row)] = row
        batches.append({"ids": padded, "tokens": tokens[start : start + size],
                        "text": english[start : start + size]})
    return batches


def _saved_models(run, workdir, quantization=None):
    """The run's SavedModels, exported for greedy and for beam 4 (int8 weights
    with `quantization="int8"`: `keras_transformer.models.quantize`)."""
    from keras_transformer.export import export_saved_model
    from keras_transformer.generation import DecodingConfig
    from keras_transformer.generation.translator import load_translator

    paths = {}
    prefix = "savedmodel" if quantization is None else f"savedmodel-{quantization}"
    extra = {} if quantization is None else {"quantization": quantization}
    for name, decoding in ((GREEDY, DecodingConfig()),
                           (BEAM, DecodingConfig("beam", beam_size=4))):
        translator = load_translator(run, decoding=decoding, **extra)
        paths[f"{prefix}-{name}"] = export_saved_model(
            translator, os.path.join(workdir, f"{prefix}_{name}"))
    return paths, translator.model


def _saved_models_of(code, run, workdir, connection):
    """`_saved_models` by another checkout's keras_transformer (in its own process)."""
    _use_code(code)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    connection.send(_saved_models(run, workdir)[0])


def _export_before(args, workdir):
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe()
    process = context.Process(target=_saved_models_of,
                              args=(args.before, args.run, os.path.join(workdir, "before"), send))
    process.start()
    paths = receive.recv()
    process.join()
    return {f"{name}@before": path for name, path in paths.items()}


def _base_model_run(run, directory):
    """A run directory holding a base-size model with random weights and
    `run`'s vocabularies and `max_length` (speed only: its output is noise)."""
    import shutil

    import keras

    from keras_transformer.data import tokenizers as tk
    from keras_transformer.models import TransformerConfig, build_transformer

    with open(os.path.join(run, "config.json")) as handle:
        config = json.load(handle)
    sizes = {}
    for side in ("source", "target"):
        shutil.copytree(os.path.join(run, f"{side}_vocabulary"),
                        os.path.join(directory, f"{side}_vocabulary"))
        sizes[side] = tk.load_tokenizer(
            os.path.join(run, f"{side}_vocabulary")).vocabulary_size()
    keras.utils.set_random_seed(0)
    base = TransformerConfig(
        vocab_size=sizes["target"], source_vocab_size=sizes["source"],
        max_length=config["max_length"], embed_dim=512, num_heads=8, ffn_dim=2048,
        num_encoder_layers=6, num_decoder_layers=6, dropout=0.0)
    build_transformer(base).save(os.path.join(directory, "best.keras"))
    with open(os.path.join(directory, "config.json"), "w") as handle:
        json.dump(base.to_dict(), handle)
    return directory


def _export(args, workdir, max_length):
    """SavedModels (greedy, beam 4) and CTranslate2 directories (float32, int8)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from keras_transformer.data import tokenizers as tk
    from keras_transformer.export.ctranslate2 import to_ctranslate2

    paths, model = _saved_models(args.run, workdir)
    if args.int8:
        paths.update(_saved_models(args.run, workdir, "int8")[0])
    source = tk.load_tokenizer(os.path.join(args.run, "source_vocabulary"))
    target = tk.load_tokenizer(os.path.join(args.run, "target_vocabulary"))
    for quantization in ("float32", "int8"):
        paths[f"ct2-{quantization}"] = to_ctranslate2(
            model, source, target, os.path.join(workdir, f"ct2_{quantization}"),
            quantization=None if quantization == "float32" else quantization)
    return paths


def _engines(args, paths, max_length):
    layouts = [tuple(int(v) for v in layout.split(",")) for layout in args.layout]
    engines = {}
    for strategy in (GREEDY, BEAM):
        for workers, threads in layouts:
            suffix = f"{strategy} {workers}x{threads}"
            saved = paths[f"savedmodel-{strategy}"]
            engines[f"savedmodel-ids {suffix}"] = SavedModelEngine(
                saved, "translate_ids", workers, threads)
            engines[f"savedmodel-text {suffix}"] = SavedModelEngine(
                saved, "serving_default", workers, threads)
            engines[f"iddecoder {suffix}"] = IdDecoderEngine(args.run, strategy, workers, threads)
            if f"savedmodel-int8-{strategy}" in paths:
                engines[f"savedmodel-int8-ids {suffix}"] = SavedModelEngine(
                    paths[f"savedmodel-int8-{strategy}"], "translate_ids", workers, threads)
        for quantization, workers, threads in (("float32", 1, 2), ("float32", 2, 1),
                                               ("int8", 2, 1)):
            engines[f"ct2-{quantization} {strategy} {workers}x{threads}"] = CTranslate2Engine(
                paths[f"ct2-{quantization}"], strategy, workers, threads, max_length)
    if args.before:  # the package's rows again, decoded by the other checkout
        for strategy in (GREEDY, BEAM):
            for workers, threads in layouts:
                suffix = f"{strategy} {workers}x{threads}"
                engines[f"savedmodel-ids@before {suffix}"] = SavedModelEngine(
                    paths[f"savedmodel-{strategy}@before"], "translate_ids", workers, threads)
                engines[f"iddecoder@before {suffix}"] = IdDecoderEngine(
                    args.run, strategy, workers, threads, code=args.before)
    if args.engines:
        engines = {name: engine for name, engine in engines.items()
                   if any(pattern in name for pattern in args.engines)}
    return engines


def _same(ours, theirs, vocabulary):
    """Fraction of rows where the package's ids spell CTranslate2's tokens."""
    equal = sum(tuple(vocabulary[i] for i in a) == tuple(b) for a, b in zip(ours, theirs))
    return equal / max(1, len(ours))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a translation run directory")
    parser.add_argument("--data", help="the run's --data (default: the built-in corpus)")
    parser.add_argument("--seed", type=int, default=0, help="the run's --seed (its split)")
    parser.add_argument("--sentences", type=int, default=2000)
    parser.add_argument("--latency-sentences", type=int, default=64,
                        help="sentences decoded one at a time for the batch-1 latency")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--layout", nargs="+", default=["1,2", "2,1"],
                        help="the package's WORKERS,THREADS layouts")
    parser.add_argument("--engines", nargs="*", help="substrings of the engine names to run")
    parser.add_argument("--before", metavar="CHECKOUT",
                        help="also run the package's rows with the keras_transformer of "
                             "another checkout (a before/after comparison in one run)")
    parser.add_argument("--int8", action=argparse.BooleanOptionalAction, default=True,
                        help="also run the package's int8 SavedModel "
                             "(keras_transformer.models.quantize)")
    parser.add_argument("--base-model", action="store_true",
                        help="decode a base-size model instead (d=512, 8 heads, FFN 2048, "
                             "6+6 blocks, random weights: for speed only) with the run's "
                             "vocabularies")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    if args.base_model:
        args.run = _base_model_run(args.run, tempfile.mkdtemp(prefix="decode_engines_base_"))

    with open(os.path.join(args.run, "config.json")) as handle:
        config = json.load(handle)
    english, ids, tokens, max_length = _sentences(args, config)
    from keras_transformer.data import tokenizers as tk

    target_vocabulary = tk.load_tokenizer(
        os.path.join(args.run, "target_vocabulary")).get_vocabulary()
    batches = _batches(english, ids, tokens, args.batch_size)
    singles = _batches(english, ids, tokens, 1)[: args.latency_sentences]
    workdir = tempfile.mkdtemp(prefix="decode_engines_")
    paths = _export(args, workdir, max_length)
    if args.before:
        paths.update(_export_before(args, workdir))
    engines = _engines(args, paths, max_length)

    print(f"CPU: {_cpu()}")
    print(f"model: {args.run} (max length {max_length}); {len(english)} held-out sentences "
          f"in batches of {args.batch_size}; {len(singles)} one at a time; "
          f"median of {args.rounds} alternating rounds")
    processes = {name: Process(name, engine) for name, engine in engines.items()}
    for process in processes.values():
        process.wait_ready()
    # Warm-up: every shape once (compilation is not timed).
    outputs = {name: process.run(batches)[1] for name, process in processes.items()}
    for process in processes.values():
        process.run(singles)
    times = {name: [] for name in processes}
    latency = {name: [] for name in processes}
    for _ in range(args.rounds):
        for name, process in processes.items():
            times[name].append(process.run(batches)[0])
        for name, process in processes.items():
            latency[name].append(process.run(singles)[0])
    for process in processes.values():
        process.close()

    rows = {}
    for name in processes:
        rate = len(english) / statistics.median(times[name])
        ms = 1000 * statistics.median(latency[name]) / max(1, len(singles))
        rows[name] = {"sentences_per_s": rate, "ms_per_sentence_batch1": ms}
    print()
    print(f"| engine | search | workers × threads | sentences/s (batch {args.batch_size}) "
          "| vs CTranslate2 float32 best | ms/sentence (batch 1) |")
    print("|---|---|---|---|---|---|")
    for strategy in (GREEDY, BEAM):
        best = max((row["sentences_per_s"] for name, row in rows.items()
                    if name.startswith("ct2-float32") and f" {strategy} " in name), default=None)
        for name, row in rows.items():
            engine, search, layout = name.split(" ")
            if search != strategy:
                continue
            ratio = f"{row['sentences_per_s'] / best:.2f}×" if best else "–"
            print(f"| {engine} | {search} | {layout.replace('x', ' × ')} "
                  f"| {row['sentences_per_s']:,.0f} | {ratio} "
                  f"| {row['ms_per_sentence_batch1']:.1f} |")
    reference = next((o for n, o in outputs.items() if n.startswith(f"ct2-float32 {GREEDY}")),
                     None)
    print()
    for name, rows_out in outputs.items():
        if reference is None or f" {GREEDY} " not in name or name.startswith("ct2"):
            continue
        if name.startswith("savedmodel-text"):
            continue
        share = _same(rows_out[:200], reference[:200], target_vocabulary)
        print(f"fidelity: {name} equals CTranslate2 float32 greedy on {share:.1%} of the "
              f"first {min(200, len(reference))} sentences")
    for strategy in (GREEDY, BEAM):  # int8 over float32, each engine's best layout
        def best(prefix):
            return max((row["sentences_per_s"] for name, row in rows.items()
                        if name.startswith(prefix + " ") and f" {strategy} " in name),
                       default=None)
        pairs = (("SavedModel", "savedmodel-int8-ids", "savedmodel-ids"),
                 ("CTranslate2", "ct2-int8", "ct2-float32"))
        ratios = [f"{label} {best(a) / best(b):.2f}×" for label, a, b in pairs
                  if best(a) and best(b)]
        if ratios:
            print(f"int8 over float32, {strategy}: {', '.join(ratios)}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"cpu": _cpu(), "rows": rows}, handle, indent=1)


if __name__ == "__main__":
    sys.exit(main())
