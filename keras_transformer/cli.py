"""The `keras-transformer` command.

    keras-transformer train translation [options]   # encoder–decoder, English → Spanish
    keras-transformer train char-lm [options]       # character language model
    keras-transformer import PRESET --output-dir runs/NAME   # a keras-hub model → a run
    keras-transformer export RUN_DIR --name NAME     # → saved_models/NAME/<version>/
    keras-transformer export RUN_DIR --format ctranslate2 --name NAME_ct2   # the engine's
    keras-transformer translate saved_models/NAME "text" ...   # or lines on stdin
    keras-transformer generate runs/NAME "prompt" ...          # a language model's text
    keras-transformer serve saved_models/NAME        # TF Serving's REST API on :8501
    keras-transformer evaluate saved_models/NAME test.tsv      # BLEU and chrF
    keras-transformer <command> --help              # every option, explained

Each subcommand is a thin layer over a function of the library, so that what
the command does, a script can do too.
"""

import argparse
import os
import sys


def _train_parser(subparsers):
    from keras_transformer.recipes import char_lm, translation

    train = subparsers.add_parser(
        "train", help="train a model (translation or character language model)",
        description="Train a model; `train <task> --help` lists the task's options.",
    )
    tasks = train.add_subparsers(dest="task", required=True, metavar="TASK")
    for name, recipe, summary in (
        ("translation", translation, "encoder–decoder translation (built-in corpus, "
                                     "spa-eng.zip, or a TFDS dataset)"),
        ("char-lm", char_lm, "decoder-only character language model (tiny-shakespeare)"),
    ):
        task = tasks.add_parser(
            name, help=summary, description=recipe.__doc__.split("\n\n")[0].lstrip("# "),
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        )
        recipe.add_arguments(task)
        task.set_defaults(run=recipe.run)


def _load_translate_function(model_path, decoding=None):
    """`list of str → list of str` for a SavedModel (base or version dir) or a run dir
    (`decoding`, a `DecodingConfig`, for a run dir; a SavedModel has its own)."""
    import tensorflow as tf

    from keras_transformer.generation.text_generator import is_language_model_run

    if is_language_model_run(model_path):  # an imported model or a char-lm run
        from keras_transformer.generation import DecodingConfig
        from keras_transformer.generation.text_generator import load_text_generator

        generator = load_text_generator(model_path,
                                        decoding=decoding or DecodingConfig("greedy"))
        return lambda texts: [t.decode("utf-8") for t in
                              generator.generate_text(tf.constant(texts))["text"].numpy()]
    if os.path.exists(os.path.join(model_path, "best.keras")):  # a translation run
        from keras_transformer.generation import load_translator

        translator = load_translator(model_path)
        return lambda texts: [t.decode("utf-8") for t in
                              translator.translate(tf.constant(texts))["translation"].numpy()]
    # The server module loads tensorflow-text, whose tokenizer ops the graph uses.
    from keras_transformer.export.server import is_model_version, latest_version, load_model

    if not is_model_version(model_path):
        model_path = os.path.join(model_path, latest_version(model_path))
    signature = load_model(model_path).signatures["serving_default"]
    # A translator takes `text` and answers `translation`; a text generator
    # takes `prompt` and answers `text`.
    ((input_name, _),) = signature.structured_input_signature[1].items()
    output = "translation" if "translation" in signature.structured_outputs else "text"
    return lambda texts: [t.decode("utf-8") for t in
                          signature(**{input_name: tf.constant(texts)})[output].numpy()]


def _export(args):
    from keras_transformer.export import export_ctranslate2, export_saved_model
    from keras_transformer.generation import DecodingConfig, load_translator
    from keras_transformer.generation.text_generator import (
        is_language_model_run,
        load_text_generator,
    )

    base_dir = os.path.join(args.saved_models, args.name)
    if is_language_model_run(args.run_dir):  # decoder-only: prompt in, text out
        if args.format == "ctranslate2":
            raise SystemExit("--format ctranslate2 exports translation runs only; "
                             f"{args.run_dir} is a language model.")
        args._decoding_default = DecodingConfig("greedy")
        generator = load_text_generator(args.run_dir, quantization=args.quantize,
                                        decoding=DecodingConfig.from_args(args))
        path = export_saved_model(generator, base_dir, version=args.version)
        print(f"Exported {args.run_dir} to {path} ({args.format}, prompt in, text out)")
        return path
    decoding = DecodingConfig.from_args(args)
    if args.format == "ctranslate2":  # CTranslate2 quantizes the float32 weights itself
        translator = load_translator(args.run_dir, decoding=decoding)
        path = export_ctranslate2(translator, base_dir, version=args.version,
                                  quantization=args.quantize)
    else:
        translator = load_translator(args.run_dir, quantization=args.quantize,
                                     decoding=decoding)
        path = export_saved_model(translator, base_dir, version=args.version)
    print(f"Exported {args.run_dir} to {path} ({args.format})")
    return path


def _import(args):
    from keras_transformer.models import import_preset

    path = import_preset(args.preset, args.output_dir, max_length=args.max_length)
    print(f"Imported {args.preset} to {path} (model.keras, tokenizer/, config.json)")
    return path


def _generate(args):
    from keras_transformer.generation import DecodingConfig

    generate = _load_translate_function(args.model, DecodingConfig.from_args(args))
    prompts = args.prompt or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    for start in range(0, len(prompts), args.batch_size):
        for text in generate(prompts[start : start + args.batch_size]):
            print(text, flush=True)
    return prompts


def _translate(args):
    translate = _load_translate_function(args.model)
    texts = args.text or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    for start in range(0, len(texts), args.batch_size):
        for text in translate(texts[start : start + args.batch_size]):
            print(text, flush=True)
    return texts


def _serve(args):
    from keras_transformer.export.server import serve

    return serve(args.model, host=args.host, port=args.port, batching=args.batching,
                 max_batch_size=args.max_batch_size,
                 batch_timeout_micros=args.batch_timeout_micros,
                 max_queued_instances=args.max_queued_instances,
                 max_connections=args.max_connections, max_body_bytes=args.max_body_bytes,
                 num_batch_threads=args.num_batch_threads,
                 intra_op_threads=args.intra_op_threads, inter_op_threads=args.inter_op_threads,
                 num_slots=args.slots, group_lengths=args.length_groups)


def _length_groups(text):
    """`--length-groups`: "auto", "none" (None) or comma-separated ints."""
    if text in ("auto", "none"):
        return None if text == "none" else text
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected 'auto', 'none' or comma-separated ints; received {text!r}") from None


def _evaluate(args):
    from keras_transformer.evaluation import quality as evaluation

    sources, references = evaluation.read_tsv(args.tsv)
    if args.limit:
        sources, references = sources[: args.limit], references[: args.limit]
    hypotheses = evaluation.translate_all(_load_translate_function(args.model), sources,
                                          args.batch_size)
    scores = evaluation.score(hypotheses, references, lowercase=args.lowercase)
    print(f"BLEU {scores['bleu']:.2f}  chrF {scores['chrf']:.2f}  on {scores['sentences']} "
          f"sentences ({scores['signature']})")
    return scores


def _serving_parsers(subparsers):
    from keras_transformer.generation.decoding import DecodingConfig

    defaults = argparse.ArgumentDefaultsHelpFormatter
    imports = subparsers.add_parser(
        "import", formatter_class=defaults,
        help="rebuild a keras-hub model (GPT-2, Llama, Mistral, Qwen2) from the layers into "
             "a run directory that export, generate and train char-lm --init-from read")
    imports.add_argument("preset", help="a keras-hub preset: a local directory written by "
                                        "save_to_preset, or a name / hf://... where the "
                                        "network allows")
    imports.add_argument("--output-dir", required=True, help="the run directory to write")
    imports.add_argument("--max-length", type=int, default=None,
                         help="positions the model accepts (default: GPT-2's table; "
                              "2048 for rotary models)")
    imports.set_defaults(run=_import)

    export = subparsers.add_parser(
        "export", formatter_class=defaults,
        help="export a trained or imported model as a SavedModel (text in, text out), or "
             "a translation model as a CTranslate2 directory")
    export.add_argument("run_dir", help="a run directory: a translation run (best.keras, "
                                        "config.json, vocabularies) as `train translation` "
                                        "writes it, or a language-model run (model.keras, "
                                        "tokenizer/) as `import` and `train char-lm` write "
                                        "it (greedy unless a decoding option is given)")
    export.add_argument("--name", default="translator", help="the model's name (directory)")
    export.add_argument("--saved-models", default="saved_models",
                        help="base directory; the export goes to <this>/<name>/<version>/")
    export.add_argument("--version", type=int, default=None,
                        help="version number (default: one more than the highest present)")
    export.add_argument("--format", choices=["saved_model", "ctranslate2"],
                        default="saved_model",
                        help="a SavedModel (TF Serving, any TensorFlow), or a CTranslate2 "
                             "model directory with the tokenizers (needs the ctranslate2 "
                             "extra; `translate`, `evaluate` and `serve` take both)")
    export.add_argument("--quantize", choices=["int8"], default=None,
                        help="int8 weights: in every projection and token table of the "
                             "SavedModel (keras_transformer.models.quantize), or "
                             "CTranslate2's int8")
    DecodingConfig.add_arguments(export, DecodingConfig("beam", beam_size=4))
    export.set_defaults(run=_export)

    translate = subparsers.add_parser(
        "translate", formatter_class=defaults,
        help="translate text given on the command line, or lines read from stdin (with a "
             "text generator's SavedModel: continue prompts)")
    translate.add_argument("model", help="saved_models/<name> (newest version), a version "
                                         "directory (SavedModel or CTranslate2), or a "
                                         "training run directory")
    translate.add_argument("text", nargs="*", help="sentences (default: read stdin)")
    translate.add_argument("--batch-size", type=int, default=64, help="sentences per batch")
    translate.set_defaults(run=_translate)

    generate = subparsers.add_parser(
        "generate", formatter_class=defaults,
        help="continue prompts given on the command line, or lines read from stdin, with a "
             "language model (a run directory or a text generator's SavedModel)")
    generate.add_argument("model", help="a language-model run directory (import, train "
                                        "char-lm), saved_models/<name> or a version directory")
    generate.add_argument("prompt", nargs="*", help="prompts (default: read stdin)")
    generate.add_argument("--batch-size", type=int, default=16, help="prompts per batch")
    DecodingConfig.add_arguments(generate, DecodingConfig("greedy"))
    generate.set_defaults(run=_generate)

    serve = subparsers.add_parser(
        "serve", formatter_class=defaults,
        help="serve a SavedModel (or CTranslate2 directory) over HTTP with TensorFlow "
             "Serving's REST predict API")
    serve.add_argument("model", help="saved_models/<name>; serves its newest version as <name>")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=int, default=8501, help="port (TF Serving's REST port)")
    serve.add_argument("--batching", action=argparse.BooleanOptionalAction, default=True,
                       help="run concurrent requests together in one model call")
    serve.add_argument("--max-batch-size", type=int, default=64,
                       help="the most instances one model call runs")
    serve.add_argument("--batch-timeout-micros", type=int, default=2000,
                       help="how long a request waits for others to join its batch")
    serve.add_argument("--max-queued-instances", type=int, default=2048,
                       help="instances waiting at most; beyond, requests get 503 with "
                            "Retry-After")
    serve.add_argument("--max-connections", type=int, default=1024,
                       help="open connections at most (also the listen backlog); beyond, "
                            "503 with Retry-After")
    serve.add_argument("--max-body-bytes", type=int, default=8 * 1024 * 1024,
                       help="the largest request body accepted (413 above)")
    serve.add_argument("--num-batch-threads", type=int, default=1,
                       help="batches run at once (TF Serving's num_batch_threads; a CTranslate2 "
                            "directory's inter_threads)")
    serve.add_argument("--intra-op-threads", type=int, default=None,
                       help="threads one TensorFlow operation may use (TF Serving's "
                            "--tensorflow_intra_op_parallelism; default: TensorFlow's, "
                            "all cores)")
    serve.add_argument("--inter-op-threads", type=int, default=None,
                       help="operations run at once (TF Serving's "
                            "--tensorflow_inter_op_parallelism; default: TensorFlow's)")
    serve.add_argument("--slots", type=int, default=16,
                       help="a text generator's sequences decoded together by continuous "
                            "batching (:generate, :generate_stream); 0: run :generate "
                            "through the exported whole search")
    serve.add_argument("--length-groups", type=_length_groups, default="auto",
                       help="continuous batching's length groups, each with --slots slots: "
                            "'auto' (requests of up to about half the model's positions "
                            "apart from the longer ones), 'none' (one group), or bounds in "
                            "positions, prompt plus max_new_tokens, such as '64,128'")
    serve.set_defaults(run=_serve)

    evaluate = subparsers.add_parser(
        "evaluate", formatter_class=defaults,
        help="BLEU and chrF (sacrebleu) of a model on a source<TAB>reference file")
    evaluate.add_argument("model", help="saved_models/<name>, a version directory, or a "
                                        "training run directory")
    evaluate.add_argument("tsv", help="one source<TAB>reference pair a line")
    evaluate.add_argument("--limit", type=int, default=None, help="score the first N only")
    evaluate.add_argument("--lowercase", action="store_true",
                          help="case-insensitive BLEU (for lowercasing vocabularies)")
    evaluate.add_argument("--batch-size", type=int, default=64, help="sentences per batch")
    evaluate.set_defaults(run=_evaluate)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="keras-transformer",
        description="Train, export, serve and evaluate Transformers built with keras_transformer.",
    )
    parser.add_argument("--verbose", action="store_true",
                        help="keep TensorFlow's start-up messages, Keras's warnings and the "
                             "full model summary")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _train_parser(subparsers)
    _serving_parsers(subparsers)
    return parser


def main(argv=None):
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    result = args.run(args)
    return 0 if result is not None else 1


if __name__ == "__main__":
    sys.exit(main())
