"""Prompt in, text out for a decoder-only language model, as one `tf.Module`.

`TextGenerator` is the language-model counterpart of `Translator`: the
tokenizer, the cached search (sampling or greedy, one XLA-compiled
`tf.while_loop`, the prompt forced through the cache) and the detokenizer in
TensorFlow graph code, so that it exports to a SavedModel with a `generate`
signature.

    generator = TextGenerator(model, tokenizer, max_length=64, temperature=0.8, top_k=20)
    generator.generate(tf.constant(["ROMEO:"]), seed=tf.constant(1))["text"]

Prompts longer than `max_length - 1` tokens keep their last `max_length - 1`
tokens (documented truncation); an empty prompt is refused with a clear
`InvalidArgumentError` (there is no token to continue from).
"""

import tensorflow as tf

from keras_transformer.generation import search
from keras_transformer.generation.steppers import CausalLMStepper


class TextGenerator(tf.Module):
    """Continues prompts with a `build_causal_lm` model.

    Args:
        model: the decoder-only `keras.Model`.
        tokenizer: a keras-hub tokenizer (e.g. `UnicodeCodepointTokenizer`,
            WordPiece, BPE).
        max_length: int, total tokens (prompt + continuation); at most the
            model's `max_length`.
        temperature, top_k, top_p: sampling settings (`temperature=0`:
            greedy).
        jit_compile: bool, compile the search with XLA.

    `generate(prompt, seed)`: `prompt` `(B,)` string, `seed` int32 scalar →
    `{"text": (B,) prompt + continuation, "token_ids": (B, max_length - 1)
    int32, "scores": (B,) float32}`.
    """

    def __init__(self, model, tokenizer, *, max_length, temperature=1.0, top_k=0, top_p=1.0,
                 jit_compile=True, name="text_generator"):
        super().__init__(name=name)
        self.model = model
        self.tokenizer = tokenizer
        self.stepper = CausalLMStepper(model)
        if not 2 <= max_length <= self.stepper.max_length:
            raise ValueError(f"`max_length` must be in [2, {self.stepper.max_length}] (the "
                             f"model's length). Received: {max_length}")
        self.max_length = int(max_length)
        self.temperature, self.top_k, self.top_p = float(temperature), int(top_k), float(top_p)
        self._search = tf.function(self._search_ids, jit_compile=jit_compile)

    def _search_ids(self, prompt_ids, lengths, seed):
        batch = tf.shape(prompt_ids)[0]
        state = self.stepper.initial_state(batch, self.max_length)
        steps = self.max_length - 1
        kwargs = dict(forced_ids=prompt_ids, forced_lengths=lengths)
        if self.temperature == 0:
            return search.greedy_search(self.stepper, state, prompt_ids[:, 0], steps, **kwargs)
        return search.sample(self.stepper, state, prompt_ids[:, 0], steps,
                             temperature=self.temperature, top_k=self.top_k, top_p=self.top_p,
                             seed=seed, **kwargs)

    def _tokenize(self, prompt):
        ids = self.tokenizer(prompt)
        if isinstance(ids, list):  # keras-hub gives Python lists when run eagerly
            ids = tf.ragged.constant(ids, dtype=tf.int32, ragged_rank=1)
        ids = tf.cast(ids, tf.int32)
        lengths = ids.row_lengths()
        tf.debugging.assert_positive(lengths, message="Every prompt must have at least one "
                                                      "token; received an empty prompt.")
        keep = self.max_length - 1
        ids = ids[:, -keep:]  # the end of a long prompt
        return ids.to_tensor(shape=[None, keep]), tf.cast(tf.minimum(lengths, keep), tf.int32)

    def serving_signatures(self):
        """The SavedModel signatures `export_saved_model` writes."""
        generate = self.generate.get_concrete_function()
        return {"serving_default": generate, "generate": generate}

    def asset_tokenizers(self):
        return {"": self.tokenizer}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="prompt"),
                                  tf.TensorSpec([], tf.int32, name="seed")])
    def generate(self, prompt, seed):
        prompt_ids, lengths = self._tokenize(prompt)
        token_ids, scores = self._search(prompt_ids, lengths, seed)
        full = tf.concat([prompt_ids[:, :1], token_ids], axis=1)
        # Token id 0 is padding; the model never emits it before the end.
        text = self.tokenizer.detokenize(tf.RaggedTensor.from_tensor(full, padding=0))
        return {"text": text, "token_ids": token_ids, "scores": scores}
