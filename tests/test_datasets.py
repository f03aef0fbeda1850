"""TFDS builders and loaders, on data the tests write (no network)."""

import gzip
import os
import zipfile

import pytest
import tensorflow_datasets as tfds

from keras_transformer.data import datasets

PAIRS = [
    ("Go.", "Ve."),
    ("Where is the child?", "¿Dónde está el niño?"),
    ("What a good year!", "¡Qué año tan bueno!"),
]


def write_spa_eng_zip(path, pairs=PAIRS):
    # The official layout: spa-eng/spa.txt, a third column of attribution,
    # plus _about.txt; one malformed line to skip.
    lines = [f"{en}\t{es}\tCC-BY 2.0 (France) Attribution: tatoeba.org #{i}"
             for i, (en, es) in enumerate(pairs)]
    lines.insert(1, "a line without a tab")
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("spa-eng/_about.txt", "about")
        archive.writestr("spa-eng/spa.txt", "\n".join(lines) + "\n")
    return str(path)


def as_strings(dataset):
    return [(s.decode("utf-8"), t.decode("utf-8")) for s, t in tfds.as_numpy(dataset)]


def test_spa_eng_from_a_local_archive(tmp_path):
    archive = write_spa_eng_zip(tmp_path / "spa-eng.zip")
    pairs = datasets.translation_pairs(
        "spa_eng", data_dir=str(tmp_path / "tfds"), local_file=archive
    )
    assert sorted(as_strings(pairs)) == sorted(PAIRS)
    builder = datasets.SpaEng(data_dir=str(tmp_path / "tfds"), local_file=archive)
    assert builder.info.supervised_keys == ("en", "es")
    assert builder.info.splits["train"].num_examples == len(PAIRS)
    # Spanish → English by swapping the keys.
    reverse = datasets.translation_pairs("spa_eng", data_dir=str(tmp_path / "tfds"),
                                         local_file=archive, reverse=True)
    assert sorted(as_strings(reverse)) == sorted((es, en) for en, es in PAIRS)


OTHER_PAIRS = [("Hello.", "Hola."), ("Thank you.", "Gracias."), ("I am here.", "Estoy aquí."),
               ("Run!", "¡Corre!")]


def test_each_local_archive_gives_its_own_pairs_from_one_data_dir(tmp_path):
    data_dir = str(tmp_path / "tfds")
    first = write_spa_eng_zip(tmp_path / "a.zip", PAIRS)
    second = write_spa_eng_zip(tmp_path / "b.zip", OTHER_PAIRS)
    for archive, pairs in ((first, PAIRS), (second, OTHER_PAIRS), (first, PAIRS)):
        loaded = datasets.translation_pairs("spa_eng", data_dir=data_dir, local_file=archive)
        assert sorted(as_strings(loaded)) == sorted(pairs), archive
    # Changed in place: the new content, not the cache of the old one.
    write_spa_eng_zip(tmp_path / "a.zip", OTHER_PAIRS[:2])
    loaded = datasets.translation_pairs("spa_eng", data_dir=data_dir, local_file=first)
    assert sorted(as_strings(loaded)) == sorted(OTHER_PAIRS[:2])
    # The prepared data sits under a configuration named by the content.
    builder = datasets.SpaEng(data_dir=data_dir, local_file=first)
    assert builder.builder_config.name == f"local_{datasets.file_digest(first)}"


def test_each_local_shakespeare_file_gives_its_own_text(tmp_path):
    data_dir, path = str(tmp_path / "tfds"), tmp_path / "input.txt"
    for text in ("First Citizen:\nSpeak.\n" * 5, "ROMEO:\nBut soft!\n" * 5):
        path.write_text(text, encoding="utf-8")  # the same name, other content
        assert datasets.shakespeare_text(data_dir=data_dir, local_file=path) == text


def test_spa_eng_downloads_from_the_official_address(tmp_path, monkeypatch):
    archive = write_spa_eng_zip(tmp_path / "spa-eng.zip")
    requested = []

    def fake_download(self, url, **kwargs):
        requested.append(url)
        return archive

    monkeypatch.setattr(tfds.download.DownloadManager, "download", fake_download)
    pairs = datasets.translation_pairs("spa_eng", data_dir=str(tmp_path / "tfds"))
    assert requested == [datasets.SPA_ENG_URL]
    assert len(as_strings(pairs)) == len(PAIRS)
    # Prepared once: the second load reads the prepared data, no download.
    again = datasets.translation_pairs("spa_eng", data_dir=str(tmp_path / "tfds"))
    assert requested == [datasets.SPA_ENG_URL]
    assert sorted(as_strings(again)) == sorted(PAIRS)
    assert os.path.isdir(tmp_path / "tfds" / "spa_eng" / "1.0.0")


def test_spa_eng_rejects_a_wrong_archive(tmp_path):
    wrong = tmp_path / "wrong.zip"
    with zipfile.ZipFile(wrong, "w") as archive:
        archive.writestr("fra-eng/fra.txt", "Go.\tVa !\n")
    with pytest.raises(ValueError, match="without a spa.txt"):
        datasets.read_spa_eng(wrong)
    with pytest.raises(FileNotFoundError, match="missing.zip"):
        datasets.SpaEng(data_dir=str(tmp_path), local_file=tmp_path / "missing.zip")


def test_tiny_shakespeare_checksum_is_registered():
    # Shipped beside the module (package data), read by TFDS to verify the download.
    info = datasets.ShakespeareChar.url_infos[datasets.TINY_SHAKESPEARE_URL]
    assert info.size == datasets.TINY_SHAKESPEARE_CHARS
    assert info.checksum.startswith("86c4e6aa9db7c042")


def test_shakespeare_from_the_whole_corpus_splits_90_10(tmp_path):
    text = ("To be, or not to be: that is the question.\n" * 30000)[
        : datasets.TINY_SHAKESPEARE_CHARS
    ]
    path = tmp_path / "input.txt"
    path.write_text(text, encoding="utf-8")
    data_dir = str(tmp_path / "tfds")
    train = datasets.shakespeare_text("train", data_dir=data_dir, local_file=path)
    test = datasets.shakespeare_text("test", data_dir=data_dir, local_file=path)
    assert len(train) == datasets.TINY_SHAKESPEARE_TRAIN_CHARS == 1_003_854
    assert train + test == text


def test_shakespeare_from_a_gzipped_first_part(tmp_path):
    text = "First Citizen:\nBefore we proceed any further, hear me speak.\n" * 10
    path = tmp_path / "part.txt.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write(text)
    data_dir = str(tmp_path / "tfds")
    assert datasets.shakespeare_text(data_dir=data_dir, local_file=path) == text
    with pytest.raises(ValueError, match="has no 'test' split"):
        datasets.shakespeare_text("test", data_dir=data_dir, local_file=path)


@pytest.mark.parametrize(
    "name, split", [("ted_hrlr_translate/pt_to_en", "train"), ("wmt14_translate/de-en",
                                                               "validation")]
)
def test_any_tfds_translation_dataset_by_name(name, split):
    with tfds.testing.mock_data(num_examples=4, policy=tfds.testing.MockPolicy.USE_CODE):
        pairs = as_strings(datasets.translation_pairs(name, split=split))
    assert len(pairs) == 4
    assert all(isinstance(s, str) and isinstance(t, str) for s, t in pairs)


def test_a_dataset_without_supervised_keys_is_refused():
    with tfds.testing.mock_data(num_examples=2, policy=tfds.testing.MockPolicy.USE_CODE):
        with pytest.raises(ValueError, match="supervised"):
            datasets.translation_pairs("tiny_shakespeare")


def test_local_file_is_for_spa_eng_only(tmp_path):
    with pytest.raises(ValueError, match="'spa_eng' only"):
        datasets.translation_pairs("ted_hrlr_translate/pt_to_en", local_file=__file__)


SHARED = os.environ.get("KERAS_TRANSFORMER_DATA",
                        os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))


@pytest.mark.slow
def test_real_corpora_through_the_builders(tmp_path):
    archive = os.path.join(SHARED, "spa-eng.zip")
    text = os.path.join(SHARED, "tinyshakespeare-train.txt.gz")
    if not (os.path.exists(archive) and os.path.exists(text)):
        pytest.skip(f"real corpora not found in {SHARED} (set KERAS_TRANSFORMER_DATA)")
    pairs = datasets.translation_pairs("spa_eng", data_dir=str(tmp_path), local_file=archive)
    assert int(pairs.cardinality()) == len(datasets.read_spa_eng(archive)) > 100_000
    shakespeare = datasets.shakespeare_text(data_dir=str(tmp_path), local_file=text)
    assert len(shakespeare) == datasets.TINY_SHAKESPEARE_TRAIN_CHARS
    assert shakespeare.startswith("First Citizen:")
