"""# English → Spanish translation, from raw text to a trained model

The recipe lives in the library, `keras_transformer/recipes/translation.py`,
and reads top to bottom: sentence pairs (the built-in corpus, `spa-eng.zip`
through the package's TFDS builder, or any TFDS translation dataset) →
WordPiece vocabularies → bucketed tf.data pipelines with teacher forcing →
`build_transformer` → label-smoothed masked cross-entropy, the paper's
warm-up schedule → `model.fit` with a best checkpoint and `AtomicBackupAndRestore`
→ greedy translations of held-out sentences. `keras-transformer train
translation` runs the same code with the same options.

    python examples/train_translation.py                    # built-in corpus, ~5 minutes
    python examples/train_translation.py --smoke            # seconds, for the tests
    python examples/train_translation.py --data ../shared/data/spa-eng.zip --minutes 20
    python examples/train_translation.py --help             # every option
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from keras_transformer.recipes.translation import main  # noqa: E402

if __name__ == "__main__":
    main()
