"""Judging a model's output: translation quality (BLEU and chrF) and pictures.

- `quality`: `read_tsv`, `score` (sacrebleu's corpus BLEU and chrF; the `eval`
  extra), `text_function`, which makes a SavedModel's or a `Translator`'s
  string-tensor signature a `list of strings → list of strings`,
  `translate_all`, which batches any such function, and
  `score_translations`, both at once on `(source, reference)` pairs, with the
  exact matches.
- `plots`: cross-attention heat maps of one translation and training curves
  (PNG; the `plots` extra).

Importing either module needs no extra; the first call that does names it.
"""
