import numpy as np
import pytest
import tensorflow as tf

from keras_transformer.data import generate_pairs
from keras_transformer.data import pipelines
from keras_transformer.data import tokenizers as tk

# A hand-made vocabulary: ids are known exactly.
VOCABULARY = list(tk.RESERVED_TOKENS) + ["tengo", "un", "libro", "dos", "libros", "i",
                                         "have", "one", "book", "two", "books", "."]
ID = {token: i for i, token in enumerate(VOCABULARY)}


@pytest.fixture(scope="module")
def tokenizer():
    return tk.wordpiece_tokenizer(VOCABULARY)


def test_teacher_forcing_shift_is_exact(tokenizer):
    pairs = [("I have one book.", "Tengo un libro.")]
    dataset = pipelines.translation_dataset(pairs, tokenizer, tokenizer, bucket_boundaries=None)
    (source, target_input), labels = next(iter(dataset))
    np.testing.assert_array_equal(source[0], [ID["i"], ID["have"], ID["one"], ID["book"], ID["."]])
    y = [ID["tengo"], ID["un"], ID["libro"], ID["."]]
    np.testing.assert_array_equal(target_input[0], [tk.START_ID] + y)
    np.testing.assert_array_equal(labels[0], y + [tk.END_ID])


def test_element_spec_and_padding(tokenizer):
    pairs = [("I have one book.", "Tengo un libro."), ("two books", "dos libros")]
    dataset = pipelines.translation_dataset(pairs, tokenizer, tokenizer, bucket_boundaries=None)
    (source_spec, input_spec), label_spec = dataset.element_spec
    for spec in (source_spec, input_spec, label_spec):
        assert spec.dtype == tf.int32 and spec.shape.rank == 2
    (source, target_input), labels = next(iter(dataset))
    np.testing.assert_array_equal(source[1], [ID["two"], ID["books"], 0, 0, 0])
    np.testing.assert_array_equal(labels[1], [ID["dos"], ID["libros"], tk.END_ID, 0, 0])
    np.testing.assert_array_equal(target_input[1], [tk.START_ID, ID["dos"], ID["libros"], 0, 0])


def test_length_policies(tokenizer):
    pairs = [("I have one book.", "Tengo un libro."), ("two books", "dos libros")]
    dropped = pipelines.translation_dataset(pairs, tokenizer, tokenizer, max_length=4,
                                            bucket_boundaries=None)
    (source, _), _ = next(iter(dropped))
    assert source.shape[0] == 1  # the 5-token source is dropped
    truncated = pipelines.translation_dataset(pairs, tokenizer, tokenizer, max_length=3,
                                              length_policy="truncate", bucket_boundaries=None)
    (source, target_input), labels = next(iter(truncated))
    assert source.shape == (2, 3) and target_input.shape == (2, 3) and labels.shape == (2, 3)
    np.testing.assert_array_equal(labels[0], [ID["tengo"], ID["un"], tk.END_ID])
    with pytest.raises(ValueError, match="'cut'"):
        pipelines.translation_dataset(pairs, tokenizer, tokenizer, length_policy="cut")


def test_bucketing_wastes_less_on_padding_and_keeps_every_example():
    pairs = generate_pairs(3000, seed=0)
    source_tokenizer = tk.train_wordpiece([en for en, _ in pairs], 500)
    target_tokenizer = tk.train_wordpiece([es for _, es in pairs], 500)
    kwargs = dict(batch_size=64, max_length=40, shuffle_buffer=3000, seed=1)
    plain = pipelines.translation_dataset(pairs, source_tokenizer, target_tokenizer,
                                          bucket_boundaries=None, **kwargs)
    bucketed = pipelines.translation_dataset(pairs, source_tokenizer, target_tokenizer, **kwargs)
    plain_padding = pipelines.padding_fraction(plain)
    bucketed_padding = pipelines.padding_fraction(bucketed)
    assert bucketed_padding < plain_padding / 2, (plain_padding, bucketed_padding)
    count = sum(int(labels.shape[0]) for _, labels in bucketed)
    assert count == sum(int(labels.shape[0]) for _, labels in plain) > 2900


def test_token_budget_gives_bigger_batches_to_shorter_buckets(tokenizer):
    pairs = [("two books", "dos libros")] * 50 + [("I have one book. " * 3, "tengo un libro. " * 3)] * 50
    dataset = pipelines.translation_dataset(
        pairs, tokenizer, tokenizer, bucket_boundaries=(8,), tokens_per_batch=64
    )
    largest = {}
    for (source, _), _ in dataset:
        width = int(source.shape[1])
        largest[width] = max(largest.get(width, 0), int(source.shape[0]))
    # Padded to the bucket boundaries minus one: widths 7 (64 // 7 = 9 a batch)
    # and max_length = 64 (one a batch).
    assert largest == {7: 9, 64: 1}


def test_language_model_windows_are_shifted_by_one():
    ids = np.arange(1, 42)
    dataset = pipelines.language_model_dataset(ids, 9, batch_size=2)
    inputs, labels = next(iter(dataset))
    np.testing.assert_array_equal(inputs[0], np.arange(1, 10))
    np.testing.assert_array_equal(labels[0], np.arange(2, 11))
    np.testing.assert_array_equal(inputs[1], np.arange(11, 20))
    assert sum(int(x.shape[0]) for x, _ in dataset) == 4  # 41 // 10 windows, batches of 2


def test_pipelines_shard_by_data_with_autotuning_off(tokenizer):
    # Autotuning on made `fit` stall up to 20 s an epoch when it destroyed the
    # previous epoch's iterator (docs/benchmarks.md, "Stalls between epochs"); the options must
    # reach the dataset that `fit` iterates.
    translation = pipelines.translation_dataset(
        [("I have one book.", "Tengo un libro.")] * 4, tokenizer, tokenizer, shuffle_buffer=4
    )
    language_model = pipelines.language_model_dataset(
        np.arange(50), 4, batch_size=2, shuffle_buffer=8, random_offset=True
    )
    for dataset in (translation, language_model):
        options = dataset.options()
        assert options.autotune.enabled is False
        assert (options.experimental_distribute.auto_shard_policy
                == tf.data.experimental.AutoShardPolicy.DATA)
