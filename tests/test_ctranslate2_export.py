"""The CTranslate2 mapping: the engine decodes exactly what the package decodes."""

import keras
import numpy as np
import pytest

from keras_transformer.generation import DecodingConfig, IdDecoder
from keras_transformer.models import TransformerConfig, build_causal_lm, build_transformer

ctranslate2 = pytest.importorskip("ctranslate2")
from keras_transformer.export.ctranslate2 import (  # noqa: E402
    generate_options,
    to_ctranslate2,
    translate_options,
)

V, L = 40, 16
VOCABULARY = ["[PAD]", "[UNK]", "[START]", "[END]"] + [f"w{i}" for i in range(4, V)]


class Vocabulary:
    """What `to_ctranslate2` reads of a tokenizer."""

    def get_vocabulary(self):
        return VOCABULARY


def _model(**options):
    keras.utils.set_random_seed(0)
    sizes = dict(vocab_size=V, max_length=L, embed_dim=32, num_heads=4, ffn_dim=64,
                 num_encoder_layers=2, num_decoder_layers=2, dropout=0.0)
    return build_transformer(TransformerConfig(**{**sizes, **options}))


def _log_softmax(logits):
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def _until_end(row):
    row = list(row)
    return row[: row.index(3)] if 3 in row else row


@pytest.mark.parametrize("options", [
    {},  # the paper: post-LN LayerNorm, ReLU, sinusoidal, tied output
    {"norm_first": True, "norm": "rms", "activation": "swiglu"},  # the recipe's blocks
    {"positions": "learned", "activation": "gelu", "tie_embeddings": False},
    {"norm_first": True, "num_key_value_heads": 1, "activation": "geglu"},  # multi-query
], ids=["paper", "pre-rms-swiglu", "learned-gelu-untied", "multi-query-geglu"])
def test_ctranslate2_decodes_the_same_tokens_and_log_probabilities(options, tmp_path):
    model = _model(**options)
    path = to_ctranslate2(model, Vocabulary(), Vocabulary(), str(tmp_path / "ct2"))
    engine = ctranslate2.Translator(path, device="cpu")
    rng = np.random.default_rng(1)
    source = rng.integers(4, V, size=(6, 9)).astype("int32")
    source[2:, 6:] = 0  # padded rows, a shorter source than the targets
    tokens = [[VOCABULARY[i] for i in row if i] for row in source]

    ours = [_until_end(row) for row in IdDecoder(model, L - 1)(source)[0]]
    results = engine.translate_batch(tokens, **translate_options(DecodingConfig(), L - 1))
    theirs = [[VOCABULARY.index(t) for t in r.hypotheses[0]] for r in results]
    assert ours == theirs

    # Teacher-forced log-probabilities of the same targets, [END] included.
    targets = [row or [5] for row in ours]
    scored = engine.score_batch(tokens, [[VOCABULARY[i] for i in row] for row in targets])
    width = max(len(row) for row in targets) + 1
    decoder_input = np.zeros((6, width), "int32")
    for b, row in enumerate(targets):
        decoder_input[b, : len(row) + 1] = [2] + row
    log_probs = _log_softmax(np.asarray(model([source, decoder_input]), "float64"))
    for b, row in enumerate(targets):
        labels = row + [3]
        expected = log_probs[b, np.arange(len(labels)), labels]
        np.testing.assert_allclose(scored[b].log_probs, expected, atol=1e-4)


def _causal_lm(**options):
    keras.utils.set_random_seed(0)
    sizes = dict(vocab_size=V, max_length=L, embed_dim=32, num_heads=4, ffn_dim=64,
                 num_decoder_layers=2, dropout=0.0)
    return build_causal_lm(TransformerConfig(**{**sizes, **options}))


@pytest.mark.parametrize("options", [
    {},  # post-LN LayerNorm, ReLU, sinusoidal, tied
    {"norm_first": True, "norm": "rms", "activation": "swiglu", "positions": "rotary",
     "num_key_value_heads": 2},  # Llama-shaped: rotary (half-split), grouped-query
    {"norm_first": True, "positions": "learned", "activation": "gelu",
     "tie_embeddings": False},  # GPT-2-shaped
    {"norm_first": True, "positions": "learned", "activation": "gelu_tanh"},  # GPT-2's GELU
], ids=["paper", "rotary-gqa-rms-swiglu", "learned-gelu-untied", "learned-gelu-tanh"])
def test_ctranslate2_generates_the_same_tokens_for_a_decoder_only_model(options, tmp_path):
    model = _causal_lm(**options)
    path = to_ctranslate2(model, Vocabulary(), None, str(tmp_path / "ct2"))
    engine = ctranslate2.Generator(path, device="cpu")
    rng = np.random.default_rng(2)
    lengths = np.array([1, 3, 5, 2, 4])
    prompts = rng.integers(4, V, size=(5, 5)).astype("int32")
    prompts[np.arange(5)[None] >= lengths[:, None]] = 0

    ours = [_until_end(row) for row in IdDecoder(model, L - 1)(prompts, lengths)[0]]
    starts = [[VOCABULARY[i] for i in row[:n]] for row, n in zip(prompts, lengths)]
    options = generate_options(DecodingConfig(), L - lengths.min(), VOCABULARY)
    results = engine.generate_batch(starts, **options)
    # L tokens in all, the prompt's included (what `TextGenerator` counts).
    theirs = [_until_end(VOCABULARY.index(t) for t in r.sequences[0][n:L])
              for r, n in zip(results, lengths)]
    # The package's ids hold the prompt after position 0, then the continuation.
    assert [[int(i) for i in row[n - 1:]] for row, n in zip(ours, lengths)] == theirs

    # Teacher-forced log-probabilities of the same sequences.
    sequences = [list(row[:n]) + ours[b][n - 1:] for b, (row, n) in enumerate(
        zip(prompts, lengths))]
    scored = engine.score_batch([[VOCABULARY[i] for i in s] for s in sequences])
    for b, sequence in enumerate(sequences):
        logits = np.asarray(model(np.array([sequence], "int32")), "float64")[0]
        log_probs = _log_softmax(logits)
        expected = log_probs[np.arange(len(sequence) - 1), sequence[1:]]
        np.testing.assert_allclose(scored[b].log_probs, expected, atol=1e-4)


def test_what_ctranslate2_cannot_express_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no mixture of experts.*encoder_block_1_moe"):
        to_ctranslate2(_model(moe={"num_experts": 2}), Vocabulary(), Vocabulary(),
                       str(tmp_path / "moe"))
    with pytest.raises(ValueError, match="rotary positions, which CTranslate2 has for "
                                         "decoder-only models only"):
        to_ctranslate2(_model(positions="rotary"), Vocabulary(), Vocabulary(),
                       str(tmp_path / "rotary"))
    with pytest.raises(ValueError, match="2 key/value heads for 4 query heads"):
        to_ctranslate2(_model(num_key_value_heads=2), Vocabulary(), Vocabulary(),
                       str(tmp_path / "gqa"))
    with pytest.raises(ValueError, match="no mixture of experts"):
        to_ctranslate2(_causal_lm(moe={"num_experts": 2}), Vocabulary(), None,
                       str(tmp_path / "moe_lm"))
