"""# Your own model, from the layers to a served SavedModel

The builders are a convenience; the product is the layers. Here we stack an
English → Spanish Transformer of our own from `PositionalEmbedding`,
`EncoderBlock` and `DecoderBlock` (names, depth, pre-LN, learned positions, an
untied output layer and one mixture-of-experts block, all our choice), train
it with `model.fit` on the package's built-in corpus for a minute, translate
with beam search through the key/value cache, and export it as a SavedModel
that serves text in, text out. Nothing here names a layer the package expects:
`Translator` reads the model's structure from its graph.

    python examples/custom_model.py            # about 2 minutes on 2 CPU cores (1 of training)
    python examples/custom_model.py --smoke    # seconds, for the tests
"""

import argparse
import os
import tempfile

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_transformer import DecoderBlock, EncoderBlock, PositionalEmbedding  # noqa: E402
from keras_transformer.data import generate_pairs, pipelines  # noqa: E402
from keras_transformer.data import tokenizers as tk  # noqa: E402
from keras_transformer.export import export_saved_model  # noqa: E402
from keras_transformer.generation import DecodingConfig, Translator  # noqa: E402
from keras_transformer.training import (  # noqa: E402
    MaskedSparseCategoricalCrossentropy,
    TimeBudget,
    transformer_optimizer,
)

MAX_LENGTH = 32


# ## The data
#
# Sentence pairs the package writes itself (numbers, counts, sums and dates in
# English and Spanish words), one WordPiece vocabulary per language, and
# bucketed `((source, [START] target), target [END])` batches: teacher forcing.
def make_data(pairs, seed):
    cut = int(len(pairs) * 0.9)
    train, held_out = pairs[:cut], pairs[cut:]
    size = 400 if len(pairs) < 2000 else 2000
    english = tk.train_wordpiece([en for en, _ in train], size)
    spanish = tk.train_wordpiece([es for _, es in train], size)
    dataset = pipelines.translation_dataset(train, english, spanish, max_length=MAX_LENGTH,
                                            tokens_per_batch=2048, shuffle_buffer=len(train),
                                            seed=seed)
    return dataset, held_out, english, spanish


# ## The model
#
# Stacked by hand. Pre-LN blocks need a final normalization after the last
# block of each stack; the decoder's third block is a sparse mixture of 4
# experts (2 per token). The padding masks travel implicitly from the
# embeddings to the blocks.
def build_model(source_vocab, target_vocab, dim=128, heads=4):
    english_ids = keras.Input((None,), dtype="int32", name="english_ids")
    spanish_ids = keras.Input((None,), dtype="int32", name="spanish_ids")

    x = PositionalEmbedding(source_vocab, MAX_LENGTH, dim, positions="learned",
                            name="english_words")(english_ids)
    x = keras.layers.Dropout(0.1, name="english_dropout")(x)
    for i in range(2):
        x = EncoderBlock(heads, 4 * dim, norm_first=True, name=f"reader_{i}")(x)
    memory = keras.layers.LayerNormalization(name="reader_norm")(x)

    y = PositionalEmbedding(target_vocab, MAX_LENGTH, dim, positions="learned",
                            name="spanish_words")(spanish_ids)
    y = keras.layers.Dropout(0.1, name="spanish_dropout")(y)
    y = DecoderBlock(heads, 4 * dim, norm_first=True, name="writer_0")(y, memory)
    y = DecoderBlock(heads, 4 * dim, norm_first=True, name="writer_1")(y, memory)
    y = DecoderBlock(heads, 4 * dim, norm_first=True, name="writer_moe",
                     moe={"num_experts": 4, "top_k": 2})(y, memory)
    y = keras.layers.LayerNormalization(name="writer_norm")(y)
    logits = keras.layers.Dense(target_vocab, name="next_spanish_word")(y)
    return keras.Model([english_ids, spanish_ids], logits, name="my_translator")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0].lstrip("# "))
    parser.add_argument("--minutes", type=float, default=1.0, help="training budget")
    parser.add_argument("--export-dir", default=os.path.join(tempfile.gettempdir(),
                                                             "keras_transformer_custom"),
                        help="the SavedModel goes to <this>/<next version>/")
    parser.add_argument("--smoke", action="store_true", help="a tiny run, for the tests")
    parser.add_argument("--seed", type=int, default=0, help="seed of data and weights")
    args = parser.parse_args(argv)
    keras.utils.set_random_seed(args.seed)

    pairs = generate_pairs(600 if args.smoke else 20000, seed=args.seed)
    dataset, held_out, english, spanish = make_data(pairs, args.seed)
    dim = 32 if args.smoke else 128
    model = build_model(english.vocabulary_size(), spanish.vocabulary_size(), dim=dim)

    # ## Training
    #
    # Label-smoothed cross-entropy that ignores padding, and the paper's
    # warm-up schedule; `fit` stops at the time budget (or after 2 epochs in
    # the smoke setting).
    model.compile(optimizer=transformer_optimizer(dim, warmup_steps=400, scale=0.7),
                  loss=MaskedSparseCategoricalCrossentropy(label_smoothing=0.1))
    history = model.fit(dataset, epochs=2 if args.smoke else 100, verbose=2,
                        callbacks=[TimeBudget(args.minutes)])

    # ## Beam search through the cache
    #
    # `Translator` finds the embeddings, blocks, norms and output layer in the
    # model's graph and decodes through each block's key/value cache.
    beam = DecodingConfig("beam", beam_size=4, length_penalty=0.6)
    translator = Translator(model, english, spanish, max_length=MAX_LENGTH, decoding=beam)
    sentences = [en for en, _ in held_out[:4]]
    translations = translator.translate(tf.constant(sentences))["translation"].numpy()
    for (en, es), out in zip(held_out, translations):
        print(f"  {en}\n    → {out.decode('utf-8')}\n    (reference: {es})")

    # ## Export and serve
    #
    # The SavedModel holds the tokenizers, the cached beam search and the
    # detokenizer; loading it needs TensorFlow and tensorflow-text only.
    # `keras-transformer serve <export-dir>` answers TF Serving's REST API
    # with it.
    path = export_saved_model(translator, args.export_dir)
    served = tf.saved_model.load(path).signatures["serving_default"]
    through_export = served(text=tf.constant(sentences))["translation"].numpy()
    print(f"\nExported to {path}; the SavedModel translates the same: "
          f"{through_export.tolist() == translations.tolist()}")
    return {"loss": history.history["loss"], "export_path": path,
            "translations": [t.decode("utf-8") for t in translations],
            "served": [t.decode("utf-8") for t in through_export]}


if __name__ == "__main__":
    main()
