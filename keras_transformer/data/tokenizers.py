"""Subword tokenizers: WordPiece (the default) and byte-level BPE, from keras-hub.

Both reserve the same first ids: `[PAD]`=0, `[UNK]`=1, `[START]`=2, `[END]`=3.
Vocabularies are trained from a corpus, saved beside a model as plain files,
and reloaded. The tokenizers are keras-hub layers, so they run inside
`tf.data` pipelines and SavedModels.

- WordPiece (`train_wordpiece`): lowercased, accents kept (ñ, á, ü, ¿, ¡);
  punctuation split off. `decode` joins the pieces and puts punctuation back
  against its word, so Spanish text round-trips up to case.
- BPE (`train_bpe`): byte-level, trained with the `tokenizers` package (a
  keras-hub dependency) and served by keras-hub's `BytePairTokenizer`;
  round-trips any text exactly.
"""

import json
import os
import re

import numpy as np
import tensorflow as tf

from keras_transformer._optional import require
from keras_transformer.data.special_tokens import (  # noqa: F401 (re-exported)
    END_ID,
    PAD_ID,
    RESERVED_TOKENS,
    START_ID,
    UNK_ID,
)



def _keras_hub():
    # Checked on first use, so that importing this module never fails.
    return require("keras_hub", "data", "The tokenizers")


# "¿ dónde está ?" → "¿dónde está?"
_SPACE_BEFORE = re.compile(r" ([.,;:!?)\]}»%])")
_SPACE_AFTER = re.compile(r"([¿¡(\[{«]) ")


def train_wordpiece(texts, vocabulary_size, lowercase=True):
    """Trains a WordPiece vocabulary on `texts` (strings) and returns the tokenizer."""
    # A dataset, not a list: keras-hub reads a list of strings as file names.
    vocabulary = _keras_hub().tokenizers.compute_word_piece_vocabulary(
        tf.data.Dataset.from_tensor_slices(list(texts)).batch(1024),
        vocabulary_size,
        lowercase=lowercase,
        strip_accents=False,
        reserved_tokens=list(RESERVED_TOKENS),
    )
    return wordpiece_tokenizer(vocabulary, lowercase=lowercase)


def wordpiece_tokenizer(vocabulary, lowercase=True):
    """A keras-hub `WordPieceTokenizer` over `vocabulary` (a list or a file)."""
    return _keras_hub().tokenizers.WordPieceTokenizer(
        vocabulary=vocabulary, lowercase=lowercase, strip_accents=False, oov_token="[UNK]"
    )


def train_bpe(texts, vocabulary_size):
    """Trains a byte-level BPE vocabulary on `texts` and returns the tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    trainer = trainers.BpeTrainer(
        vocab_size=vocabulary_size,
        special_tokens=list(RESERVED_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    model = Tokenizer(models.BPE())
    model.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    model.train_from_iterator(list(texts), trainer)
    state = json.loads(model.to_str())["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in state["merges"]]
    return bpe_tokenizer(state["vocab"], merges)


def bpe_tokenizer(vocabulary, merges):
    """A keras-hub `BytePairTokenizer` (vocabulary dict or file, merges list or file)."""
    return _keras_hub().tokenizers.BytePairTokenizer(
        vocabulary=vocabulary, merges=merges, unsplittable_tokens=list(RESERVED_TOKENS)
    )


def decode(tokenizer, ids):
    """Token ids `(B, T)` → list of strings, without reserved tokens.

    Stops each row at its first `[END]`. For WordPiece, punctuation goes back
    against its word: `"¿ dónde está ?"` → `"¿dónde está?"`.
    """
    texts = []
    for row in np.asarray(ids):
        row = [int(i) for i in row]
        if END_ID in row:
            row = row[: row.index(END_ID)]
        row = [i for i in row if i >= len(RESERVED_TOKENS)]
        text = tokenizer.detokenize(np.array(row, "int32")) if row else ""
        text = text.numpy().decode("utf-8") if hasattr(text, "numpy") else str(text)
        if isinstance(tokenizer, _keras_hub().tokenizers.WordPieceTokenizer):
            text = _SPACE_AFTER.sub(r"\1", _SPACE_BEFORE.sub(r"\1", text))
        texts.append(text)
    return texts


def is_preset_tokenizer(tokenizer):
    """Whether `tokenizer` is a keras-hub model's tokenizer (GPT-2's, Llama's,
    ...), which `save_tokenizer` saves in keras-hub's preset layout."""
    keras_hub = _keras_hub()
    plain = (keras_hub.tokenizers.BytePairTokenizer, keras_hub.tokenizers.WordPieceTokenizer)
    return type(tokenizer) not in plain and callable(getattr(tokenizer, "save_assets", None))


_is_preset_tokenizer = is_preset_tokenizer  # the former private name


def character_tokenizer(vocabulary_size=128):
    """keras-hub's `UnicodeCodepointTokenizer` as the character-level LM reads
    text: one id per code point, case kept, ids at or over
    `vocabulary_size - 1` mapped to that last id (the replacement)."""
    keras_hub = _keras_hub()
    return keras_hub.tokenizers.UnicodeCodepointTokenizer(
        vocabulary_size=vocabulary_size, replacement_char=vocabulary_size - 1,
        lowercase=False,  # keras-hub lowercases by default; case is part of the task
    )


def ready_for_graphs(tokenizer):
    """`tokenizer`, with fresh TensorFlow resources, for graphs traced next.

    keras-hub 0.32's `SentencePieceTokenizer` (Llama's, Mistral's, T5's)
    holds a tensorflow-text op whose resource belongs to the eager kernel
    that made it: `tf.random.set_seed` (which `keras.utils.set_random_seed`
    calls) clears TensorFlow's eager caches and with them that resource, and
    every graph traced afterwards fails with "Resource ... SentencepieceOp
    ... does not exist". `Translator` and `TextGenerator` call this before
    they trace: the op is made again, now, so that their graphs (and the
    SavedModel) read a live resource. Other tokenizers are returned as they
    are.
    """
    initialize = getattr(tokenizer, "_maybe_initialized_tf", None)
    if callable(initialize) and getattr(tokenizer, "proto", None) is not None:
        tokenizer._sentence_piece = None
        with tf.init_scope():
            initialize()
    return tokenizer


def save_tokenizer(tokenizer, directory):
    """Writes the tokenizer's files into `directory` (created if needed).

    The package's WordPiece and BPE vocabularies as plain files; a keras-hub
    model's tokenizer (GPT-2's byte-level BPE, Llama's SentencePiece) in
    keras-hub's preset layout (`tokenizer.json` and `assets/`); keras-hub's
    `UnicodeCodepointTokenizer` as its options.
    """
    os.makedirs(directory, exist_ok=True)
    keras_hub = _keras_hub()
    if isinstance(tokenizer, keras_hub.tokenizers.UnicodeCodepointTokenizer):
        options = {key: tokenizer.get_config()[key] for key in
                   ("vocabulary_size", "lowercase", "replacement_char", "normalization_form",
                    "errors", "input_encoding", "output_encoding", "sequence_length")}
        with open(os.path.join(directory, "tokenizer.json"), "w", encoding="utf-8") as f:
            json.dump({"type": "codepoint", **options}, f)
        return
    if is_preset_tokenizer(tokenizer):
        tokenizer.save_to_preset(directory)
        return
    if isinstance(tokenizer, keras_hub.tokenizers.BytePairTokenizer):
        with open(os.path.join(directory, "vocabulary.json"), "w", encoding="utf-8") as f:
            json.dump(dict(tokenizer.vocabulary), f, ensure_ascii=False)
        with open(os.path.join(directory, "merges.txt"), "w", encoding="utf-8") as f:
            f.write("\n".join(tokenizer.merges))
    else:
        with open(os.path.join(directory, "vocabulary.txt"), "w", encoding="utf-8") as f:
            f.write("\n".join(tokenizer.get_vocabulary()))
        with open(os.path.join(directory, "tokenizer.json"), "w", encoding="utf-8") as f:
            json.dump({"type": "wordpiece", "lowercase": tokenizer.lowercase}, f)


def load_tokenizer(directory):
    """Reads a tokenizer written by `save_tokenizer`."""
    options_file = os.path.join(directory, "tokenizer.json")
    if os.path.exists(options_file):
        with open(options_file, encoding="utf-8") as f:
            options = json.load(f)
        if "class_name" in options:  # keras-hub's preset layout
            import keras

            _keras_hub()  # registers keras-hub's classes
            tokenizer = keras.saving.deserialize_keras_object(options)
            tokenizer.load_preset_assets(directory)
            return tokenizer
        if options.get("type") == "codepoint":
            options.pop("type")
            return _keras_hub().tokenizers.UnicodeCodepointTokenizer(**options)
    bpe_vocabulary = os.path.join(directory, "vocabulary.json")
    if os.path.exists(bpe_vocabulary):
        with open(bpe_vocabulary, encoding="utf-8") as f:
            vocabulary = json.load(f)
        with open(os.path.join(directory, "merges.txt"), encoding="utf-8") as f:
            merges = f.read().split("\n")
        return bpe_tokenizer(vocabulary, merges)
    path = os.path.join(directory, "vocabulary.txt")
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"No tokenizer in {directory!r}: expected vocabulary.txt (WordPiece) or "
            "vocabulary.json and merges.txt (BPE), as written by save_tokenizer."
        )
    with open(path, encoding="utf-8") as f:
        vocabulary = f.read().split("\n")
    with open(os.path.join(directory, "tokenizer.json"), encoding="utf-8") as f:
        options = json.load(f)
    return wordpiece_tokenizer(vocabulary, lowercase=options["lowercase"])
