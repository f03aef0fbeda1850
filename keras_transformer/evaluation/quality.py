"""Translation quality: BLEU and chrF with sacrebleu, over a TSV of references."""

from keras_transformer._optional import require


def _sacrebleu():
    # Checked on first use, so that importing this module never fails.
    return require("sacrebleu", "eval", "BLEU and chrF")


def read_tsv(path):
    """`(sources, references)` from `source<TAB>reference[<TAB>...]` lines."""
    sources, references = [], []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            columns = line.rstrip("\n").split("\t")
            if not line.strip():
                continue
            if len(columns) < 2:
                raise ValueError(f"{path}:{number}: expected source<TAB>reference. "
                                 f"Received: {line.strip()[:80]!r}")
            sources.append(columns[0])
            references.append(columns[1])
    return sources, references


def score(hypotheses, references, lowercase=False):
    """`{"bleu": ..., "chrf": ...}` (corpus level, sacrebleu's defaults, 0–100)."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references.")
    sacrebleu = _sacrebleu()
    bleu = sacrebleu.corpus_bleu(hypotheses, [references], lowercase=lowercase)
    chrf = sacrebleu.corpus_chrf(hypotheses, [references])
    return {"bleu": bleu.score, "chrf": chrf.score, "sentences": len(hypotheses),
            "signature": str(bleu.format(signature=True)).split(" = ")[0]}


def text_function(translate):
    """`list of strings → list of strings` over `translate(text=string tensor)`,
    which returns `{"translation": string tensor}`: a translation SavedModel's
    `serving_default`, or a `Translator`'s `translate`."""
    import tensorflow as tf  # here, so that importing this module needs no TensorFlow

    def strings(batch):
        translations = translate(text=tf.constant(list(batch)))["translation"]
        return [text.decode("utf-8") for text in translations.numpy()]

    return strings


def translate_all(translate, sources, batch_size=64):
    """Runs `translate(list of strings) → list of strings` over `sources` in batches."""
    outputs = []
    for start in range(0, len(sources), batch_size):
        outputs.extend(translate(sources[start : start + batch_size]))
    return outputs


def score_translations(translate, pairs, batch_size=64):
    """Translates the sources of `(source, reference)` pairs and scores them.

    Args:
        translate: `list of strings → list of strings` (a translator, a
            SavedModel's signature, an engine), called on `batch_size` at a time.
        pairs: `(source, reference)` string pairs.

    Returns:
        `(hypotheses, report)`: the translations in order, and `score`'s
        report, lowercased (the recipes' WordPiece vocabularies are), with
        `"exact_match"`: the fraction of hypotheses equal to the lowercased
        reference.
    """
    hypotheses = translate_all(translate, [source for source, _ in pairs], batch_size)
    references = [reference for _, reference in pairs]
    report = score(hypotheses, references, lowercase=True)
    matches = sum(h == r.lower() for h, r in zip(hypotheses, references))
    report["exact_match"] = matches / len(pairs) if pairs else 0.0
    return hypotheses, report
