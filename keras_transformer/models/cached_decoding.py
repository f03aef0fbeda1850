"""The cached forward pass: the protocol every search decodes through.

A model decodes with the package's searches (`Translator`, `TextGenerator`,
greedy, beam and sampling) and exports to a SavedModel when it offers three
things, the way keras-hub's `CausalLM.call_with_cache` and Flax's WMT
`encode`/`decode` do:

- `encode(source_ids)` (encoder–decoder models only): `(B, S)` int ids →
  whatever the decoder needs from the source, a nest of tensors whose first
  axis is the batch;
- `initial_cache(batch_size, max_length, encoded=None)` → the cache, a nest
  of tensors whose first axis is the batch (beam search repeats and gathers
  its rows), with room for `max_length` positions;
- `call_with_cache(token_ids, cache, index)`: `(B, T)` int ids at positions
  `index … index + T - 1` → `(logits (B, T, V), cache)` with the new
  positions' keys and values written into the cache. `index` is an int or
  a scalar tensor; a model whose `decoding_traits()` sets `per_row_index`
  also takes a `(B,)` int tensor, row b at positions `index[b] …` (what a
  server's pool of sequences at different positions needs).

Optional attributes: `max_length` (the most positions the model accepts),
`source_vocab_size` (checked against the ids a served model receives) and
`is_encoder_decoder` (otherwise: whether `encode` exists).

Optional method, the protocol's extension point: `decoding_traits()` → a
`DecodingTraits`, which tells the searches what they may assume about the
model beyond the three methods (which cache entries come from the source
alone, so beam search never reorders them; which cache entries grow with the
positions; which token ids start, end and pad its sequences). A model without
it gets `DecodingTraits()`, whose every field keeps the searches' general
behaviour; fields added later (`per_row_index`) default the same way, so a
model written against an older protocol keeps decoding unchanged.

Every functional model assembled from the package's layers has these
without writing them: `cached_decoder(model)` reads its structure
(`keras_transformer.models.graph`) and returns a `StructuredDecoder`, the one
implementation of the cached step. `build_transformer` and `build_causal_lm`
return `TransformerModel`s, which carry the three methods themselves. A
model with a shape of its own implements them (see the README).
"""

import dataclasses
import typing

import keras
from keras import ops

from keras_transformer.models.graph import read_structure


@typing.runtime_checkable
class CachedDecoding(typing.Protocol):
    """What a model implements to decode with the package's searches."""

    def initial_cache(self, batch_size, max_length, encoded=None): ...

    def call_with_cache(self, token_ids, cache, index): ...


@dataclasses.dataclass(frozen=True)
class DecodingTraits:
    """What a cached-decoding model lets the searches assume (all optional).

    Args:
        static_cache_keys: top-level keys of a dict cache whose tensors come
            from the source alone: written by `initial_cache` and returned
            unchanged by `call_with_cache`. Beam search neither repeats nor
            reorders them: they keep one row per sentence while the token
            ids (and the other entries) have one row per beam, `k`
            consecutive rows a sentence, so `call_with_cache` must accept
            them at that smaller batch (the package's `DecoderBlock` and
            `MultiHeadAttention` do: a cross-attention cache of batch B_c
            serves B = k·B_c query rows). For an encoder–decoder this saves
            reading the source's keys/values once per beam. Empty: every
            cache tensor is repeated and reordered with its beams.
        cache_length_axes: `(key, axis)` pairs: top-level keys of a dict
            cache whose tensors hold one entry per position along `axis`
            (their length there is the `max_length` given to
            `initial_cache`), such as self-attention keys/values. The
            searches may start them shorter and lengthen them (zeros
            appended) as decoding advances, so that a step reads the
            positions written so far instead of all `max_length`; the
            model's `call_with_cache` then receives such a cache of any
            length ≥ `index + T`. Empty: the cache keeps its full length.
        special_ids: a `keras_transformer.data.SpecialIds`, the start, end,
            padding and suppressed ids of the model's vocabulary, or None
            (the default): the generator's tokenizer says, else the
            package's `[PAD]`=0, `[START]`=2, `[END]`=3.
        per_row_index: bool, whether `call_with_cache` takes a `(B,)` int
            `index` (each row at its own position) as well as a scalar.
            False (the default): scalars only, and a server batches such a
            model's requests whole instead of step by step.
    """

    static_cache_keys: tuple = ()
    cache_length_axes: tuple = ()
    special_ids: object = None
    per_row_index: bool = False


def decoding_traits(decoder):
    """`decoder.decoding_traits()`, or the defaults for a model without it."""
    method = getattr(decoder, "decoding_traits", None)
    traits = method() if callable(method) else None
    if traits is None:
        return DecodingTraits()
    if not isinstance(traits, DecodingTraits):
        raise TypeError(f"`decoding_traits()` must return a DecodingTraits. Received: "
                        f"{type(traits).__name__}")
    return traits


def is_encoder_decoder(decoder):
    """Whether `decoder` (a protocol object) needs `encode` before decoding."""
    flag = getattr(decoder, "is_encoder_decoder", None)
    if flag is not None:
        return bool(flag)
    return callable(getattr(decoder, "encode", None))


def cached_decoder(model):
    """`model` itself if it implements the protocol, else its `StructuredDecoder`.

    Raises:
        ValueError: `model` neither implements the protocol nor has a
            structure `read_structure` can read (the message says where
            reading stopped).
    """
    if isinstance(model, CachedDecoding):
        return model
    if isinstance(model, keras.Model):
        return StructuredDecoder(model)
    raise ValueError(
        f"Expected a keras.Model built from the package's layers, or an object with "
        f"`initial_cache` and `call_with_cache` (and `encode` for an encoder–decoder). "
        f"Received: {type(model).__name__}"
    )


class StructuredDecoder:
    """The cached-decoding protocol for a model `read_structure` can read.

    The cache is a dict: `"self"`, each decoder block's self-attention cache
    `(B, 2, L, N, H)`; with an encoder, `"cross"`, each block's
    cross-attention keys/values `(B, 2, S, N, H)`, and `"source_mask"`
    `(B, S)` bool. `encode` returns `{"memory": (B, S, D), "source_mask":
    (B, S)}`. Padding is what the source embedding masks (id 0 with
    `mask_zero=True`, `padding_id` when set); with no mask every source
    position is attended to, as in the full pass.
    """

    def __init__(self, model):
        self.model = model
        self.structure = read_structure(model)
        self.decoder_blocks = self.structure.decoder.blocks
        self.embedding = self.structure.decoder.embedding
        encoder = self.structure.encoder
        self.source_embedding = encoder.embedding if encoder else None
        self.source_vocab_size = encoder.embedding.vocab_size if encoder else None
        self.max_length = self.embedding.max_length

    @property
    def is_encoder_decoder(self):
        return self.structure.encoder is not None

    def decoding_traits(self):
        """The cross-attention keys/values and the source mask are the source's;
        the self-attention caches grow with the positions decoded; the layers
        take a per-row `index`."""
        # Self-attention caches are (B, 2, L, K, H): positions on axis 2.
        growing = (("self", 2),)
        # A plain functional model may carry `special_ids` as an attribute.
        special = getattr(self.model, "special_ids", None)
        if self.is_encoder_decoder:
            return DecodingTraits(static_cache_keys=("cross", "source_mask"),
                                  cache_length_axes=growing, special_ids=special,
                                  per_row_index=True)
        return DecodingTraits(cache_length_axes=growing, special_ids=special,
                              per_row_index=True)

    def encode(self, source_ids):
        """`(B, S)` ids → `{"memory": (B, S, D), "source_mask": (B, S) bool}`."""
        if not self.is_encoder_decoder:
            raise ValueError(f"Model '{self.model.name}' is decoder-only: it has no encoder.")
        source_ids = ops.cast(source_ids, "int32")
        mask = self.source_embedding.compute_mask(source_ids)
        if mask is None:
            mask = ops.ones_like(source_ids, dtype="bool")
        x = self.source_embedding(source_ids)
        for kind, layer in self.structure.encoder.layers:
            if kind == "block":
                x = layer(x, padding_mask=mask, training=False)
            else:
                x = layer(x, training=False)
        return {"memory": x, "source_mask": mask}

    def initial_cache(self, batch_size, max_length, encoded=None):
        """Zero self-attention caches, and the cross-attention keys/values of `encoded`."""
        cache = {"self": [block.initial_self_attention_cache(batch_size, max_length)
                          for block in self.decoder_blocks]}
        if self.is_encoder_decoder:
            if encoded is None:
                raise ValueError("An encoder–decoder model needs `encoded` (from `encode`) "
                                 "to make its initial cache.")
            cache["cross"] = [block.compute_cross_attention_cache(encoded["memory"])
                              for block in self.decoder_blocks]
            cache["source_mask"] = encoded["source_mask"]
        return cache

    def call_with_cache(self, token_ids, cache, index):
        """`(B, T)` ids at positions `index …` → float32 logits `(B, T, V)` and the cache."""
        logits, cache, _ = self._decode(token_ids, cache, index, attention=False)
        return logits, cache

    def call_with_cache_and_attention(self, token_ids, cache, index):
        """`call_with_cache`, plus each block's cross-attention `(B, N, T, S)`."""
        return self._decode(token_ids, cache, index, attention=True)

    def _decode(self, token_ids, cache, index, attention):
        token_ids = ops.cast(token_ids, "int32")
        x = self.embedding(token_ids, start_index=index)
        # The new tokens are real tokens (the searches feed [PAD] only
        # after [END], where nothing is read any more).
        real = ops.ones_like(token_ids, dtype="bool")
        self_caches, scores, block_index = [], [], 0
        for kind, layer in self.structure.decoder.layers:
            if kind == "reverse":
                x = layer(x, reverse=True)
                continue
            if kind == "layer":
                x = layer(x, training=False)
                continue
            kwargs = dict(decoder_padding_mask=real, training=False,
                          self_attention_cache=cache["self"][block_index],
                          self_attention_cache_index=index)
            if self.is_encoder_decoder:
                kwargs.update(encoder_padding_mask=cache["source_mask"],
                              cross_attention_cache=cache["cross"][block_index])
            outputs = layer(x, return_attention_scores=attention, **kwargs)
            x, self_cache = outputs[0], outputs[1]
            if attention:
                scores.append(outputs[-1].get("cross_attention"))
            self_caches.append(self_cache)
            block_index += 1
        return ops.cast(x, "float32"), {**cache, "self": self_caches}, scores
