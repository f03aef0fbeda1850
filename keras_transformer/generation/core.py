"""The one search core that every front door wraps.

`IdDecoder` (ids, every backend), `Translator` and `TextGenerator` (text,
TensorFlow, exported as SavedModels) and the attention pictures all decode
through a `SearchCore`: it makes the model's stepper, checks the length
against the model's once, builds the initial cache (running the encoder for
an encoder–decoder) and runs the configured search of
`keras_transformer.generation.search`. What differs between the front doors
is only what comes in and goes out (ids or strings, compiled how).

    core = SearchCore(model, max_length=40, decoding=DecodingConfig("beam"))
    ids, scores = core.search(source_ids)                    # encoder–decoder
    ids, scores = core.search(prompt_ids, prompt_lengths)    # decoder-only

A batch of one row is searched as two (the row and a copy; the copy's
output is dropped) when the search keeps one hypothesis per row (greedy,
sampling, a beam of 1): XLA on CPU compiles a one-row matrix product into a
matrix–vector loop that runs on one core, and a two-row product into a
matrix–matrix product on all of them. On 2 CPU cores a 124M-parameter
GPT-2 decodes one row 1.6× faster this way (benchmarks/pretrained_decoding.py).
A row's output does not depend on the rows beside it, so the result is the
same.
"""

from keras import ops

from keras_transformer.data.special_tokens import DEFAULT_SPECIAL_IDS, special_ids_of
from keras_transformer.generation.decoding import DecodingConfig
from keras_transformer.generation.steppers import CausalLMStepper, EncoderDecoderStepper, Stepper

_STEPPERS = {None: Stepper, "encoder_decoder": EncoderDecoderStepper,
             "causal_lm": CausalLMStepper}


class SearchCore:
    """A model's cached search, configured once.

    Args:
        model: a model with the cached-decoding protocol (any model stacked
            from the package's layers, or one implementing
            `keras_transformer.models.cached_decoding`).
        max_length: int ≥ 1, the positions filled after position 0 (the
            `[START]` token or a prompt's first token); at most the model's
            `max_length`, when it has one (the decoder is fed positions
            `0 … max_length - 1`).
        decoding: a `DecodingConfig` (default: greedy).
        kind: None (either), `"encoder_decoder"` or `"causal_lm"`: the kind
            of model the caller needs (another kind is a `ValueError`).
        special_ids: a `SpecialIds`: the start, end, padding and suppressed
            ids. Default: the model's (`DecodingTraits.special_ids`), else
            `fallback`'s (a tokenizer), else the package's reserved ids.
        fallback: where special ids come from when neither `special_ids`
            nor the model names them (the front doors pass their target
            tokenizer).
    """

    def __init__(self, model, max_length, decoding=None, *, kind=None, special_ids=None,
                 fallback=None):
        if kind not in _STEPPERS:
            raise ValueError(f"`kind` must be one of {sorted(map(str, _STEPPERS))}. "
                             f"Received: {kind!r}")
        self.stepper = _STEPPERS[kind](model)
        self.max_length = int(max_length)
        limit = self.stepper.max_length
        if self.max_length < 1 or (limit is not None and self.max_length > limit):
            raise ValueError(
                f"`max_length` must be in [1, {limit}] (the positions the model accepts): "
                f"the decoder is fed positions 0 … max_length - 1. Received: {max_length}")
        self.decoding = decoding or DecodingConfig()
        if special_ids is None:
            special_ids = self.stepper.traits.special_ids
        self.special_ids = special_ids_of(special_ids if special_ids is not None
                                          else fallback, DEFAULT_SPECIAL_IDS)

    @property
    def is_encoder_decoder(self):
        return self.stepper.is_encoder_decoder

    def search(self, inputs, prompt_lengths=None, seed=None):
        """`(ids (B, max_length), scores (B,))` for a batch.

        Args:
            inputs: encoder–decoder: source ids `(B, S)` int, right-padded
                with the padding id.
                Decoder-only: prompts `(B, P)` int, position 0 first.
            prompt_lengths: decoder-only: `(B,)` int prompt lengths (≥ 1).
            seed: scalar sampling seed, or None for the config's.
        """
        if not self._one_hypothesis_per_row:
            return self._search(inputs, prompt_lengths, seed)
        rows = ops.shape(inputs)[0]
        if isinstance(rows, int):  # a static batch size (JAX, a traced TF shape)
            if rows != 1:
                return self._search(inputs, prompt_lengths, seed)
            index = ops.zeros([2], "int32")
        else:  # TensorFlow with a dynamic batch size: pad when it is 1
            index = ops.minimum(ops.arange(ops.maximum(rows, 2), dtype="int32"), rows - 1)
        if prompt_lengths is not None:
            prompt_lengths = ops.take(prompt_lengths, index, axis=0)
        ids, scores = self._search(ops.take(inputs, index, axis=0), prompt_lengths, seed)
        return ids[:rows], scores[:rows]

    @property
    def _one_hypothesis_per_row(self):
        """Whether the search steps one row per input (no beams), the case
        `search` runs with at least two rows."""
        return self.decoding.strategy != "beam" or self.decoding.beam_size == 1

    def _search(self, inputs, prompt_lengths, seed):
        stepper = self.stepper
        if stepper.is_encoder_decoder:
            state = stepper.initial_state(inputs, self.max_length)
            first = ops.full((ops.shape(inputs)[0],), self.special_ids.start, "int32")
            return self.decoding.search(stepper, state, first, self.max_length, seed=seed,
                                        special_ids=self.special_ids)
        state = stepper.initial_state(ops.shape(inputs)[0], self.max_length)
        return self.decoding.search(stepper, state, inputs[:, 0], self.max_length,
                                    forced_ids=inputs, forced_lengths=prompt_lengths,
                                    seed=seed, special_ids=self.special_ids)

    def greedy_with_attention(self, source_ids):
        """Greedy decoding of one source, eagerly, with the cross-attention.

        Args:
            source_ids: `(1, S)` int source ids.

        Returns:
            `(tokens, attention)`: the generated ids up to and including
            the end id, and per step a list (one entry per decoder block) of
            `(N, S)` cross-attention probabilities.
        """
        stepper = self.stepper
        state = stepper.initial_state(source_ids, self.max_length)
        token = ops.convert_to_tensor([self.special_ids.start], "int32")
        tokens, attention = [], []
        for index in range(self.max_length):
            logits, state, scores = stepper.step_with_attention(token, index, state)
            token = ops.cast(ops.argmax(logits, axis=-1), "int32")
            tokens.append(int(ops.convert_to_numpy(token)[0]))
            attention.append([ops.convert_to_numpy(block[0]) for block in scores])
            if tokens[-1] == self.special_ids.end:
                break
        return tokens, attention


class SearchFront:
    """What each front door (`IdDecoder`, `Translator`, `TextGenerator`) shows of
    its `SearchCore`, kept in `self.core`."""

    @property
    def decoding(self):
        """The `DecodingConfig` of the search."""
        return self.core.decoding

    @property
    def special_ids(self):
        """The `SpecialIds` the search reads (start, end, padding, suppressed)."""
        return self.core.special_ids

    @property
    def stepper(self):
        """The model's stepper (`EncoderDecoderStepper` or `CausalLMStepper`)."""
        return self.core.stepper
