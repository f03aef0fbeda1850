"""# English → Spanish translation with keras_transformer

From raw sentence pairs to a trained encoder–decoder Transformer:
WordPiece vocabularies trained on the corpus, a tf.data pipeline with teacher
forcing and length bucketing, the model from `build_transformer`, label-smoothed
cross-entropy that ignores padding, the paper's warm-up schedule, and
`model.fit` with validation, a best checkpoint and `BackupAndRestore` (a killed
run started again resumes from its last epoch).

By default it trains on the built-in corpus (numbers, counts, sums and dates
written out in words, made by the package: no download) and reports exact-match
accuracy of greedy translations of held-out sentences. `--data` takes the
Anki/Tatoeba `spa-eng.zip` archive (or its `spa.txt`, or any
`english<TAB>spanish` file) instead.

    python examples/train_translation.py                    # built-in corpus, ~5 minutes
    python examples/train_translation.py --smoke            # seconds, for the tests
    python examples/train_translation.py --data spa-eng.zip --minutes 20
"""

import argparse
import io
import json
import os
import time
import zipfile

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_transformer.data import generate_pairs, pipelines  # noqa: E402
from keras_transformer.data import tokenizers as tk  # noqa: E402
from keras_transformer.generation import greedy_translate  # noqa: E402
from keras_transformer.models import TransformerConfig, build_transformer  # noqa: E402
from keras_transformer.training import (  # noqa: E402
    MaskedAccuracy,
    MaskedSparseCategoricalCrossentropy,
    TimeBudget,
    transformer_optimizer,
)


# ## The sentence pairs
#
# The built-in corpus is deterministic for a seed. A local file may be the
# zip archive of the Keras/TensorFlow examples (`spa-eng/spa.txt` inside) or a
# text file with one `English<TAB>Spanish` pair a line (extra columns ignored).
def read_pairs(path):
    if path.endswith(".zip"):
        with zipfile.ZipFile(path) as archive:
            name = next(n for n in archive.namelist() if n.endswith("spa.txt"))
            text = io.TextIOWrapper(archive.open(name), encoding="utf-8").read()
    else:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    pairs = []
    for line in text.splitlines():
        columns = line.split("\t")
        if len(columns) >= 2 and columns[0] and columns[1]:
            pairs.append((columns[0], columns[1]))
    return pairs


def split(pairs, validation_fraction, seed):
    order = np.random.default_rng(seed).permutation(len(pairs))
    cut = int(len(pairs) * (1 - validation_fraction))
    return [pairs[i] for i in order[:cut]], [pairs[i] for i in order[cut:]]


def exact_match(model, target_tokenizer, source_tokenizer, pairs, max_length):
    """Share of `pairs` whose greedy translation equals the reference (case-blind)."""
    source_ids = padded_source_ids(source_tokenizer, [en for en, _ in pairs], max_length)
    generated = greedy_translate(model, source_ids, max_length)
    hypotheses = tk.decode(target_tokenizer, generated)
    references = [es.lower() for _, es in pairs]
    return float(np.mean([h == r for h, r in zip(hypotheses, references)])), hypotheses


def padded_source_ids(tokenizer, texts, max_length):
    rows = [np.asarray(tokenizer(text)).tolist()[:max_length] for text in texts]
    width = max(len(row) for row in rows)
    return np.array([row + [0] * (width - len(row)) for row in rows], "int32")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="spa-eng.zip, spa.txt or an english<TAB>spanish file")
    parser.add_argument("--output-dir", default="runs/translation",
                        help="where the model, vocabularies and backups go")
    parser.add_argument("--minutes", type=float, default=None, help="wall-clock training budget")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--pairs", type=int, default=30000, help="built-in corpus size")
    parser.add_argument("--vocabulary-size", type=int, default=2000)
    parser.add_argument("--jit-compile", action="store_true",
                        help="compile the training step with XLA (one compilation per "
                             "bucket shape: slow to start on CPU)")
    parser.add_argument("--smoke", action="store_true", help="a tiny run for the tests")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.smoke:
        args.pairs, args.epochs, args.vocabulary_size = 600, 2, 400
    keras.utils.set_random_seed(args.seed)
    os.makedirs(args.output_dir, exist_ok=True)

    pairs = read_pairs(args.data) if args.data else generate_pairs(args.pairs, seed=args.seed)
    train_pairs, val_pairs = split(pairs, 0.1, args.seed)
    print(f"{len(train_pairs):,} training and {len(val_pairs):,} validation pairs")

    # ## Subword vocabularies
    #
    # One WordPiece vocabulary per language, trained on the training split
    # only and saved beside the model.
    source_tokenizer = tk.train_wordpiece([en for en, _ in train_pairs], args.vocabulary_size)
    target_tokenizer = tk.train_wordpiece([es for _, es in train_pairs], args.vocabulary_size)
    tk.save_tokenizer(source_tokenizer, os.path.join(args.output_dir, "source_vocabulary"))
    tk.save_tokenizer(target_tokenizer, os.path.join(args.output_dir, "target_vocabulary"))
    print(f"vocabularies: {source_tokenizer.vocabulary_size()} English, "
          f"{target_tokenizer.vocabulary_size()} Spanish word pieces")

    # ## Input pipelines
    #
    # `((source_ids, [START] y), y [END])` batches, bucketed by length with a
    # budget of ~2,000 tokens a batch, so that little of each batch is padding.
    max_length = 48
    common = dict(max_length=max_length, tokens_per_batch=2048)
    train = pipelines.translation_dataset(
        train_pairs, source_tokenizer, target_tokenizer,
        shuffle_buffer=len(train_pairs), seed=args.seed, **common,
    )
    val = pipelines.translation_dataset(val_pairs, source_tokenizer, target_tokenizer, **common)

    # ## The model
    #
    # A small Transformer: 2+2 layers of width 128 (the paper's base is 6+6 of
    # 512), with the target embedding tied to the output projection.
    config = TransformerConfig(
        vocab_size=target_tokenizer.vocabulary_size(),
        source_vocab_size=source_tokenizer.vocabulary_size(),
        max_length=max_length, embed_dim=128, num_heads=4, ffn_dim=512,
        num_encoder_layers=2, num_decoder_layers=2, dropout=0.1,
    )
    with open(os.path.join(args.output_dir, "config.json"), "w") as handle:
        json.dump(config.to_dict(), handle, indent=2)
    model = build_transformer(config)
    model.compile(
        optimizer=transformer_optimizer(config.embed_dim, warmup_steps=1000, scale=2.0),
        loss=MaskedSparseCategoricalCrossentropy(label_smoothing=0.1),
        metrics=[MaskedAccuracy()],
        jit_compile=args.jit_compile,
    )
    model.summary(line_length=100)

    # ## Training
    #
    # The best checkpoint by validation loss is kept; `BackupAndRestore`
    # saves the training state each epoch and resumes from it when the same
    # command runs again after a crash.
    callbacks = [
        keras.callbacks.ModelCheckpoint(
            os.path.join(args.output_dir, "best.keras"), monitor="val_loss", save_best_only=True
        ),
        keras.callbacks.BackupAndRestore(os.path.join(args.output_dir, "backup")),
    ]
    if args.minutes:
        callbacks.append(TimeBudget(args.minutes))
    started = time.time()
    # The pipeline shuffles itself (`shuffle=False` only tells Keras so).
    history = model.fit(train, validation_data=val, epochs=args.epochs, callbacks=callbacks,
                        shuffle=False, verbose=2)
    seconds = time.time() - started

    # ## Translating held-out sentences
    #
    # Greedy decoding with the best checkpoint, compared word for word with
    # the references (the WordPiece vocabulary is lowercased).
    best = keras.saving.load_model(os.path.join(args.output_dir, "best.keras"))
    sample = val_pairs[: 16 if args.smoke else 500]
    accuracy, hypotheses = exact_match(best, target_tokenizer, source_tokenizer, sample,
                                       max_length)
    print(f"\nTrained for {seconds:.0f} s; validation loss {min(history.history['val_loss']):.3f}")
    print(f"Exact match on {len(sample)} held-out sentences (greedy): {accuracy:.1%}\n")
    for (english, spanish), hypothesis in list(zip(sample, hypotheses))[:6]:
        print(f"  {english}\n    → {hypothesis}\n    (reference: {spanish})")
    return {"history": history.history, "exact_match": accuracy, "seconds": seconds}


if __name__ == "__main__":
    main()
