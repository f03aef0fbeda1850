"""Corpora through TensorFlow Datasets: spa-eng, tiny-shakespeare, any translation set.

Two TFDS builders, registered when this module is imported:

- `spa_eng` (`SpaEng`): the Anki/Tatoeba English–Spanish pairs of the Keras
  and TensorFlow translation examples (`spa-eng.zip`, `spa-eng/spa.txt`
  inside). Features `{"en", "es"}`, supervised keys `("en", "es")`, one
  `train` split.
- `shakespeare_char` (`ShakespeareChar`): the tiny-shakespeare text as one
  example per split: `train` is the first 90 % of the corpus (1,003,854
  characters; the same as TFDS's `tiny_shakespeare` train split) and `test`
  the rest.

Both download from the official address (checked against `checksums.tsv`
beside this module where the checksum is known) or take a local copy through
the builder argument `local_file` (for machines without internet). A local
tiny-shakespeare file may hold the whole corpus or only its first 90 % (then
there is no `test` split). TFDS caches the prepared dataset under `data_dir`
(`~/tensorflow_datasets` by default). Data prepared from a local file is kept
under a builder configuration named after the file's content
(`<data_dir>/spa_eng/local_<sha256 prefix>/1.0.0`), so another file, or the
same file changed in place, is prepared anew and never read from the cache
of an earlier one; the official download keeps the default place
(`<data_dir>/spa_eng/1.0.0`) and is prepared once.

`translation_pairs(name, ...)` reads these or any TFDS translation dataset
with supervised keys (`ted_hrlr_translate/pt_to_en`, `wmt14_translate/de-en`,
...) as a `tf.data.Dataset` of `(source, target)` strings, the input of
`pipelines.translation_dataset`.
"""

import gzip
import hashlib
import io
import logging
import os
import zipfile

import tensorflow as tf

from keras_transformer._optional import require

tfds = require("tensorflow_datasets", "data", "The TFDS builders")

SPA_ENG_URL = "http://storage.googleapis.com/download.tensorflow.org/data/spa-eng.zip"
TINY_SHAKESPEARE_URL = (
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
)
# The corpus has 1,115,394 characters; TFDS's `tiny_shakespeare` trains on
# the first 90 % of them.
TINY_SHAKESPEARE_CHARS = 1_115_394
TINY_SHAKESPEARE_TRAIN_CHARS = int(TINY_SHAKESPEARE_CHARS * 0.9)


def _check_local_file(path):
    if path is None:
        return None
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"`local_file` must be an existing file. Received: {path!r}")
    return path


def file_digest(path, length=16):
    """The first `length` hex digits of the SHA-256 of the file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:length]


class _LocalFileBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A builder that reads `local_file` instead of downloading, when given.

    Data prepared from a local file goes under the builder configuration
    `local_<sha256 prefix of its bytes>`: the cache is keyed by the content
    it was prepared from.
    """

    def __init__(self, *, local_file=None, config=None, **kwargs):
        self._local_file = _check_local_file(local_file)
        if self._local_file and config is None:
            config = tfds.core.BuilderConfig(
                name=f"local_{file_digest(self._local_file)}",
                description=f"prepared from the local file {self._local_file}")
        # TFDS logs "Using custom data configuration" for every configuration
        # it does not list; a local file's is such a configuration by design.
        notice = _DropRecords("Using custom data configuration")
        logging.getLogger("absl").addFilter(notice)
        try:
            super().__init__(config=config, **kwargs)
        finally:
            logging.getLogger("absl").removeFilter(notice)


class _DropRecords(logging.Filter):
    """Drops the log records whose message starts with `prefix`."""

    def __init__(self, prefix):
        super().__init__()
        self.prefix = prefix

    def filter(self, record):
        return not str(record.msg).startswith(self.prefix)


def read_spa_eng(path):
    """`(english, spanish)` pairs from `spa-eng.zip`, its `spa.txt`, or any TSV.

    Lines are `english<TAB>spanish[<TAB>...]`; extra columns (attribution)
    are ignored, and lines without two non-empty columns are skipped.
    """
    path = os.fspath(path)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith("spa.txt")]
            if not names:
                raise ValueError(
                    f"{path!r} is a zip archive without a spa.txt inside; expected the "
                    f"layout of {SPA_ENG_URL} (spa-eng/spa.txt). It holds: "
                    f"{archive.namelist()[:10]}"
                )
            text = io.TextIOWrapper(archive.open(names[0]), encoding="utf-8").read()
    else:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    pairs = []
    for line in text.splitlines():
        columns = line.split("\t")
        if len(columns) >= 2 and columns[0].strip() and columns[1].strip():
            pairs.append((columns[0].strip(), columns[1].strip()))
    return pairs


def read_text(path):
    """The text of a UTF-8 file, gzipped (`.gz`) or not."""
    path = os.fspath(path)
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as handle:
        return handle.read()


class SpaEng(_LocalFileBuilder):
    """Anki/Tatoeba English–Spanish sentence pairs (CC-BY 2.0, manythings.org/anki).

    Builder argument `local_file`: a local `spa-eng.zip` (or `spa.txt`) to
    read instead of downloading.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "English–Spanish pairs, one train split."}

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            description="English–Spanish sentence pairs from Tatoeba, via manythings.org/anki.",
            features=tfds.features.Translation(languages=("en", "es")),
            supervised_keys=("en", "es"),
            homepage="https://www.manythings.org/anki/",
        )

    def _split_generators(self, dl_manager):
        path = self._local_file or dl_manager.download(SPA_ENG_URL)
        return {"train": self._generate_examples(path)}

    def _generate_examples(self, path):
        for i, (english, spanish) in enumerate(read_spa_eng(path)):
            yield i, {"en": english, "es": spanish}


class ShakespeareChar(_LocalFileBuilder):
    """tiny-shakespeare (char-rnn's `input.txt`) for character language models.

    Builder argument `local_file`: a local copy (`.txt` or `.txt.gz`) of the
    whole corpus or of its first 90 %.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "train = first 90 % of the corpus, test = the rest."}

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            description="40,000 lines of Shakespeare, from char-rnn (Karpathy).",
            features=tfds.features.FeaturesDict({"text": tfds.features.Text()}),
            homepage="https://github.com/karpathy/char-rnn",
        )

    def _split_generators(self, dl_manager):
        if self._local_file:
            text = read_text(self._local_file)
        else:
            with tf.io.gfile.GFile(dl_manager.download(TINY_SHAKESPEARE_URL)) as handle:
                text = handle.read()
        splits = {"train": self._generate_examples(text[:TINY_SHAKESPEARE_TRAIN_CHARS])}
        if len(text) > TINY_SHAKESPEARE_TRAIN_CHARS:
            splits["test"] = self._generate_examples(text[TINY_SHAKESPEARE_TRAIN_CHARS:])
        return splits

    def _generate_examples(self, text):
        yield 0, {"text": text}


def translation_pairs(
    name, split="train", *, data_dir=None, local_file=None, reverse=False, download=True
):
    """`(source, target)` string pairs of a TFDS translation dataset.

    Args:
        name: a TFDS name with supervised keys, e.g. `"spa_eng"` (this
            module's builder), `"ted_hrlr_translate/pt_to_en"`,
            `"wmt14_translate/de-en"`.
        split: a TFDS split string (`"train"`, `"train[:90%]"`, ...).
        data_dir: where TFDS keeps prepared data (its default if None).
        local_file: for `spa_eng`, a local `spa-eng.zip` instead of the
            download.
        reverse: swap the supervised keys (Spanish → English for `spa_eng`).
        download: let TFDS download and prepare the data if needed.

    Returns:
        A `tf.data.Dataset` of `(source, target)` scalar `tf.string` pairs.
    """
    builder_kwargs = {"local_file": local_file} if local_file else {}
    if local_file and not name.startswith("spa_eng"):
        raise ValueError(f"`local_file` is for 'spa_eng' only. Received name={name!r}.")
    dataset, info = tfds.load(
        name, split=split, data_dir=data_dir, as_supervised=True, with_info=True,
        download=download, builder_kwargs=builder_kwargs,
    )
    if info.supervised_keys is None:
        raise ValueError(f"TFDS dataset {name!r} has no supervised keys (source, target).")
    if reverse:
        dataset = dataset.map(lambda source, target: (target, source))
    return dataset


def shakespeare_text(split="train", *, data_dir=None, local_file=None, download=True):
    """The tiny-shakespeare text of `split` as a Python string."""
    builder = ShakespeareChar(data_dir=data_dir, local_file=local_file)
    if download:
        builder.download_and_prepare()
    if split not in builder.info.splits:
        raise ValueError(
            f"Split {split!r} is not in this copy of tiny-shakespeare; it has "
            f"{sorted(builder.info.splits)} (a local file with only the first 90 % has no "
            "'test' split)."
        )
    (example,) = tfds.as_numpy(builder.as_dataset(split=split))
    return example["text"].decode("utf-8")
