"""Greedy decoding for the encoder–decoder model (the simple reference).

`greedy_translate` re-runs the whole model on the growing prefix at every step:
slow, but obviously right, which makes it the reference that the cached
decoders are tested against.
"""

import numpy as np

from keras_transformer.data.tokenizers import END_ID, PAD_ID, START_ID


def greedy_translate(model, source_ids, max_length, batch_size=256):
    """Greedy target ids `(B, ≤ max_length)` for `source_ids` `(B, S)`.

    Each row starts from `[START]` and takes the most probable token until
    `[END]` or `max_length` tokens; positions after `[END]` are `[PAD]`.
    """
    source_ids = np.asarray(source_ids, "int32")
    outputs = []
    for start in range(0, len(source_ids), batch_size):
        source = source_ids[start : start + batch_size]
        target = np.full((len(source), 1), START_ID, "int32")
        finished = np.zeros(len(source), bool)
        for _ in range(max_length):
            logits = model([source, target], training=False)
            token = np.asarray(logits[:, -1]).argmax(-1).astype("int32")
            token = np.where(finished, PAD_ID, token)
            target = np.concatenate([target, token[:, None]], axis=1)
            finished |= token == END_ID
            if finished.all():
                break
        outputs.append(target[:, 1:])
    width = max(o.shape[1] for o in outputs)
    return np.concatenate([np.pad(o, ((0, 0), (0, width - o.shape[1]))) for o in outputs])
