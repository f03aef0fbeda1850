"""Scores an exported translator on the translation recipe's held-out split.

The recipe (`keras-transformer train translation --data ... --seed S`) holds
out a tenth of the pairs, chosen by its seed, and scores the first 500 with
the in-process translator. This script loads the exported SavedModel instead
(what a server would load) and scores the same 500 sentences, so that recipe
settings can be compared through what they ship:

    python benchmarks/score_translator.py saved_models/translator/1 \\
        --data ../shared/data/spa-eng.zip --seed 0

It prints BLEU and chrF (sacrebleu, lowercased, as the recipe) and the exact
matches. `--test` scores the recipe's test split instead: on a real corpus
the last 1,500 held-out pairs, which neither the validation loss nor the
checkpoint choice read (the recipe scores them itself at the end; this
scores another export, e.g. an int8 one, on the same pairs). A CTranslate2
directory (`export --format ctranslate2`) is scored the same way.

    python benchmarks/score_translator.py saved_models/translator_int8/1 \\
        --data ../shared/data/spa-eng.zip --test
"""

import argparse

from keras_transformer.export.server import load_model
from keras_transformer.evaluation import quality as evaluation
from keras_transformer.recipes import translation


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("saved_model", help="an exported translator's version directory")
    parser.add_argument("--data", help="the recipe's --data (default: the built-in corpus)")
    parser.add_argument("--seed", type=int, default=0, help="the recipe's --seed")
    parser.add_argument("--sentences", type=int, default=500)
    parser.add_argument("--skip", type=int, default=0,
                        help="start after this many held-out sentences")
    parser.add_argument("--test", action="store_true",
                        help="score the recipe's test split (the recipe's --test-pairs "
                             "default) instead of validation sentences")
    args = parser.parse_args(argv)

    recipe_args = translation.add_arguments(argparse.ArgumentParser()).parse_args(
        (["--data", args.data] if args.data else []) + ["--seed", str(args.seed)])
    _, held_out = translation.split(translation.read_pairs(recipe_args), 0.1, args.seed)
    validation, test = translation.split_test(
        held_out, translation.test_pair_count(recipe_args, len(held_out)))
    if args.test:
        if not test:
            parser.error("the recipe keeps no test split on the built-in corpus; give --data")
        sample = test
        where = f"the test split's {len(sample):,} pairs"
    else:
        sample = validation[args.skip : args.skip + args.sentences]
        where = f"{len(sample):,} held-out sentences from {args.skip}"
    served = load_model(args.saved_model).signatures["serving_default"]
    _, quality = evaluation.score_translations(evaluation.text_function(served), sample)
    print(f"{args.saved_model} on {where} (seed {args.seed}): "
          f"BLEU {quality['bleu']:.2f}, chrF {quality['chrf']:.2f}, "
          f"exact match {quality['exact_match']:.1%}")


if __name__ == "__main__":
    main()
