"""Prompt in, text out for a decoder-only language model, as one `tf.Module`.

`TextGenerator` is the language-model counterpart of `Translator`: the
tokenizer, the cached search (sampling, greedy or beam, one XLA-compiled
`tf.while_loop`, the prompt forced through the cache) and the detokenizer in
TensorFlow graph code, so that it exports to a SavedModel with a `generate`
signature.

    generator = TextGenerator(model, tokenizer, max_length=64,
                              decoding=DecodingConfig("sample", temperature=0.8, top_k=20))
    generator.generate(tf.constant(["ROMEO:"]), seed=tf.constant(1))["text"]

Prompts longer than `max_length - 1` tokens keep their last `max_length - 1`
tokens (documented truncation); an empty prompt is refused with a clear
`InvalidArgumentError` (there is no token to continue from), unless the
model's prompts begin with a start token (`SpecialIds.prompt_start`, GPT-2's
and Llama's), which is then the first token of every prompt.
"""

import logging

import tensorflow as tf

from keras_transformer import _deprecation
from keras_transformer.data.special_tokens import DEFAULT_SPECIAL_IDS
from keras_transformer.data.tokenizers import ready_for_graphs
from keras_transformer.generation.core import SearchCore, SearchFront
from keras_transformer.generation.decoding import DecodingConfig
from keras_transformer.generation.slot_module import SlotModule
from keras_transformer.generation.steppers import model_variables
from keras_transformer.generation.translator import strip_special
from keras_transformer.models.cached_decoding import cached_decoder


def tokenize_prompt(tokenizer, prompt, max_length, special_ids=None):
    """`(B,)` prompts → `((B, max_length - 1) int32 ids, (B,) int32 lengths)`.

    A prompt keeps its last `max_length - 1` tokens, padded with
    `special_ids.pad`. With `special_ids.prompt_start`, every prompt begins
    with the start id (and keeps its last `max_length - 2` tokens); without,
    an empty prompt is an `InvalidArgumentError` (there is no token to
    continue from).
    """
    special = special_ids or DEFAULT_SPECIAL_IDS
    ids = tokenizer(prompt)
    if isinstance(ids, list):  # keras-hub gives Python lists when run eagerly
        ids = tf.ragged.constant(ids, dtype=tf.int32, ragged_rank=1)
    ids = tf.cast(ids, tf.int32)
    keep = max_length - 1
    if special.prompt_start:
        ids = ids[:, -(keep - 1):] if keep > 1 else ids[:, :0]
        start = tf.fill([ids.nrows(), 1], tf.constant(special.start, tf.int32))
        ids = tf.concat([tf.RaggedTensor.from_tensor(start), ids], axis=1)
    lengths = ids.row_lengths()
    tf.debugging.assert_positive(lengths, message="Every prompt must have at least one "
                                                  "token; received an empty prompt.")
    ids = ids[:, -keep:]  # the end of a long prompt
    return (ids.to_tensor(shape=[None, keep], default_value=special.pad),
            tf.cast(tf.minimum(lengths, keep), tf.int32))


def detokenize_sequence(tokenizer, ids, special_ids=None):
    """`(B, L)` ids → `(B,)` strings, each cut at its first end id and without
    the special ids (`strip_special`)."""
    return tokenizer.detokenize(strip_special(ids, special_ids))


class TextGenerator(SearchFront, tf.Module):
    """Continues prompts with a decoder-only model.

    Args:
        model: the decoder-only `keras.Model`: one from `build_causal_lm`,
            any functional (or `Sequential`) model assembled from the
            package's layers, or a model that implements the
            cached-decoding protocol (`keras_transformer.models.cached_decoding`).
        tokenizer: a keras-hub tokenizer (e.g. `UnicodeCodepointTokenizer`,
            WordPiece, BPE).
        max_length: int, total tokens (prompt + continuation); at most the
            model's `max_length`.
        decoding: a `DecodingConfig` (sampling, greedy or beam search).
        temperature, top_k, top_p: the older way to ask for sampling
            (`temperature=0`: greedy); used when `decoding` is None. With
            neither, sampling at temperature 1.
        jit_compile: bool, compile the search with XLA.
        special_ids: a `SpecialIds`: the end id, padding, the ids never
            generated or shown, whether prompts begin with the start id.
            Default: the model's (`TransformerModel.special_ids`), else the
            tokenizer's (`special_ids_of`: a keras-hub GPT-2 or Llama
            tokenizer names its own), else the package's reserved ids.

    `generate(prompt, seed)`: `prompt` `(B,)` string, `seed` int32 scalar →
    `{"text": (B,) prompt + continuation, "token_ids": (B, max_length - 1)
    int32, "scores": (B,) float32}`. `generate_text(prompt)` is the same with
    `decoding.seed` (the exported `serving_default`).
    """

    def __init__(self, model, tokenizer, *, max_length, decoding=None, temperature=None,
                 top_k=None, top_p=None, jit_compile=True, special_ids=None,
                 name="text_generator"):
        super().__init__(name=name)
        if decoding is not None and (temperature, top_k, top_p) != (None, None, None):
            raise ValueError("Pass either `decoding` or the older `temperature`/`top_k`/"
                             "`top_p`, not both.")
        # The SavedModel tracks the model's variables, not the Keras model
        # object: saving a Keras model as a child would also trace its default
        # serving signature, which a subclassed model cannot always give.
        object.__setattr__(self, "model", model)
        self._model_variables = model_variables(model)
        self.tokenizer = ready_for_graphs(tokenizer)
        if decoding is None:
            decoding = DecodingConfig.from_legacy(
                temperature=1.0 if temperature is None else temperature, top_k=top_k,
                top_p=top_p)
        limit = getattr(cached_decoder(model), "max_length", None)
        if max_length < 2 or (limit is not None and max_length > limit):
            raise ValueError(f"`max_length` must be in [2, {limit}] (the model's length). "
                             f"Received: {max_length}")
        self.max_length = int(max_length)
        # The prompt's first token is position 0; the search fills the rest.
        self.core = SearchCore(model, self.max_length - 1, decoding, kind="causal_lm",
                               special_ids=special_ids, fallback=tokenizer)
        self._search = tf.function(self._search_ids, jit_compile=jit_compile)
        self.slots = self._slot_module()

    def _slot_module(self):
        """The step functions saved beside the signatures (`SlotModule`), or
        None for a model that takes one position for the whole batch."""
        if not self.stepper.traits.per_row_index:
            logging.getLogger(__name__).info(
                "Model '%s' takes one position `index` for the whole batch: its SavedModel "
                "has no step functions, and `keras-transformer serve` batches its requests "
                "whole.", getattr(self.model, "name", self.model))
            return None
        return SlotModule(self.model, self._tokenize,
                          lambda ids: detokenize_sequence(self.tokenizer, ids, self.special_ids),
                          self.max_length, self.special_ids, self.decoding)

    def _search_ids(self, prompt_ids, lengths, seed):
        # A method of the module (not the core's bound method), so that the
        # compiled function keeps the module alive while it runs.
        return self.core.search(prompt_ids, lengths, seed)

    @property
    def temperature(self):
        """Deprecated: the sampling temperature (0 unless sampling); use `decoding`."""
        _deprecation.warn("TextGenerator.temperature", "TextGenerator.decoding.temperature")
        return self.decoding.temperature if self.decoding.strategy == "sample" else 0.0

    @property
    def top_k(self):
        """Deprecated: use `decoding.top_k`."""
        _deprecation.warn("TextGenerator.top_k", "TextGenerator.decoding.top_k")
        return self.decoding.top_k

    @property
    def top_p(self):
        """Deprecated: use `decoding.top_p`."""
        _deprecation.warn("TextGenerator.top_p", "TextGenerator.decoding.top_p")
        return self.decoding.top_p

    def _tokenize(self, prompt):
        return tokenize_prompt(self.tokenizer, prompt, self.max_length, self.special_ids)

    def serving_signatures(self):
        """The SavedModel signatures `export_saved_model` writes: `serving_default`
        (`prompt` only, the configured seed) and `generate` (`prompt`, `seed`)."""
        return {"serving_default": self.generate_text.get_concrete_function(),
                "generate": self.generate.get_concrete_function()}

    def asset_tokenizers(self):
        return {"": self.tokenizer}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="prompt"),
                                  tf.TensorSpec([], tf.int32, name="seed")])
    def generate(self, prompt, seed):
        prompt_ids, lengths = self._tokenize(prompt)
        token_ids, scores = self._search(prompt_ids, lengths, seed)
        # Position 0: the start id (not shown; GPT-2's is also its end id),
        # or the prompt's first token.
        full = (token_ids if self.special_ids.prompt_start
                else tf.concat([prompt_ids[:, :1], token_ids], axis=1))
        text = detokenize_sequence(self.tokenizer, full, self.special_ids)
        return {"text": text, "token_ids": token_ids, "scores": scores}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="prompt")])
    def generate_text(self, prompt):
        return self.generate(prompt, tf.constant(self.decoding.seed, tf.int32))


# A language-model run directory: what `keras-transformer train char-lm` and
# `keras-transformer import` write, and what `export`, `translate`,
# `generate` and `--init-from` read.
RUN_MODEL, RUN_TOKENIZER, RUN_CONFIG = "model.keras", "tokenizer", "config.json"


def is_language_model_run(path):
    """Whether `path` is a language-model run directory (`model.keras` inside)."""
    import os

    return os.path.isdir(path) and os.path.exists(os.path.join(path, RUN_MODEL))


def save_language_model_run(model, tokenizer, run_dir, config=None):
    """Writes `model.keras`, `tokenizer/` and `config.json` (a dict) into `run_dir`."""
    import json
    import os

    from keras_transformer.data import tokenizers as tk

    os.makedirs(run_dir, exist_ok=True)
    model.save(os.path.join(run_dir, RUN_MODEL))
    tk.save_tokenizer(tokenizer, os.path.join(run_dir, RUN_TOKENIZER))
    if config is not None:
        with open(os.path.join(run_dir, RUN_CONFIG), "w") as handle:
            json.dump(config, handle, indent=2)


def load_language_model_run(run_dir):
    """`(model, tokenizer, config)` of a language-model run directory.

    A run written before the tokenizer was saved with it (a character
    language model) gets the character tokenizer of its vocabulary size.
    """
    import json
    import os

    import keras

    from keras_transformer.data import tokenizers as tk

    if not is_language_model_run(run_dir):
        raise FileNotFoundError(f"{run_dir!r} is not a language-model run directory: no "
                                f"{RUN_MODEL} (written by `keras-transformer train char-lm` "
                                "or `keras-transformer import`).")
    config = {}
    if os.path.exists(os.path.join(run_dir, RUN_CONFIG)):
        with open(os.path.join(run_dir, RUN_CONFIG)) as handle:
            config = json.load(handle)
    checkpoint = os.path.join(run_dir, RUN_MODEL)
    try:
        model = keras.saving.load_model(checkpoint)
    except Exception as error:  # zip, h5 and config errors alike
        raise ValueError(f"Could not load the checkpoint {checkpoint!r} (truncated or "
                         f"corrupted?): {type(error).__name__}: {error}") from error
    if os.path.isdir(os.path.join(run_dir, RUN_TOKENIZER)):
        tokenizer = tk.load_tokenizer(os.path.join(run_dir, RUN_TOKENIZER))
    else:
        tokenizer = tk.character_tokenizer(config.get("vocab_size", 128))
    return model, tokenizer, config


def load_text_generator(run_dir, quantization=None, **kwargs):
    """A `TextGenerator` for a language-model run directory.

    `kwargs` go to `TextGenerator` (`decoding`, `max_length`, ...);
    `max_length` defaults to the run's (its config's, else the model's).
    A mixed-precision checkpoint generates as its float32 copy;
    `quantization="int8"` gives it int8 weights.
    """
    from keras_transformer.models import float32_copy, quantize

    model, tokenizer, config = load_language_model_run(run_dir)
    model = float32_copy(model)
    if quantization is not None:
        model = quantize(model, quantization)
    limit = getattr(cached_decoder(model), "max_length", None)
    kwargs.setdefault("max_length", config.get("max_length") or limit)
    return TextGenerator(model, tokenizer, **kwargs)
