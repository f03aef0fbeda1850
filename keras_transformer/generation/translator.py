"""Text in, text out: tokenizers + cached search + detokenizer, as one `tf.Module`.

`Translator` is what the package exports (see `keras_transformer.export`)
and what it runs in process, so both give the same strings. All of it is
TensorFlow graph code: the tokenizers are keras-hub layers built on
tensorflow-text ops, and the search is one XLA-compiled `tf.while_loop`.

    translator = Translator(model, source_tokenizer, target_tokenizer, max_length=48)
    translator.translate(tf.constant(["Where is the child?"]))["translation"]

Inputs longer than `max_length` tokens are truncated to `max_length`
(documented, never an error); an empty or whitespace-only string (no source
token) translates to the empty string, with no token ids and a score of 0;
bytes that are not UTF-8 are replaced by U+FFFD; an empty batch gives empty
outputs.
"""

import tensorflow as tf

from keras_transformer import _deprecation
from keras_transformer._optional import require
from keras_transformer.data.special_tokens import DEFAULT_SPECIAL_IDS
from keras_transformer.data.tokenizers import ready_for_graphs
from keras_transformer.generation.core import SearchCore, SearchFront
from keras_transformer.generation.decoding import DecodingConfig
from keras_transformer.generation.steppers import model_variables

# "¿ dónde está ?" → "¿dónde está?" (the WordPiece detokenizer puts spaces
# around punctuation; tokenizers.decode does the same in Python).
_SPACE_BEFORE = r" ([.,;:!?)\]}»%])"
_SPACE_AFTER = r"([¿¡(\[{«]) "


def strip_special(ids, special_ids=None):
    """Ragged ids cut at each row's first end id, without the ids
    `special_ids.removed` (start, end, padding; the package's reserved ids by
    default)."""
    special = special_ids or DEFAULT_SPECIAL_IDS
    ids = tf.convert_to_tensor(ids, tf.int32)
    ended = tf.cumsum(tf.cast(ids == special.end, tf.int32), axis=1) > 0
    removed = tf.constant(special.removed, tf.int32)
    keep = ~ended & ~tf.reduce_any(ids[..., None] == removed, axis=-1)
    return tf.ragged.boolean_mask(ids, keep)


def tokenize_source(tokenizer, text, max_length, pad_id=0):
    """`(B,)` strings → `(B, max_length)` int32 ids (truncated, padded with
    `pad_id`), in graph ops.

    Bytes that are not UTF-8 become U+FFFD (the replacement character)
    instead of failing the batch.
    """
    text = tf.strings.unicode_transcode(text, "UTF-8", "UTF-8", errors="replace")
    ids = tokenizer(text)
    if isinstance(ids, list):  # keras-hub gives Python lists when run eagerly
        ids = tf.ragged.constant(ids, dtype=tf.int32, ragged_rank=1)
    if isinstance(ids, tf.RaggedTensor):
        ids = ids.to_tensor(shape=[None, max_length], default_value=tf.cast(pad_id, ids.dtype))
    return tf.cast(ids[:, :max_length], tf.int32)


def detokenize_target(tokenizer, ids, special_ids=None):
    """`(B, L)` ids → `(B,)` strings: special ids dropped, each row cut at
    its first end id (`strip_special`), WordPiece's spaces around punctuation
    removed."""
    text = tokenizer.detokenize(strip_special(ids, special_ids))
    # By class name, not `isinstance`: importing keras-hub here would run
    # inside the traced signature, where AutoGraph warns about the import.
    if any(cls.__name__ == "WordPieceTokenizer" for cls in type(tokenizer).__mro__):
        text = tf.strings.regex_replace(text, _SPACE_BEFORE, r"\1")
        text = tf.strings.regex_replace(text, _SPACE_AFTER, r"\1")
    return text


class Translator(SearchFront, tf.Module):
    """Translates batches of strings with an encoder–decoder model.

    Args:
        model: the encoder–decoder `keras.Model`: one from
            `build_transformer`, any functional model assembled from the
            package's layers (whatever its layer names), or a model that
            implements the cached-decoding protocol
            (`keras_transformer.models.cached_decoding`).
        source_tokenizer, target_tokenizer: keras-hub tokenizers (WordPiece
            or byte-level BPE, from `keras_transformer.data.tokenizers`).
        max_length: int, source tokens kept (longer inputs are truncated)
            and target tokens generated at most.
        source_length_bucket: int or None. A batch's sources are padded to
            its longest, rounded up to a multiple of this (at most
            `max_length`), so that the encoder and the cross-attention work
            on the tokens there are, and XLA compiles the search once per
            batch size and padded width (`max_length / source_length_bucket`
            widths at most). None: every batch is padded to `max_length`
            (one compilation per batch size).
        decoding: a `DecodingConfig` (greedy, beam search or sampling);
            default greedy.
        beam_size, alpha: the older way to ask for beam search (`beam_size
            > 1`) with GNMT's length penalty `alpha`; used when `decoding`
            is None.
        jit_compile: bool, compile the search with XLA.
        special_ids: a `SpecialIds`: the decoder's start id, the end id, the
            padding id sources are padded with, the ids never generated and
            those dropped from the text. Default: the model's
            (`TransformerModel.special_ids`), else the target tokenizer's
            (`special_ids_of`), else the package's reserved ids.

    Call `translate(text)` with `text` a `(B,)` `tf.string` tensor; it returns
    `{"translation": (B,) string, "token_ids": (B, max_length) int32,
    "scores": (B,) float32 log-probabilities}`. `translate_ids(source_ids)`
    is the token-level version. Sampling uses `decoding.seed`.
    """

    def __init__(self, model, source_tokenizer, target_tokenizer, *, max_length,
                 decoding=None, beam_size=None, alpha=None, jit_compile=True,
                 source_length_bucket=8, special_ids=None, name="translator"):
        super().__init__(name=name)
        if max_length < 1:
            raise ValueError(f"`max_length` must be >= 1. Received: {max_length}")
        if decoding is not None and (beam_size is not None or alpha is not None):
            raise ValueError("Pass either `decoding` or the older `beam_size`/`alpha`, not "
                             f"both. Received: decoding={decoding}, beam_size={beam_size}, "
                             f"alpha={alpha}")
        # The SavedModel tracks the model's variables, not the Keras model
        # object: saving a Keras model as a child would also trace its default
        # serving signature, which a subclassed model cannot always give.
        object.__setattr__(self, "model", model)
        self._model_variables = model_variables(model)
        self.source_tokenizer = ready_for_graphs(source_tokenizer)
        self.target_tokenizer = ready_for_graphs(target_tokenizer)
        self.max_length = int(max_length)
        if source_length_bucket is not None and source_length_bucket < 1:
            raise ValueError("`source_length_bucket` must be None or >= 1. Received: "
                             f"{source_length_bucket}")
        self.source_length_bucket = source_length_bucket
        decoding = decoding or DecodingConfig.from_legacy(beam_size=beam_size, alpha=alpha)
        self.core = SearchCore(model, max_length, decoding, kind="encoder_decoder",
                               special_ids=special_ids, fallback=target_tokenizer)
        self._search = tf.function(self._search_ids, jit_compile=jit_compile)
        require("keras_hub", "data", "Translator's tokenizers")

    def _search_ids(self, source_ids):
        # A method of the module (not the core's bound method), so that the
        # compiled function keeps the module alive while it runs.
        return self.core.search(source_ids)

    @property
    def beam_size(self):
        """Deprecated: the beam size (1 unless decoding by beam search); use `decoding`."""
        _deprecation.warn("Translator.beam_size", "Translator.decoding.beam_size")
        return self.decoding.beam_size if self.decoding.strategy == "beam" else 1

    @property
    def alpha(self):
        """Deprecated: the length penalty; use `decoding.length_penalty`."""
        _deprecation.warn("Translator.alpha", "Translator.decoding.length_penalty")
        return self.decoding.length_penalty

    def tokenize(self, text):
        """`(B,)` strings → `(B, max_length)` int32 source ids (truncated, padded).

        Bytes that are not UTF-8 become U+FFFD (the replacement character)
        instead of failing the batch.
        """
        return tokenize_source(self.source_tokenizer, text, self.max_length,
                               self.special_ids.pad)

    def detokenize(self, ids):
        """`(B, L)` target ids → `(B,)` strings (special ids dropped, cut at the end id)."""
        return detokenize_target(self.target_tokenizer, ids, self.special_ids)

    def serving_signatures(self):
        """The SavedModel signatures `export_saved_model` writes."""
        return {"serving_default": self.translate.get_concrete_function(),
                "translate_ids": self.translate_ids.get_concrete_function()}

    def asset_tokenizers(self):
        return {"source_": self.source_tokenizer, "target_": self.target_tokenizer}

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32, name="source_ids")])
    def translate_ids(self, source_ids):
        # Out-of-range ids raise on CPU but gather zeros silently on GPU: check.
        vocabulary = (getattr(self.stepper.decoder, "source_vocab_size", None)
                      or self.source_tokenizer.vocabulary_size())
        tf.debugging.assert_non_negative(source_ids, message="source_ids must be >= 0")
        tf.debugging.assert_less(source_ids, vocabulary, message=(
            f"source_ids must be < the source vocabulary size {vocabulary}"))
        source_ids = source_ids[:, : self.max_length]
        width = tf.shape(source_ids)[1]
        padded = self.max_length
        pad = self.special_ids.pad
        if self.source_length_bucket is not None:
            bucket = self.source_length_bucket
            # One past the last real token of any row: only padding is cut.
            ends = tf.where(source_ids != pad, tf.range(1, width + 1)[None], 0)
            longest = tf.maximum(tf.reduce_max(ends), 1)  # 1 for an empty batch
            padded = tf.minimum(-(-longest // bucket) * bucket, self.max_length)
            source_ids = source_ids[:, :padded]
            width = tf.shape(source_ids)[1]
        source_ids = tf.pad(source_ids, [[0, 0], [0, padded - width]], constant_values=pad)
        token_ids, scores = self._search(source_ids)
        # A source with no token translates to nothing (not to a made-up sentence).
        empty = tf.reduce_all(tf.equal(source_ids, pad), axis=1)
        token_ids = tf.where(empty[:, None], tf.fill(tf.shape(token_ids), pad), token_ids)
        scores = tf.where(empty, tf.zeros_like(scores), scores)
        return {"token_ids": token_ids, "scores": scores}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def translate(self, text):
        outputs = self.translate_ids(self.tokenize(text))
        return {"translation": self.detokenize(outputs["token_ids"]), **outputs}


def load_translator(run_dir, quantization=None, **kwargs):
    """A `Translator` for a training run's directory.

    `run_dir` holds what `keras-transformer train translation` writes:
    `best.keras`, `config.json`, `source_vocabulary/`, `target_vocabulary/`.
    `kwargs` go to `Translator` (`decoding`, `max_length`, ...);
    `max_length` defaults to the model's. A checkpoint trained under a
    mixed-precision policy translates (and exports) as its float32 copy;
    `quantization="int8"` then gives it int8 weights
    (`keras_transformer.models.quantize`).
    """
    import json
    import os

    import keras

    from keras_transformer.data import tokenizers as tk
    from keras_transformer.models import float32_copy

    missing = [name for name in ("best.keras", "config.json", "source_vocabulary",
                                 "target_vocabulary")
               if not os.path.exists(os.path.join(run_dir, name))]
    if missing:
        raise FileNotFoundError(f"{run_dir!r} is not a training run directory: missing "
                                f"{missing} (written by `keras-transformer train translation`).")
    with open(os.path.join(run_dir, "config.json")) as handle:
        kwargs.setdefault("max_length", json.load(handle)["max_length"])
    checkpoint = os.path.join(run_dir, "best.keras")
    try:
        model = keras.saving.load_model(checkpoint)
    except Exception as error:  # zip, h5 and config errors alike
        raise ValueError(f"Could not load the checkpoint {checkpoint!r} (truncated or "
                         f"corrupted?): {type(error).__name__}: {error}") from error
    model = float32_copy(model)
    if quantization is not None:
        from keras_transformer.models import quantize

        model = quantize(model, quantization)
    return Translator(model,
                      tk.load_tokenizer(os.path.join(run_dir, "source_vocabulary")),
                      tk.load_tokenizer(os.path.join(run_dir, "target_vocabulary")), **kwargs)
