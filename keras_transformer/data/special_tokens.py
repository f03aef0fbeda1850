"""The token ids that decoding, training and serving give a meaning to.

The package's own vocabularies (`keras_transformer.data.tokenizers`) reserve
their first ids: `[PAD]`=0, `[UNK]`=1, `[START]`=2, `[END]`=3. A vocabulary
from elsewhere (GPT-2's, BART's, a SentencePiece model's) has its own, and id
0 is often a real token there. `SpecialIds` says which ids are which; it is a
property of a model (`TransformerModel(..., special_ids=...)`, or
`DecodingTraits.special_ids` for a model with a cache of its own) and of a
tokenizer (`special_ids_of(tokenizer)`), and the searches, `strip_special`,
`IdDecoder`, `Translator`, `TextGenerator`, the pipelines and the loss read
it. Without one, everything uses `SpecialIds()`: the package's ids.

Padding. A batch of sequences of different lengths is right-padded with
`pad`. What the model reads as padding is its embedding's business:
`PositionalEmbedding(mask_zero=True)` masks id 0, `padding_id=p` masks id
`p`, and `mask_zero=False` (no `padding_id`) masks nothing, for a vocabulary
whose every id is a real token: a decoder-only model then needs no mask for
right padding (causal attention never reads ahead), and an encoder's padding
must be an id the vocabulary keeps for it (BART's `<pad>`). Labels the loss
must skip are `SpecialIds.label_padding`: `pad`, or -1 where `pad` is also a
real token (GPT-2 pads with its end token); `MaskedSparseCategoricalCrossentropy`
skips negative labels always.
"""

import dataclasses

RESERVED_TOKENS = ("[PAD]", "[UNK]", "[START]", "[END]")
PAD_ID, UNK_ID, START_ID, END_ID = 0, 1, 2, 3


@dataclasses.dataclass(frozen=True)
class SpecialIds:
    """Which token ids mean what, for one vocabulary.

    Args:
        start: int, the id an encoder–decoder's decoder starts from (position
            0), and the id put before a decoder-only model's prompts when
            `prompt_start` is True.
        end: int, the id that ends a generated sequence.
        pad: int, the id batches are right-padded with (sources, prompts,
            decoder inputs), and that fills a generated sequence after `end`.
        unknown: int or None, the out-of-vocabulary id (kept in outputs; the
            CTranslate2 export names it).
        suppressed: tuple of ints, ids that are never generated. The
            package's vocabularies suppress `[PAD]`: a `[PAD]` mid-sequence
            would be read as padding by a full pass.
        prompt_start: bool, whether a decoder-only model's prompts begin with
            `start` (GPT-2 and Llama were trained on sequences that do).
        stripped: tuple of ints, ids dropped from decoded text besides
            `start`, `end` and `pad` (the package's vocabularies drop
            `[UNK]` too). Every row is also cut at its first `end`.
    """

    start: int = START_ID
    end: int = END_ID
    pad: int = PAD_ID
    unknown: int | None = UNK_ID
    suppressed: tuple = (PAD_ID,)
    prompt_start: bool = False
    stripped: tuple = (UNK_ID,)

    def __post_init__(self):
        for name in ("start", "end", "pad"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"`{name}` must be an int >= 0. Received: {name}={value!r}")
        for name in ("suppressed", "stripped"):
            values = tuple(int(i) for i in getattr(self, name))
            if any(i < 0 for i in values):
                raise ValueError(f"`{name}` must hold ids >= 0. Received: {name}={values}")
            object.__setattr__(self, name, values)
        if self.end in self.suppressed:
            raise ValueError(f"The end id {self.end} cannot be suppressed: generation could "
                             f"never end. Received: suppressed={self.suppressed}")

    @property
    def label_padding(self):
        """The label id of padding positions: `pad`, or -1 when `pad` is also
        `start` or `end` (a real token the loss must learn)."""
        return -1 if self.pad in (self.start, self.end) else self.pad

    @property
    def removed(self):
        """Every id dropped from decoded text: `start`, `end`, `pad` and `stripped`."""
        return tuple(sorted({self.start, self.end, self.pad, *self.stripped}))

    def to_dict(self):
        """A JSON-ready dict (`SpecialIds(**d)` reads it back)."""
        values = dataclasses.asdict(self)
        return {key: list(value) if isinstance(value, tuple) else value
                for key, value in values.items()}

    @classmethod
    def from_dict(cls, values):
        """`SpecialIds` from `to_dict()`'s output (unknown keys are an error)."""
        names = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"Unknown SpecialIds fields {unknown}; expected some of "
                             f"{sorted(names)}.")
        return cls(**{key: tuple(value) if isinstance(value, list) else value
                      for key, value in values.items()})


DEFAULT_SPECIAL_IDS = SpecialIds()


def special_ids_of(value, default=DEFAULT_SPECIAL_IDS):
    """The `SpecialIds` of a tokenizer, a model, a dict or a `SpecialIds`.

    - `SpecialIds`: itself; a dict: `SpecialIds.from_dict`.
    - An object with a `special_ids` attribute (a `TransformerModel`, a
      tokenizer the caller labelled): that, when it is not None.
    - A model whose `decoding_traits()` names special ids: those.
    - A keras-hub tokenizer that knows its end token (`end_token_id`, as
      GPT-2's, Llama's and BART's do): its `start_token_id`, `end_token_id`
      and, where the vocabulary names a padding token (BART's `<pad>`),
      `pad_token_id` (suppressed); otherwise padding is the end token (as
      Hugging Face pads GPT-2). Prompts begin with the start token when
      there is one, as keras-hub's `CausalLM` preprocessors begin them.
    - Anything else (the package's tokenizers, `None`): `default`.
    """
    if value is None:
        return default
    if isinstance(value, SpecialIds):
        return value
    if isinstance(value, dict):
        return SpecialIds.from_dict(value)
    own = getattr(value, "special_ids", None)
    if own is not None:
        return special_ids_of(own, default)
    traits = getattr(value, "decoding_traits", None)
    if callable(traits):
        found = getattr(traits(), "special_ids", None)
        if found is not None:
            return found
    end = getattr(value, "end_token_id", None)
    if end is not None:
        return _from_keras_hub_tokenizer(value, int(end))
    return default


def _from_keras_hub_tokenizer(tokenizer, end):
    start = getattr(tokenizer, "start_token_id", None)
    prompt_start = start is not None  # Qwen's has none
    start = end if start is None else int(start)
    # keras-hub sets `pad_token_id = 0` on GPT-2's, Llama's, Mistral's and
    # Qwen's tokenizers, where 0 is a real token ("!", "<unk>"): padding is
    # a token of its own only where the vocabulary names one (BART's <pad>).
    # Otherwise pad with the end token, as Hugging Face does for GPT-2.
    own_pad = "pad_token" in getattr(tokenizer, "_special_token_attrs", ())
    pad = int(tokenizer.pad_token_id) if own_pad else end
    return SpecialIds(start=start, end=end, pad=pad, unknown=None,
                      suppressed=(pad,) if own_pad else (),
                      prompt_start=prompt_start, stripped=())
