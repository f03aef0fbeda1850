"""Greedy decoding by full passes (the simple reference).

`greedy_translate` (encoder–decoder) and `greedy_generate` (decoder-only)
re-run the whole model on the growing prefix at every step: slow, but
obviously right, which makes them the references that the cached decoders
are tested against.
"""

import numpy as np
from keras import ops

from keras_transformer.data.special_tokens import DEFAULT_SPECIAL_IDS
from keras_transformer.models.graph import read_structure


def _most_probable(logits, special):
    """The most probable token of each row, the suppressed ids excluded (as in
    the searches)."""
    logits = np.array(ops.convert_to_numpy(logits), dtype="float32")
    logits[:, list(special.suppressed)] = -np.inf
    return logits.argmax(-1).astype("int32")


def _source_first(model):
    """Whether the model's first input is the source (read from its graph)."""
    try:
        structure = read_structure(model)
    except ValueError:  # a model of its own shape: inputs are [source, target]
        return True
    return structure.encoder is None or structure.encoder.input_index == 0


def greedy_translate(model, source_ids, max_length, batch_size=256, special_ids=None):
    """Greedy target ids `(B, ≤ max_length)` for `source_ids` `(B, S)`.

    Each row starts from the start id (`[START]`) and takes the most probable
    token until the end id (`[END]`) or `max_length` tokens; positions after
    the end are padding. `special_ids`: a `SpecialIds`, the package's by
    default.
    """
    special = special_ids or DEFAULT_SPECIAL_IDS
    source_ids = np.asarray(source_ids, "int32")
    source_first = _source_first(model)
    outputs = []
    for start in range(0, len(source_ids), batch_size):
        source = source_ids[start : start + batch_size]
        target = np.full((len(source), 1), special.start, "int32")
        finished = np.zeros(len(source), bool)
        for _ in range(max_length):
            inputs = [source, target] if source_first else [target, source]
            logits = model(inputs, training=False)
            token = _most_probable(logits[:, -1], special)
            token = np.where(finished, special.pad, token)
            target = np.concatenate([target, token[:, None]], axis=1)
            finished |= token == special.end
            if finished.all():
                break
        outputs.append(target[:, 1:])
    width = max(o.shape[1] for o in outputs)
    return np.concatenate([np.pad(o, ((0, 0), (0, width - o.shape[1])),
                                  constant_values=special.pad) for o in outputs])


def greedy_generate(model, prompt_ids, max_length, special_ids=None):
    """Greedy continuation of equal-length prompts `(B, P)` to `max_length` tokens.

    Returns `(B, max_length - 1)` ids: positions 1 … max_length - 1 (the
    prompt after its first token, then the chosen tokens), padding after the
    end id, like the cached searches' output. `special_ids`: a `SpecialIds`,
    the package's by default.
    """
    special = special_ids or DEFAULT_SPECIAL_IDS
    ids = np.asarray(prompt_ids, "int32")
    finished = np.zeros(len(ids), bool)
    while ids.shape[1] < max_length:
        logits = model(ids, training=False)
        token = _most_probable(logits[:, -1], special)
        token = np.where(finished, special.pad, token)
        ids = np.concatenate([ids, token[:, None]], axis=1)
        finished |= token == special.end
    return ids[:, 1:]
