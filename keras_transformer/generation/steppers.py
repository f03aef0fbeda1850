"""One decoding step at a time through a built model, with key/value caches.

A *stepper* turns a model from `build_transformer` or `build_causal_lm` into
the three functions every search needs:

- `initial_state(inputs, max_length)`: the caches for a batch (for the
  encoder–decoder: the encoder runs once and each decoder block projects the
  encoder's keys/values once);
- `step(token_ids, index, state)`: `token_ids` `(B,)` at position `index`
  → float32 logits `(B, V)` and the updated state (each block's
  self-attention cache `(B, 2, L, N, H)` gets the new keys/values at `index`);
- `repeat(state, k)` / `gather(state, indices)`: for beam search.

Steppers find the layers by the names the builders give them, so they work
on reloaded `.keras` models too. They use TensorFlow ops (the loops they
serve compile with XLA and export to SavedModels).
"""

import tensorflow as tf

from keras_transformer.data.tokenizers import PAD_ID


def _blocks(model, prefix):
    blocks = [layer for layer in model.layers if layer.name.startswith(prefix)]
    return sorted(blocks, key=lambda layer: int(layer.name[len(prefix):]))


def _optional_layer(model, name):
    names = {layer.name for layer in model.layers}
    return model.get_layer(name) if name in names else None


class _Stepper:
    def __init__(self, model, embedding_name, final_norm_name):
        self.model = model
        self.embedding = model.get_layer(embedding_name)
        self.decoder_blocks = _blocks(model, "decoder_block_")
        if not self.decoder_blocks:
            raise ValueError(
                f"Model '{model.name}' has no layers named decoder_block_<i>; expected a "
                "model from build_transformer or build_causal_lm."
            )
        self.final_norm = _optional_layer(model, final_norm_name)
        self.logits_layer = _optional_layer(model, "logits")
        self.max_length = self.embedding.max_length

    def _logits(self, hidden):
        if self.final_norm is not None:
            hidden = self.final_norm(hidden)
        if self.logits_layer is not None:
            return tf.cast(self.logits_layer(hidden), tf.float32)
        return tf.cast(self.embedding(hidden, reverse=True), tf.float32)

    def _self_caches(self, batch_size, max_length):
        return [block.initial_self_attention_cache(batch_size, max_length)
                for block in self.decoder_blocks]

    def repeat(self, state, k):
        """Each row of every state tensor repeated `k` times: `(B, ...)` → `(B·k, ...)`."""
        return tf.nest.map_structure(lambda t: tf.repeat(t, k, axis=0), state)

    def gather(self, state, indices):
        """The rows `indices` `(B·k,)` of every state tensor (beams that survive)."""
        return tf.nest.map_structure(lambda t: tf.gather(t, indices, axis=0), state)


class EncoderDecoderStepper(_Stepper):
    """Steps through a `build_transformer` model.

    `initial_state(source_ids, max_length)`: `source_ids` `(B, S)` int, 0 =
    padding. State: `{"self": [cache per block], "cross": [cache per block],
    "source_mask": (B, S) bool}`.
    """

    def __init__(self, model):
        super().__init__(model, "target_embedding", "decoder_norm")
        names = {layer.name for layer in model.layers}
        self.source_embedding = model.get_layer(
            "source_embedding" if "source_embedding" in names else "target_embedding"
        )
        self.encoder_blocks = _blocks(model, "encoder_block_")
        self.encoder_norm = _optional_layer(model, "encoder_norm")

    def encode(self, source_ids):
        """Encoder outputs `(B, S, D)` and the source padding mask `(B, S)`."""
        source_ids = tf.convert_to_tensor(source_ids, tf.int32)
        source_mask = tf.not_equal(source_ids, PAD_ID)
        x = self.source_embedding(source_ids)
        for block in self.encoder_blocks:
            x = block(x, padding_mask=source_mask)
        if self.encoder_norm is not None:
            x = self.encoder_norm(x)
        return x, source_mask

    def initial_state(self, source_ids, max_length):
        memory, source_mask = self.encode(source_ids)
        return {
            "self": self._self_caches(tf.shape(memory)[0], max_length),
            "cross": [block.compute_cross_attention_cache(memory)
                      for block in self.decoder_blocks],
            "source_mask": source_mask,
        }

    def step(self, token_ids, index, state):
        x = self.embedding(token_ids[:, None], start_index=index)  # [B, 1, D]
        self_caches = []
        for block, self_cache, cross_cache in zip(
            self.decoder_blocks, state["self"], state["cross"]
        ):
            x, self_cache, _ = block(
                x,
                decoder_padding_mask=tf.ones_like(token_ids[:, None], tf.bool),
                encoder_padding_mask=state["source_mask"],
                self_attention_cache=self_cache,
                self_attention_cache_index=index,
                cross_attention_cache=cross_cache,
            )
            self_caches.append(self_cache)
        return self._logits(x)[:, 0], {**state, "self": self_caches}

    def step_with_attention(self, token_ids, index, state):
        """`step`, plus each block's cross-attention probabilities `(B, N, S)`."""
        x = self.embedding(token_ids[:, None], start_index=index)
        self_caches, attention = [], []
        for block, self_cache, cross_cache in zip(
            self.decoder_blocks, state["self"], state["cross"]
        ):
            x, self_cache, _, scores = block(
                x,
                decoder_padding_mask=tf.ones_like(token_ids[:, None], tf.bool),
                encoder_padding_mask=state["source_mask"],
                self_attention_cache=self_cache,
                self_attention_cache_index=index,
                cross_attention_cache=cross_cache,
                return_attention_scores=True,
            )
            self_caches.append(self_cache)
            attention.append(scores["cross_attention"][:, :, 0])
        return self._logits(x)[:, 0], {**state, "self": self_caches}, attention


class CausalLMStepper(_Stepper):
    """Steps through a `build_causal_lm` model. State: `{"self": [cache per block]}`."""

    def __init__(self, model):
        super().__init__(model, "token_embedding", "final_norm")

    def initial_state(self, batch_size, max_length):
        return {"self": self._self_caches(batch_size, max_length)}

    def step(self, token_ids, index, state):
        x = self.embedding(token_ids[:, None], start_index=index)
        self_caches = []
        for block, self_cache in zip(self.decoder_blocks, state["self"]):
            x, self_cache = block(
                x,
                decoder_padding_mask=tf.ones_like(token_ids[:, None], tf.bool),
                self_attention_cache=self_cache,
                self_attention_cache_index=index,
            )
            self_caches.append(self_cache)
        return self._logits(x)[:, 0], {"self": self_caches}
