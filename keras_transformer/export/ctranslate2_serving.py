"""A CTranslate2 model directory served like the package's SavedModel.

`to_ctranslate2` / `export_ctranslate2` write a directory that CTranslate2
decodes (`model.bin`, its vocabularies) with what serving it as text needs
(the tokenizers and `serving_config.json`). `CTranslate2Model(path)` loads
one and offers the signatures of the SavedModel the same model exports, so
that `keras-transformer translate`, `evaluate` and `serve` (the same REST
API) take either:

- a translator: `serving_default` (`text` → `translation`, `token_ids`,
  `scores`) and `translate_ids` (`source_ids` → `token_ids`, `scores`);
- a text generator: `serving_default` (`prompt` → `text`, `token_ids`,
  `scores`) and `generate` (`prompt`, `seed` → the same).

Text is tokenized and detokenized by the package's own functions (the ones
the SavedModel's graph runs), so the strings around the engine are the same.
Differences that remain, by CTranslate2's design: beam search ranks by
`score / length^α` and stops after `beam_size` finished hypotheses (the
package: GNMT's `((5 + length) / 6)^α`, until no live beam can win), so
beam outputs can differ where hypotheses are close; `scores` are the sum of
the tokens' log-probabilities for greedy search (taken after `[PAD]` is
suppressed, so higher than the package's by the probability the model
gives `[PAD]`, about nothing for a trained model) and CTranslate2's
length-normalized score for beam search; sampling draws from CTranslate2's
random stream.

    model = CTranslate2Model("saved_models/translator_ct2/1")
    model.signatures["serving_default"](text=tf.constant(["Hello."]))

Requires the `ctranslate2` extra.
"""

import json
import os

import numpy as np
import tensorflow as tf

from keras_transformer._optional import require
from keras_transformer.data.special_tokens import END_ID, PAD_ID
from keras_transformer.export.ctranslate2 import (
    METADATA,
    generate_options,
    translate_options,
)
from keras_transformer.generation.decoding import DecodingConfig


def is_ctranslate2_directory(path):
    """Whether `path` is a directory `to_ctranslate2` wrote."""
    return (os.path.isfile(os.path.join(path, "model.bin"))
            and os.path.isfile(os.path.join(path, METADATA)))


def _load_tokenizer(directory):
    from keras_transformer.data import tokenizers as tk

    config_path = os.path.join(directory, "tokenizer.json")
    if os.path.exists(config_path):
        with open(config_path) as handle:
            config = json.load(handle)
        if config.get("class") == "UnicodeCodepointTokenizer":
            keras_hub = require("keras_hub", "data", "The code-point tokenizer")
            config.pop("class")
            for key in ("dtype", "name", "trainable"):
                config.pop(key, None)
            return keras_hub.tokenizers.UnicodeCodepointTokenizer(**config)
    return tk.load_tokenizer(directory)


class Signature:
    """What the server and the command read of a SavedModel signature."""

    def __init__(self, function, inputs, outputs):
        self._function = function
        self.structured_input_signature = ((), inputs)
        self.structured_outputs = {name: None for name in outputs}

    def __call__(self, **inputs):
        return self._function(**inputs)


def _string_tensor(text):
    """keras-hub detokenizers answer Python strings when run eagerly: a `(B,)` tensor."""
    return text if isinstance(text, tf.Tensor) else tf.constant(text, tf.string)


class CTranslate2Model:
    """A CTranslate2 directory with the signatures of the package's SavedModel.

    Args:
        path: a directory `to_ctranslate2` or `export_ctranslate2` wrote.
        inter_threads: batches decoded at once (the server's
            `num_batch_threads`).
        intra_threads: threads per batch (0: CTranslate2's default).
    """

    def __init__(self, path, inter_threads=1, intra_threads=0):
        ctranslate2 = require("ctranslate2", "ctranslate2", "Serving a CTranslate2 directory")
        if not is_ctranslate2_directory(path):
            raise ValueError(f"{path!r} is not a CTranslate2 directory of this package: "
                             f"expected model.bin and {METADATA} (written by to_ctranslate2).")
        with open(os.path.join(path, METADATA)) as handle:
            metadata = json.load(handle)
        self.path = path
        self.kind = metadata["kind"]
        self.max_length = int(metadata["max_length"])
        self.decoding = DecodingConfig(**metadata["decoding"])
        self.tokenizers = {side: _load_tokenizer(os.path.join(path, directory))
                           for side, directory in metadata.get("tokenizers", {}).items()}
        engine = ctranslate2.Translator if self.kind == "translator" else ctranslate2.Generator
        self.engine = engine(path, device="cpu", inter_threads=inter_threads,
                             intra_threads=intra_threads)
        self.signatures = {}
        if self.kind == "translator":
            self.source_vocabulary = self._vocabulary("source_vocabulary.json")
            self.target_vocabulary = self._vocabulary("target_vocabulary.json")
            self.signatures["translate_ids"] = Signature(
                self.translate_ids, {"source_ids": tf.TensorSpec([None, None], tf.int32)},
                ["token_ids", "scores"])
            if {"source", "target"} <= set(self.tokenizers):
                self.signatures["serving_default"] = Signature(
                    self.translate, {"text": tf.TensorSpec([None], tf.string)},
                    ["translation", "token_ids", "scores"])
        else:
            self.target_vocabulary = self._vocabulary("vocabulary.json")
            if "tokenizer" in self.tokenizers:
                self.signatures["serving_default"] = Signature(
                    self.generate_text, {"prompt": tf.TensorSpec([None], tf.string)},
                    ["text", "token_ids", "scores"])
                self.signatures["generate"] = Signature(
                    self.generate, {"prompt": tf.TensorSpec([None], tf.string),
                                    "seed": tf.TensorSpec([], tf.int32)},
                    ["text", "token_ids", "scores"])

    def _vocabulary(self, name):
        with open(os.path.join(self.path, name), encoding="utf-8") as handle:
            return json.load(handle)

    def _ids(self, tokens):
        index = self._target_index
        return [index[token] for token in tokens]

    @property
    def _target_index(self):
        if not hasattr(self, "_index"):
            self._index = {token: i for i, token in enumerate(self.target_vocabulary)}
        return self._index

    # ## Translator

    def translate_ids(self, source_ids):
        """`(B, S)` int32 source ids (0 = padding) → `token_ids`, `scores`."""
        source_ids = np.asarray(source_ids, np.int64)[:, : self.max_length]
        vocabulary = len(self.source_vocabulary)
        if source_ids.size and (source_ids.min() < 0 or source_ids.max() >= vocabulary):
            raise tf.errors.InvalidArgumentError(
                None, None, f"source_ids must be >= 0 and < the source vocabulary size "
                            f"{vocabulary}.")
        rows = [[int(i) for i in row if i != PAD_ID] for row in source_ids]
        token_ids = np.zeros((len(rows), self.max_length), np.int32)
        scores = np.zeros((len(rows),), np.float32)
        busy = [b for b, row in enumerate(rows) if row]  # an empty source: nothing
        if busy:
            options = translate_options(self.decoding, self.max_length)
            options.update(return_scores=True)
            if options["beam_size"] == 1:
                options["length_penalty"] = 0.0  # scores: summed log-probabilities
            results = self.engine.translate_batch(
                [[self.source_vocabulary[i] for i in rows[b]] for b in busy],
                max_batch_size=0, **options)
            for b, result in zip(busy, results):
                ids = self._ids(result.hypotheses[0])
                ended = ids + [END_ID] if len(ids) < self.max_length else ids
                token_ids[b, : len(ended)] = ended[: self.max_length]
                scores[b] = result.scores[0]
        return {"token_ids": tf.constant(token_ids), "scores": tf.constant(scores)}

    def translate(self, text):
        from keras_transformer.generation.translator import detokenize_target, tokenize_source

        source_ids = tokenize_source(self.tokenizers["source"], text, self.max_length)
        outputs = self.translate_ids(source_ids.numpy())
        translation = detokenize_target(self.tokenizers["target"], outputs["token_ids"])
        return {"translation": _string_tensor(translation), **outputs}

    # ## Text generator

    def generate(self, prompt, seed):
        from keras_transformer.generation.text_generator import (
            detokenize_sequence,
            tokenize_prompt,
        )

        prompt_ids, lengths = tokenize_prompt(self.tokenizers["tokenizer"], prompt,
                                              self.max_length)
        prompt_ids, lengths = prompt_ids.numpy(), lengths.numpy()
        width = self.max_length - 1
        token_ids = np.zeros((len(lengths), width), np.int32)
        scores = np.zeros((len(lengths),), np.float32)
        if len(lengths):
            if self.decoding.strategy == "sample":
                require("ctranslate2", "ctranslate2", "Sampling").set_random_seed(int(seed))
            options = generate_options(self.decoding, self.max_length - int(lengths.min()),
                                       self.target_vocabulary)
            options.update(return_scores=True)
            if options["beam_size"] == 1:
                options["length_penalty"] = 0.0
            results = self.engine.generate_batch(
                [[self.target_vocabulary[i] for i in row[:n]]
                 for row, n in zip(prompt_ids, lengths)], max_batch_size=0, **options)
            for b, result in enumerate(results):
                ids = self._ids(result.sequences[0])[: self.max_length]
                if END_ID not in ids and len(ids) < self.max_length:
                    ids = ids + [END_ID]
                row = ids[1:]  # positions 1 … max_length - 1
                token_ids[b, : len(row)] = row
                scores[b] = result.scores[0]
        # As `TextGenerator` does: the prompt's first token, then positions 1….
        full = np.concatenate([prompt_ids[:, :1], token_ids], axis=1)
        text = detokenize_sequence(self.tokenizers["tokenizer"], tf.constant(full))
        return {"text": _string_tensor(text), "token_ids": tf.constant(token_ids),
                "scores": tf.constant(scores)}

    def generate_text(self, prompt):
        return self.generate(prompt, self.decoding.seed)
