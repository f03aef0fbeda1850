"""`evaluation.quality.score_translations`: what the recipe and
benchmarks/score_translator.py report on held-out pairs."""

import pytest

from keras_transformer.evaluation import quality

pytest.importorskip("sacrebleu")

# Sentences of four words or more: corpus BLEU counts n-grams up to four.
PAIRS = [("Go home now, please.", "Vete a casa ahora, por favor."),
         ("Hello, my friend!", "¡Hola, mi amigo!"),
         ("I ran to the station.", "Corrí a la estación."),
         ("Stop the car here.", "Para el coche aquí.")]


def test_perfect_translations_score_100_case_blind():
    batches = []

    def translate(batch):
        batches.append(list(batch))
        return [dict(PAIRS)[source].lower() for source in batch]

    hypotheses, report = quality.score_translations(translate, PAIRS, batch_size=3)
    sources = [source for source, _ in PAIRS]
    assert batches == [sources[:3], sources[3:]]  # in order, 3 at a time
    assert hypotheses == [reference.lower() for _, reference in PAIRS]
    assert report["exact_match"] == 1.0
    assert report["bleu"] == pytest.approx(100.0)
    assert report["sentences"] == 4


def test_exact_match_counts_only_whole_sentences():
    outputs = dict((source, reference.lower()) for source, reference in PAIRS)
    outputs["Hello, my friend!"] = "¡hola, amigo mío!"  # one word order differs
    outputs["Go home now, please."] = "vete a casa, por favor."  # a word missing
    _, report = quality.score_translations(lambda batch: [outputs[s] for s in batch], PAIRS)
    assert report["exact_match"] == 0.5
    assert 0.0 < report["bleu"] < 100.0
    assert 0.0 < report["chrf"] < 100.0


def test_text_function_turns_a_string_signature_into_strings():
    tf = pytest.importorskip("tensorflow")
    received = []

    def signature(text):  # what a SavedModel's serving_default takes and returns
        received.append(text)
        return {"translation": tf.strings.join(["<", text, ">"])}

    translate = quality.text_function(signature)
    assert translate(["¡hola!", "adiós"]) == ["<¡hola!>", "<adiós>"]  # decoded UTF-8
    assert received[0].dtype == tf.string and received[0].shape == (2,)
