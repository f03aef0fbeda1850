"""tf.data pipelines: text → token ids → teacher-forced, length-bucketed batches.

Everything runs in TensorFlow ops (the keras-hub tokenizers are TF layers), so
no Python runs per example once the pipeline is built.

Translation elements are `((source_ids, target_input_ids), target_label_ids)`:
- `target_input_ids = [START] y` and `target_label_ids = y [END]` (teacher
  forcing: the labels are the decoder inputs shifted left by one);
- all int32, padded with the padding id (`[PAD]` = 0 for the package's
  vocabularies; `SpecialIds.label_padding` for the labels) to the longest
  sequence of their batch.

Length policy (`max_length`, counted in tokens, `[START]`/`[END]` included):
- `"drop"` (default): pairs whose source or target does not fit are left out;
- `"truncate"`: the source keeps its first `max_length` tokens and the target
  its first `max_length - 1` (so that `[START] y` and `y [END]` fit).

Batching: with `bucket_boundaries`, examples are grouped by length so that a
batch holds sequences of similar length and little padding, padded to the
bucket's boundary (so that an XLA-compiled model sees one shape per bucket,
not one per batch); with
`tokens_per_batch`, each bucket's batch size is chosen so that a batch holds
about that many tokens (long sentences in small batches, short ones in big).

Options: every pipeline here shards by data under multi-worker training and
runs with tf.data's autotuning off (see `_with_options`: with it on, `fit`
stalled up to 20 s an epoch).
"""

import numpy as np
import tensorflow as tf

from keras_transformer.data.special_tokens import special_ids_of

_LENGTH_POLICIES = ("drop", "truncate")
DEFAULT_BOUNDARIES = (8, 12, 16, 24, 32, 48, 64, 96, 128)


def _tokenize(tokenizer, text):
    ids = tokenizer(text)
    if isinstance(ids, tf.RaggedTensor):
        ids = ids.flat_values
    return tf.cast(ids, tf.int32)


def translation_dataset(
    pairs,
    source_tokenizer,
    target_tokenizer,
    *,
    batch_size=64,
    max_length=64,
    length_policy="drop",
    bucket_boundaries=DEFAULT_BOUNDARIES,
    tokens_per_batch=None,
    shuffle_buffer=None,
    seed=None,
    cache=True,
    special_ids=None,
):
    """Teacher-forced translation batches from `(source, target)` strings.

    Args:
        pairs: a list of `(source, target)` string pairs, or a `tf.data.Dataset`
            of such string pairs.
        source_tokenizer, target_tokenizer: keras-hub tokenizers (see
            `keras_transformer.data.tokenizers`).
        batch_size: examples per batch (without `tokens_per_batch`).
        max_length: the longest sequence kept, in tokens.
        length_policy: `"drop"` or `"truncate"` (see the module docstring).
        bucket_boundaries: sequence-length bucket boundaries, or None for
            plain padded batches.
        tokens_per_batch: with buckets, about this many tokens a batch
            (overrides `batch_size` per bucket).
        shuffle_buffer: examples to shuffle over (None: no shuffling).
        seed: shuffling seed.
        cache: whether to cache the tokenized examples in memory.
        special_ids: a `SpecialIds`: the start and end ids around the
            target, the padding ids (default: the target tokenizer's,
            `special_ids_of`, else the package's reserved ids).

    Returns:
        A `tf.data.Dataset` of `((source_ids, target_input_ids),
        target_label_ids)`, int32, shapes `(B, S)`, `(B, T)`, `(B, T)`.
    """
    if length_policy not in _LENGTH_POLICIES:
        raise ValueError(
            f"`length_policy` must be one of {_LENGTH_POLICIES}. Received: {length_policy!r}"
        )
    special = special_ids_of(special_ids if special_ids is not None else target_tokenizer)
    if isinstance(pairs, tf.data.Dataset):
        dataset = pairs
    else:
        sources, targets = zip(*pairs) if pairs else ((), ())
        dataset = tf.data.Dataset.from_tensor_slices(
            (tf.constant(sources, tf.string), tf.constant(targets, tf.string))
        )

    def encode(source, target):
        return _tokenize(source_tokenizer, source), _tokenize(target_tokenizer, target)

    dataset = dataset.map(encode, num_parallel_calls=tf.data.AUTOTUNE)
    if length_policy == "drop":
        dataset = dataset.filter(
            lambda s, t: tf.logical_and(
                tf.size(s) <= max_length, tf.size(t) + 1 <= max_length
            )
        )
    else:
        dataset = dataset.map(lambda s, t: (s[:max_length], t[: max_length - 1]))

    def teacher_forcing(source, target):
        start = tf.constant([special.start], tf.int32)
        end = tf.constant([special.end], tf.int32)
        return source, tf.concat([start, target], 0), tf.concat([target, end], 0)

    dataset = dataset.map(teacher_forcing, num_parallel_calls=tf.data.AUTOTUNE)
    if cache:
        dataset = dataset.cache()
    if shuffle_buffer:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    padding = (special.pad, special.pad, special.label_padding)
    dataset = _batch(dataset, batch_size, bucket_boundaries, tokens_per_batch, max_length,
                     padding)
    dataset = dataset.map(lambda s, ti, tl: ((s, ti), tl))
    return _with_options(dataset).prefetch(tf.data.AUTOTUNE)


def _batch(dataset, batch_size, boundaries, tokens_per_batch, max_length, padding=(0, 0, 0)):
    shapes = ([None], [None], [None])
    padding = tuple(tf.constant(value, tf.int32) for value in padding)
    if not boundaries:
        return dataset.padded_batch(batch_size, padded_shapes=shapes, padding_values=padding)
    # Every kept example is at most `max_length` long: the last bucket ends
    # there (padding to a boundary needs a finite last one).
    boundaries = [b for b in boundaries if b <= max_length] + [max_length + 1]
    if tokens_per_batch:
        sizes = [max(1, tokens_per_batch // (upper - 1)) for upper in boundaries]
    else:
        sizes = [batch_size] * len(boundaries)
    sizes.append(1)  # the bucket past the last boundary, never used
    return dataset.bucket_by_sequence_length(
        element_length_func=lambda s, ti, tl: tf.maximum(tf.size(s), tf.size(ti)),
        bucket_boundaries=boundaries,
        bucket_batch_sizes=sizes,
        padded_shapes=shapes,
        padding_values=padding,
        # A few fixed widths: an XLA-compiled model compiles once per shape.
        pad_to_bucket_boundary=True,
    )


def language_model_dataset(
    token_ids, sequence_length, *, batch_size=32, shuffle_buffer=None, seed=None,
    random_offset=False, drop_remainder=True,
):
    """Next-token windows from one long token stream.

    Splits `token_ids` (1-D) into consecutive chunks of `sequence_length + 1`
    tokens; each gives `inputs = chunk[:-1]`, `labels = chunk[1:]`.

    Args:
        token_ids: 1-D int array, the whole stream.
        sequence_length: int, tokens per window.
        batch_size: int; the last partial batch is dropped.
        shuffle_buffer: int or None, shuffle the windows each epoch.
        seed: int or None, the shuffle and offset seed.
        random_offset: bool. If True, the chunk boundaries move by a random
            offset in `[0, sequence_length]` each epoch, so that over epochs
            the model sees the text cut at every place (for training). If
            False, the windows are fixed (for validation: each token is
            scored once).
        drop_remainder: bool, drop the last partial batch (keep it for
            validation, so that every window is scored).

    Returns:
        A `tf.data.Dataset` of `(inputs, labels)`, int32 `(B, sequence_length)`.
    """
    ids = tf.constant(np.asarray(token_ids), tf.int32)
    if ids.shape.rank != 1 or ids.shape[0] < sequence_length + 1:
        raise ValueError(
            f"`token_ids` must be 1-D with at least sequence_length + 1 = "
            f"{sequence_length + 1} tokens. Received shape {tuple(ids.shape)}."
        )
    window = sequence_length + 1

    def chunks(offset):
        stream = ids[offset:]
        count = tf.shape(stream)[0] // window
        return tf.data.Dataset.from_tensor_slices(tf.reshape(stream[: count * window],
                                                             [count, window]))

    if random_offset:
        # A new offset each time the dataset is iterated (each epoch).
        offsets = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
        dataset = offsets.take(1).flat_map(lambda r: chunks(tf.cast(r % window, tf.int32)))
    else:
        dataset = chunks(0).cache()
    dataset = dataset.map(lambda c: (c[:-1], c[1:]), num_parallel_calls=tf.data.AUTOTUNE)
    if shuffle_buffer:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    return _with_options(dataset).prefetch(tf.data.AUTOTUNE)


def causal_lm_dataset(texts, tokenizer, sequence_length, *, batch_size=16, special_ids=None,
                      shuffle_buffer=None, seed=None, cache=True):
    """Next-token batches from whole documents, one per row (fine-tuning).

    Each text becomes `[start] tokens [end]` (`[start]` when
    `special_ids.prompt_start`, as keras-hub's `CausalLM` preprocessors
    frame them), cut to `sequence_length + 1` tokens; `inputs` are all but
    the last, `labels` all but the first. Rows are right-padded with
    `special_ids.pad`, labels with `special_ids.label_padding`, which
    `MaskedSparseCategoricalCrossentropy(pad_id=special_ids.label_padding)`
    skips.

    Args:
        texts: a list of strings, or a `tf.data.Dataset` of strings.
        tokenizer: a keras-hub tokenizer.
        sequence_length: int, tokens per row.
        batch_size: int, rows per batch.
        special_ids: a `SpecialIds` (default: the tokenizer's,
            `special_ids_of`).
        shuffle_buffer, seed: shuffle the documents each epoch.
        cache: whether to cache the tokenized documents in memory.

    Returns:
        A `tf.data.Dataset` of `(inputs, labels)`, int32 `(B, sequence_length)`.
    """
    special = special_ids_of(special_ids if special_ids is not None else tokenizer)
    dataset = texts if isinstance(texts, tf.data.Dataset) else \
        tf.data.Dataset.from_tensor_slices(tf.constant(list(texts), tf.string))

    def frame(text):
        ids = _tokenize(tokenizer, text)
        if special.prompt_start:
            ids = tf.concat([[special.start], ids], 0)
        ids = tf.concat([ids, [special.end]], 0)[: sequence_length + 1]
        return ids[:-1], ids[1:]

    dataset = dataset.map(frame, num_parallel_calls=tf.data.AUTOTUNE)
    if cache:
        dataset = dataset.cache()
    if shuffle_buffer:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    padding = (tf.constant(special.pad, tf.int32), tf.constant(special.label_padding, tf.int32))
    dataset = dataset.padded_batch(batch_size, padded_shapes=([sequence_length],
                                                              [sequence_length]),
                                   padding_values=padding)
    return _with_options(dataset).prefetch(tf.data.AUTOTUNE)


def _with_options(dataset):
    """The options of every pipeline here.

    - Multi-worker runs shard by data (the sources are tensors, not files):
      batches are global batches, and each worker keeps its share of each.
    - tf.data's autotuning is off. With it on (TensorFlow 2.21, on 2 busy
      cores), destroying an iterator blocked until about 41 s after the
      iterator started, when autotuning's optimization loop (its period
      doubles) next woke: up to 20 s. `model.fit` destroys the training
      data's previous iterator at each epoch and the validation data's at
      each evaluation, so the translation recipe stalled 14–20 s in most
      epochs of about 20 s of training (docs/benchmarks.md). Without
      autotuning, a map with `num_parallel_calls=AUTOTUNE` runs one call per
      core (at most 16), and `prefetch(AUTOTUNE)` still grows its buffer
      while the consumer waits.
    """
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    options.autotune.enabled = False
    return dataset.with_options(options)


def padding_fraction(dataset, batches=None):
    """The fraction of label positions that are padding over `batches` batches."""
    padded = total = 0
    for _, labels in dataset.take(batches) if batches else dataset:
        labels = labels.numpy()
        padded += int((labels == 0).sum())
        total += labels.size
    return padded / max(total, 1)
