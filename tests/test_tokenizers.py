import numpy as np
import pytest

from keras_transformer.data import generate_pairs
from keras_transformer.data import tokenizers as tk

SPANISH = [
    "¿Dónde está el niño?",
    "¡Qué año tan bueno!",
    "El pingüino comió paella.",
    "Tengo veintiún libros.",
]
CORPUS = SPANISH * 20 + [es for _, es in generate_pairs(800, seed=2)]


@pytest.fixture(scope="module")
def wordpiece():
    return tk.train_wordpiece(CORPUS, 400)


@pytest.fixture(scope="module")
def bpe():
    return tk.train_bpe(CORPUS, 400)


def _ids(tokenizer, texts):
    """Token ids padded with 0; keras-hub gives a ragged tensor or a list of lists."""
    output = tokenizer(texts)
    if hasattr(output, "to_tensor"):
        return output.to_tensor().numpy()
    rows = [np.asarray(row).tolist() for row in output]
    width = max(len(row) for row in rows)
    return np.array([row + [0] * (width - len(row)) for row in rows], "int32")


@pytest.mark.parametrize("name", ["wordpiece", "bpe"])
def test_reserved_tokens_have_the_first_ids(request, name):
    tokenizer = request.getfixturevalue(name)
    for i, token in enumerate(tk.RESERVED_TOKENS):
        assert tokenizer.token_to_id(token) == i
    assert (tk.PAD_ID, tk.UNK_ID, tk.START_ID, tk.END_ID) == (0, 1, 2, 3)


def test_wordpiece_round_trip_keeps_accents_enye_and_inverted_marks(wordpiece):
    decoded = tk.decode(wordpiece, _ids(wordpiece, SPANISH))
    assert decoded == [text.lower() for text in SPANISH]


def test_bpe_round_trip_is_exact(bpe):
    texts = SPANISH + ["Mañana, a las 9:30 — «vale»."]
    assert tk.decode(bpe, _ids(bpe, texts)) == texts


def test_decode_stops_at_end_and_drops_reserved_ids(wordpiece):
    ids = _ids(wordpiece, ["tengo un libro."])[0].tolist()
    row = [tk.START_ID] + ids + [tk.END_ID] + ids + [tk.PAD_ID] * 3
    assert tk.decode(wordpiece, [row]) == ["tengo un libro."]
    assert tk.decode(wordpiece, [[tk.END_ID, 7, 8]]) == [""]


def test_unknown_characters_become_unk(wordpiece):
    assert tk.UNK_ID in _ids(wordpiece, ["ж"])[0]


@pytest.mark.parametrize("name", ["wordpiece", "bpe"])
def test_save_and_load_give_the_same_tokenizer(request, name, tmp_path):
    tokenizer = request.getfixturevalue(name)
    tk.save_tokenizer(tokenizer, str(tmp_path / name))
    loaded = tk.load_tokenizer(str(tmp_path / name))
    np.testing.assert_array_equal(_ids(loaded, SPANISH), _ids(tokenizer, SPANISH))
    assert tk.decode(loaded, _ids(loaded, SPANISH)) == tk.decode(tokenizer, _ids(tokenizer, SPANISH))


def test_loading_from_an_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="No tokenizer in"):
        tk.load_tokenizer(str(tmp_path))
