"""BLEU on spa-eng: our recipe against the keras-hub example, at equal wall-clock budget.

The reference is the recipe of keras.io's "English-to-Spanish translation with
KerasHub": lowercased text, WordPiece vocabularies of 15,000, sequences packed
to 40 tokens, batches of 64, `TokenAndPositionEmbedding` + one
`TransformerEncoder` + one `TransformerDecoder` (d=256, FFN 2048, 8 heads),
dropout 0.5 before a softmax layer, RMSprop, greedy decoding.

Ours is `keras_transformer.recipes.translation`'s setup: WordPiece
vocabularies (`--vocabulary-size`), batches bucketed by length (~2,048
tokens), 2+2 layers of width 128, label smoothing 0.1, the warm-up schedule,
and beam search (4, α=0.6) through the exported `Translator`.

Both train on the same 70 % of the shuffled pairs for `--minutes` each
(wall-clock, counted from the start of `fit`), with the keras-io example's
split (15 % validation, 15 % test); both are scored by sacrebleu (BLEU and
chrF, lowercased) on the same `--test-sentences` test pairs. Run:

    python benchmarks/translation_quality.py --data ../shared/data/spa-eng.zip --minutes 20
"""

import argparse
import os
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import keras_hub  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_transformer.data import datasets, pipelines  # noqa: E402
from keras_transformer.data import tokenizers as tk  # noqa: E402
from keras_transformer.evaluation import quality as evaluation  # noqa: E402
from keras_transformer.generation import Translator, greedy_translate  # noqa: E402
from keras_transformer.models import TransformerConfig, build_transformer  # noqa: E402
from keras_transformer.training import (  # noqa: E402
    MaskedAccuracy,
    MaskedSparseCategoricalCrossentropy,
    TimeBudget,
    transformer_optimizer,
)

RESERVED = ["[PAD]", "[UNK]", "[START]", "[END]"]


def keras_hub_recipe(train_pairs, minutes):
    """The keras.io KerasHub example, as written there (one epoch there; a clock here)."""
    length, batch = 40, 64
    train_pairs = [(en.lower(), es.lower()) for en, es in train_pairs]

    def vocabulary(texts):
        data = tf.data.Dataset.from_tensor_slices(texts).batch(1000)
        return keras_hub.tokenizers.compute_word_piece_vocabulary(
            data, vocabulary_size=15000, reserved_tokens=RESERVED)

    eng_tokenizer = keras_hub.tokenizers.WordPieceTokenizer(
        vocabulary=vocabulary([en for en, _ in train_pairs]), lowercase=False)
    spa_tokenizer = keras_hub.tokenizers.WordPieceTokenizer(
        vocabulary=vocabulary([es for _, es in train_pairs]), lowercase=False)

    def preprocess(eng, spa):
        eng = eng_tokenizer(eng)
        spa = spa_tokenizer(spa)
        eng = keras_hub.layers.StartEndPacker(
            sequence_length=length, pad_value=eng_tokenizer.token_to_id("[PAD]"))(eng)
        spa = keras_hub.layers.StartEndPacker(
            sequence_length=length + 1, start_value=spa_tokenizer.token_to_id("[START]"),
            end_value=spa_tokenizer.token_to_id("[END]"),
            pad_value=spa_tokenizer.token_to_id("[PAD]"))(spa)
        return ({"encoder_inputs": eng, "decoder_inputs": spa[:, :-1]}, spa[:, 1:])

    eng_texts, spa_texts = zip(*train_pairs)
    dataset = tf.data.Dataset.from_tensor_slices((list(eng_texts), list(spa_texts)))
    dataset = dataset.batch(batch).map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.shuffle(2048).prefetch(16).cache()

    eng_vocab, spa_vocab = eng_tokenizer.vocabulary_size(), spa_tokenizer.vocabulary_size()
    encoder_inputs = keras.Input(shape=(None,), dtype="int64", name="encoder_inputs")
    x = keras_hub.layers.TokenAndPositionEmbedding(
        vocabulary_size=eng_vocab, sequence_length=length, embedding_dim=256)(encoder_inputs)
    encoder_outputs = keras_hub.layers.TransformerEncoder(
        intermediate_dim=2048, num_heads=8)(inputs=x)
    encoder = keras.Model(encoder_inputs, encoder_outputs)
    decoder_inputs = keras.Input(shape=(None,), dtype="int64", name="decoder_inputs")
    encoded_seq_inputs = keras.Input(shape=(None, 256), name="decoder_state_inputs")
    x = keras_hub.layers.TokenAndPositionEmbedding(
        vocabulary_size=spa_vocab, sequence_length=length, embedding_dim=256)(decoder_inputs)
    x = keras_hub.layers.TransformerDecoder(intermediate_dim=2048, num_heads=8)(
        decoder_sequence=x, encoder_sequence=encoded_seq_inputs)
    x = keras.layers.Dropout(0.5)(x)
    decoder_outputs = keras.layers.Dense(spa_vocab, activation="softmax")(x)
    decoder = keras.Model([decoder_inputs, encoded_seq_inputs], decoder_outputs)
    outputs = decoder([decoder_inputs, encoder(encoder_inputs)])
    model = keras.Model([encoder_inputs, decoder_inputs], outputs, name="transformer")
    model.compile("rmsprop", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    started = time.time()
    model.fit(dataset, epochs=100, callbacks=[TimeBudget(minutes)], verbose=2)
    seconds = time.time() - started

    def translate(texts):
        source = eng_tokenizer(tf.constant([t.lower() for t in texts]))
        source = keras_hub.layers.StartEndPacker(sequence_length=length, pad_value=0)(source)
        ids = greedy_translate(model, np.asarray(source), length)
        return tk.decode(spa_tokenizer, ids)

    return translate, seconds


def our_recipe(train_pairs, val_pairs, minutes, vocabulary_size):
    source_tokenizer = tk.train_wordpiece([en for en, _ in train_pairs], vocabulary_size)
    target_tokenizer = tk.train_wordpiece([es for _, es in train_pairs], vocabulary_size)
    max_length = 48
    common = dict(max_length=max_length, tokens_per_batch=2048)
    train = pipelines.translation_dataset(train_pairs, source_tokenizer, target_tokenizer,
                                          shuffle_buffer=len(train_pairs), seed=0, **common)
    val = pipelines.translation_dataset(val_pairs[:2000], source_tokenizer, target_tokenizer,
                                        **common)
    config = TransformerConfig(
        vocab_size=target_tokenizer.vocabulary_size(),
        source_vocab_size=source_tokenizer.vocabulary_size(), max_length=max_length,
        embed_dim=128, num_heads=4, ffn_dim=512, num_encoder_layers=2, num_decoder_layers=2,
        dropout=0.1,
    )
    model = build_transformer(config)
    model.compile(optimizer=transformer_optimizer(config.embed_dim, warmup_steps=1000, scale=2.0),
                  loss=MaskedSparseCategoricalCrossentropy(label_smoothing=0.1),
                  metrics=[MaskedAccuracy()])
    started = time.time()
    model.fit(train, validation_data=val, epochs=100, callbacks=[TimeBudget(minutes)],
              shuffle=False, verbose=2)
    seconds = time.time() - started
    translator = Translator(model, source_tokenizer, target_tokenizer, max_length=max_length,
                            beam_size=4)

    def translate(texts):
        out = translator.translate(tf.constant(texts))["translation"].numpy()
        return [t.decode("utf-8") for t in out]

    return translate, seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="spa-eng.zip (or spa.txt)")
    parser.add_argument("--minutes", type=float, default=20.0, help="training budget per model")
    parser.add_argument("--test-sentences", type=int, default=1000)
    parser.add_argument("--vocabulary-size", type=int, default=8000)
    parser.add_argument("--only", choices=["ours", "keras-hub"], default=None)
    args = parser.parse_args(argv)

    pairs = datasets.read_spa_eng(args.data)
    order = np.random.default_rng(0).permutation(len(pairs))
    pairs = [pairs[i] for i in order]
    n_val = int(0.15 * len(pairs))
    n_train = len(pairs) - 2 * n_val
    train_pairs = pairs[:n_train]
    val_pairs = pairs[n_train : n_train + n_val]
    test_pairs = pairs[n_train + n_val :][: args.test_sentences]
    sources = [en for en, _ in test_pairs]
    references = [es for _, es in test_pairs]
    print(f"{len(train_pairs):,} training pairs; scoring {len(test_pairs):,} test pairs")

    rows = []
    for name in ("keras-hub", "ours"):
        if args.only and args.only != name:
            continue
        keras.utils.set_random_seed(0)
        if name == "ours":
            translate, seconds = our_recipe(train_pairs, val_pairs, args.minutes,
                                            args.vocabulary_size)
        else:
            translate, seconds = keras_hub_recipe(train_pairs, args.minutes)
        started = time.time()
        hypotheses = evaluation.translate_all(translate, sources, 64)
        decode_seconds = time.time() - started
        scores = evaluation.score(hypotheses, references, lowercase=True)
        rows.append((name, seconds, decode_seconds, scores))
        print(f"\n{name}: BLEU {scores['bleu']:.2f}, chrF {scores['chrf']:.2f} "
              f"(trained {seconds:.0f} s, translated in {decode_seconds:.0f} s)", flush=True)
        for source, hypothesis, reference in list(zip(sources, hypotheses, references))[:3]:
            print(f"  {source} → {hypothesis}   (reference: {reference})")

    print("\n| recipe | training (s) | BLEU | chrF | decoding the test set (s) |")
    print("|---|---|---|---|---|")
    for name, seconds, decode_seconds, scores in rows:
        print(f"| {name} | {seconds:.0f} | {scores['bleu']:.2f} | {scores['chrf']:.2f} | "
              f"{decode_seconds:.0f} |")


if __name__ == "__main__":
    main()
