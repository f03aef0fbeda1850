"""Functional Keras models assembled from keras_transformer's layers."""

import keras

from keras_transformer.data.special_tokens import special_ids_of
from keras_transformer.layers import (
    DecoderBlock,
    EncoderBlock,
    PositionalEmbedding,
    RMSNormalization,
)
from keras_transformer.models.cached_decoding import StructuredDecoder


@keras.saving.register_keras_serializable(package="keras_transformer")
class TransformerModel(keras.Model):
    """A functional model that owns its cached forward pass.

    What `build_transformer` and `build_causal_lm` return: a functional
    `keras.Model` (construct it like one, `TransformerModel(inputs,
    outputs)`) with the cached-decoding protocol as methods (`encode`,
    `initial_cache`, `call_with_cache`; see
    `keras_transformer.models.cached_decoding`), read from its own graph by
    layer types, so they hold for any names and for reloaded models.

    Args:
        *args, **kwargs: those of a functional `keras.Model` (`inputs`,
            `outputs`, `name`, ...).
        special_ids: a `keras_transformer.data.SpecialIds` (or its dict), the
            start, end and padding ids of the model's vocabulary, which the
            searches, `Translator`, `TextGenerator` and the exports read;
            None (default): the tokenizer's, else the package's reserved ids.
            Saved with the model (`get_config`).
    """

    def __init__(self, *args, special_ids=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.special_ids = special_ids

    @property
    def special_ids(self):
        """The model's `SpecialIds`, or None when it names none."""
        return self.__dict__.get("_special_ids")

    @special_ids.setter
    def special_ids(self, value):
        if value is not None:
            value = special_ids_of(value)
        self.__dict__["_special_ids"] = value  # a plain value, not tracked

    def get_config(self):
        config = super().get_config()
        if self.special_ids is not None:
            config["special_ids"] = self.special_ids.to_dict()
        return config

    def _decoder(self):
        decoder = self.__dict__.get("_structured_decoder")
        if decoder is None:
            decoder = StructuredDecoder(self)
            self.__dict__["_structured_decoder"] = decoder  # not tracked: holds layers
        return decoder

    @property
    def is_encoder_decoder(self):
        return self._decoder().is_encoder_decoder

    @property
    def source_vocab_size(self):
        return self._decoder().source_vocab_size

    @property
    def max_length(self):
        return self._decoder().max_length

    def decoding_traits(self):
        """What the searches may assume (`cached_decoding.DecodingTraits`)."""
        return self._decoder().decoding_traits()

    def encode(self, source_ids):
        """`(B, S)` source ids → `{"memory": (B, S, D), "source_mask": (B, S)}`."""
        return self._decoder().encode(source_ids)

    def initial_cache(self, batch_size, max_length, encoded=None):
        """The empty cache for `batch_size` rows and `max_length` positions."""
        return self._decoder().initial_cache(batch_size, max_length, encoded)

    def call_with_cache(self, token_ids, cache, index):
        """`(B, T)` ids at positions `index …` → `(logits (B, T, V), cache)`."""
        return self._decoder().call_with_cache(token_ids, cache, index)

    def call_with_cache_and_attention(self, token_ids, cache, index):
        """`call_with_cache`, plus each decoder block's cross-attention `(B, N, T, S)`."""
        return self._decoder().call_with_cache_and_attention(token_ids, cache, index)


def build_transformer(config, name="transformer"):
    """The encoder–decoder Transformer: `[source_ids, target_ids] → logits`.

    Args:
        config: a `TransformerConfig`.
        name: the model's name.

    Returns:
        A functional `TransformerModel` with inputs `source_ids` `(B, S)` and
        `target_ids` `(B, T)` (int, 0 = padding) and float32 logits
        `(B, T, vocab_size)`. Teacher forcing: `target_ids` is the target
        shifted right (`[START] y`), the labels are `y [END]`.
    """
    source_ids = keras.Input((None,), dtype="int32", name="source_ids")
    target_ids = keras.Input((None,), dtype="int32", name="target_ids")
    target_embedding = _embedding(config, config.vocab_size, "target_embedding")
    if config.shared_vocabulary:  # one matrix for source, target and output
        source_embedding = target_embedding
    else:
        source_embedding = _embedding(
            config, config.source_vocab_size or config.vocab_size, "source_embedding"
        )

    x = keras.layers.Dropout(config.dropout, name="source_dropout")(source_embedding(source_ids))
    for i in range(config.num_encoder_layers):
        x = EncoderBlock(**_block_arguments(config, i), name=f"encoder_block_{i}")(x)
    if config.norm_first:
        x = _final_norm(config, "encoder_norm")(x)

    y = keras.layers.Dropout(config.dropout, name="target_dropout")(target_embedding(target_ids))
    for i in range(config.num_decoder_layers):
        y = DecoderBlock(**_block_arguments(config, i), name=f"decoder_block_{i}")(y, x)
    if config.norm_first:
        y = _final_norm(config, "decoder_norm")(y)
    logits = _logits(config, target_embedding, y)
    return TransformerModel([source_ids, target_ids], logits, name=name)


def build_causal_lm(config, name="causal_lm"):
    """A decoder-only language model: `token_ids → next-token logits`.

    Uses the decoder fields of `config` (`num_decoder_layers` blocks without
    cross-attention). Returns a functional `keras.Model` with input
    `token_ids` `(B, T)` and float32 logits `(B, T, vocab_size)`, with the
    cached-decoding methods of `TransformerModel`.
    """
    token_ids = keras.Input((None,), dtype="int32", name="token_ids")
    embedding = _embedding(config, config.vocab_size, "token_embedding")
    x = keras.layers.Dropout(config.dropout, name="embedding_dropout")(embedding(token_ids))
    for i in range(config.num_decoder_layers):
        x = DecoderBlock(**_block_arguments(config, i), name=f"decoder_block_{i}")(x)
    if config.norm_first:
        x = _final_norm(config, "final_norm")(x)
    logits = _logits(config, embedding, x)
    return TransformerModel(token_ids, logits, name=name)


def _embedding(config, vocab_size, name):
    return PositionalEmbedding(
        vocab_size, config.max_length, config.embed_dim, positions=config.positions, name=name
    )


def _block_arguments(config, index):
    return config.block_options(index).block_arguments()


def _final_norm(config, name):
    """The extra normalization a pre-LN stack needs after its last block."""
    if config.norm == "rms":
        return RMSNormalization(epsilon=config.layer_norm_epsilon, name=name)
    return keras.layers.LayerNormalization(epsilon=config.layer_norm_epsilon, name=name)


def _logits(config, embedding, hidden):
    """Float32 logits: tied to the target embedding, or a float32 dense layer."""
    if config.tie_embeddings:
        return embedding(hidden, reverse=True)
    return keras.layers.Dense(config.vocab_size, use_bias=config.use_bias is True,
                              dtype="float32", name="logits")(hidden)
