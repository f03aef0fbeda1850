"""# English → Spanish translation with keras_transformer (the recipe)

From raw sentence pairs to a trained encoder–decoder Transformer:
WordPiece vocabularies trained on the corpus, a tf.data pipeline with teacher
forcing and length bucketing, the model from `build_transformer`, label-smoothed
cross-entropy that ignores padding, the paper's warm-up schedule, and
`model.fit` with validation, a best checkpoint and `AtomicBackupAndRestore` (a
killed run started again resumes from its last epoch).

By default it trains on the built-in corpus (numbers, counts, sums and dates
written out in words, made by the package: no download) and reports exact-match
accuracy and BLEU of beam-search translations of held-out sentences, then
exports a SavedModel (text in, text out) and translates through it. `--data` takes the
Anki/Tatoeba `spa-eng.zip` archive (or its `spa.txt`, or any
`english<TAB>spanish` file) instead; on such a corpus 1,500 held-out pairs
that nothing in training reads are scored at the end through the SavedModel.

`--tfds NAME` takes any TFDS translation dataset with supervised keys.

This module is both the library's recipe (`keras-transformer train
translation` runs it) and the walk-through that `examples/train_translation.py`
runs; it reads top to bottom.

    keras-transformer train translation                     # built-in corpus, ~5 minutes
    keras-transformer train translation --smoke             # seconds, for the tests
    keras-transformer train translation --data spa-eng.zip --minutes 20
"""

import argparse
import dataclasses
import json
import os
import time

import keras
import numpy as np
import tensorflow as tf

from keras_transformer.data import datasets, generate_pairs, pipelines
from keras_transformer.data import tokenizers as tk
from keras_transformer.evaluation import plots
from keras_transformer.evaluation import quality as evaluation
from keras_transformer.export import export_saved_model
from keras_transformer.generation import DecodingConfig, Translator
from keras_transformer.models import TransformerConfig, build_transformer, float32_copy
from keras_transformer.recipes import model_options, moving_average, precision
from keras_transformer.training import (
    AtomicBackupAndRestore,
    AtomicBestCheckpoint,
    MaskedAccuracy,
    distribute,
    MaskedSparseCategoricalCrossentropy,
    StopOnNaN,
    TimeBudget,
    TransformerSchedule,
    WallClockLearningRate,
    masked_perplexity,
    transformer_optimizer,
)
from keras_transformer.training.optimizers import Muon


# ## The sentence pairs
#
# The built-in corpus is deterministic for a seed. A local `spa-eng.zip` goes
# through the package's TFDS builder (`spa_eng`); a `spa.txt` or any
# `english<TAB>spanish` file is read directly; `--tfds` loads any TFDS
# translation dataset by name.
def read_pairs(args):
    if args.tfds:
        dataset = datasets.translation_pairs(args.tfds, data_dir=args.data_dir)
    elif args.data and args.data.endswith(".zip"):
        dataset = datasets.translation_pairs("spa_eng", data_dir=args.data_dir,
                                             local_file=args.data)
    elif args.data:
        return datasets.read_spa_eng(args.data)
    else:
        return generate_pairs(args.pairs, seed=args.seed)
    return [(s.decode("utf-8"), t.decode("utf-8")) for s, t in dataset.as_numpy_iterator()]


def split(pairs, validation_fraction, seed):
    order = np.random.default_rng(seed).permutation(len(pairs))
    cut = int(len(pairs) * (1 - validation_fraction))
    return [pairs[i] for i in order[:cut]], [pairs[i] for i in order[cut:]]


# On a real corpus the last 1,500 held-out pairs are a test split: nothing
# during training reads them (not the validation loss, not the checkpoint
# choice, not the moving average's swap), and they are scored once, at the
# end, through the exported SavedModel. The training pairs do not change.
TEST_PAIRS = 1500


def split_test(val_pairs, test_pairs):
    """`(validation, test)`: the last `test_pairs` of the held-out pairs are the test split.

    At least as many validation pairs as test pairs must remain; a ValueError
    names the counts otherwise.
    """
    if test_pairs < 0 or 2 * test_pairs > len(val_pairs):
        raise ValueError(f"`--test-pairs` must be between 0 and half the {len(val_pairs):,} "
                         f"held-out pairs ({len(val_pairs) // 2:,}). Received: {test_pairs:,}")
    cut = len(val_pairs) - test_pairs
    return val_pairs[:cut], val_pairs[cut:]


def test_pair_count(args, held_out):
    """`--test-pairs`, or its default: `TEST_PAIRS` on a real corpus (at most half of
    the `held_out` pairs), none on the built-in corpus."""
    count = getattr(args, "test_pairs", None)
    if count is not None:
        return count
    return min(TEST_PAIRS, held_out // 2) if (args.data or args.tfds) else 0


def describe(decoding):
    """`beam 4`, `greedy` or `sampling` for the reports."""
    if decoding.strategy == "beam":
        return f"beam {decoding.beam_size}"
    return {"greedy": "greedy", "sample": "sampling"}[decoding.strategy]


# `evaluation.quality.text_function`, by the name it had here first.
text_function = evaluation.text_function


def translate_texts(translator, texts, batch_size=64):
    """Strings → strings through the translator's compiled search."""
    return evaluation.translate_all(evaluation.text_function(translator.translate), texts,
                                    batch_size)


# A small Transformer: 2+2 layers of width 128 (the paper's base is 6+6 of
# 512), with the target embedding tied to the output projection; sentences of
# up to 48 word pieces. `--config` and the model flags change any of it.
MODEL = TransformerConfig(max_length=48, embed_dim=128, num_heads=4, ffn_dim=512,
                          num_encoder_layers=2, num_decoder_layers=2, dropout=0.1)
# On a real corpus (`--data`, `--tfds`) the blocks are a current decoder's:
# pre-norm RMSNorm and a SwiGLU network 344 wide (about the parameters and
# FLOPs of the 512-wide ReLU one), without dropout (in a budget of minutes
# dropout slows learning more than it holds off over-fitting: weight decay,
# below, does better); with `--minutes` the
# learning rate warms up and then follows a cosine over the budget; the
# dtype policy is `auto`; and validation, the best checkpoint and the export
# use the moving average of the weights over about the last 1,000 steps
# (`--ema 0.999`). On spa-eng in 20 minutes each of these gained over
# `MODEL` and the warm-up schedule (docs/recipes.md has the figures); on the
# built-in corpus the paper's blocks already reach its floor.
REAL_CORPUS_MODEL = dataclasses.replace(MODEL, norm_first=True, norm="rms",
                                        activation="swiglu", ffn_dim=344, dropout=0.0)
# What the exported translator does: beam search of 4, GNMT's length penalty.
DECODING = DecodingConfig("beam", beam_size=4, length_penalty=0.6)


def training_callbacks(run_dir, *, chief=True, ema=0.0, minutes=None, clock_peak=None):
    """The recipe's callbacks for `model.fit`, in the order that matters.

    - `StopOnNaN` first, so that no later callback stores broken weights.
    - `AtomicBackupAndRestore` into `<run_dir>/backup`: the training state
      after every epoch (raw weights, optimizer and moving average), and the
      resumption from it when the same command runs again; a kill at any
      instant leaves no file half-written.
    - With `ema` > 0 (the optimizer built with `use_ema=True`), Keras's
      `SwapEMAWeights(swap_on_epoch=True)`, after the backup: validation and
      the callbacks after it see the moving average of the weights.
    - On the chief, `AtomicBestCheckpoint` into `<run_dir>/best.keras`: the
      model (the moving average with `ema`) with the best validation loss.
    - With `minutes`, `TimeBudget`; with `clock_peak` as well,
      `WallClockLearningRate` (warm-up, then a cosine over the budget).
    """
    callbacks = [StopOnNaN(), AtomicBackupAndRestore(os.path.join(run_dir, "backup"))]
    if ema:
        callbacks.append(keras.callbacks.SwapEMAWeights(swap_on_epoch=True))
    if chief:
        callbacks.append(AtomicBestCheckpoint(os.path.join(run_dir, "best.keras"),
                                              monitor="val_loss"))
    if minutes:
        callbacks.append(TimeBudget(minutes))
        if clock_peak is not None:
            callbacks.append(WallClockLearningRate(clock_peak, minutes))
    return callbacks


def add_arguments(parser):
    """The recipe's options (shared by the example and `keras-transformer train`)."""
    parser.add_argument("--data", help="a local spa-eng.zip (read through the TFDS builder), "
                        "spa.txt, or any english<TAB>spanish file; default: the built-in corpus")
    parser.add_argument("--tfds", metavar="NAME",
                        help="a TFDS translation dataset with supervised keys, e.g. "
                             "ted_hrlr_translate/pt_to_en (downloaded by TFDS)")
    parser.add_argument("--data-dir", help="TFDS data directory (TFDS's default if omitted)")
    parser.add_argument("--output-dir", default="runs/translation",
                        help="where the model, vocabularies and backups go")
    parser.add_argument("--minutes", type=float, default=None,
                        help="wall-clock training budget (default: none, train --epochs)")
    parser.add_argument("--epochs", type=int, default=12, help="maximum number of epochs")
    parser.add_argument("--pairs", type=int, default=30000,
                        help="number of built-in sentence pairs to generate")
    parser.add_argument("--vocabulary-size", type=int, default=2000,
                        help="WordPiece vocabulary size per language")
    parser.add_argument("--jit-compile", action="store_true",
                        help="compile the training step with XLA (one compilation per "
                             "bucket shape: slow to start on CPU)")
    parser.add_argument("--export-dir", default="saved_models/translator",
                        help="the SavedModel goes to <this>/<next version>/")
    parser.add_argument("--strategy", default="none", choices=distribute.STRATEGIES,
                        help="tf.distribute strategy: none (one device), mirrored (all local "
                             "GPUs), multi_worker (workers from TF_CONFIG), tpu, or auto")
    parser.add_argument("--smoke", action="store_true",
                        help="a tiny run in seconds (for the tests)")
    parser.add_argument("--seed", type=int, default=0, help="seed of data, split and weights")
    parser.add_argument("--schedule", choices=("warmup", "clock"), default=None,
                        help="learning rate: the paper's warm-up and 1/sqrt(step) decay "
                             "('warmup'), or warm-up then a cosine over the --minutes budget "
                             "('clock'; needs --minutes). Default: clock for --data/--tfds "
                             "with --minutes, warmup otherwise")
    parser.add_argument("--learning-rate", type=float, default=None,
                        help="peak learning rate of the clock schedule (default: 6e-3 "
                             "with Muon, 3e-3 with Adam; the warm-up schedule sets its own)")
    parser.add_argument("--optimizer", choices=("adam", "muon"), default=None,
                        help="Adam (β₂ 0.98), or Muon on the projection "
                             "matrices with Adam on the rest (training.optimizers.Muon), "
                             "with either schedule. Default: muon with the clock schedule "
                             "(--data/--tfds with --minutes), adam otherwise")
    parser.add_argument("--weight-decay", type=float, default=None, metavar="RATE",
                        help="decoupled weight decay of every weight, a step "
                             "`w -= learning_rate * RATE * w` (Adam becomes AdamW; Muon "
                             "decays its matrices and its Adam part alike). Default: 0.1 "
                             "with the clock schedule (--data/--tfds with --minutes), "
                             "0 otherwise")
    parser.add_argument("--test-pairs", type=int, default=None, metavar="N",
                        help="held-out pairs, the last N of the validation split, that "
                             "nothing reads during training; scored once at the end "
                             "through the exported SavedModel. Default: 1500 for "
                             "--data/--tfds, 0 for the built-in corpus")
    parser.add_argument("--ema", type=float, default=None, metavar="MOMENTUM",
                        help="validate, keep and export an exponential moving average of "
                             "the weights with this momentum (Keras's use_ema); 0 turns it "
                             "off. Default: 0.999 for --data/--tfds, 0 otherwise")
    precision.add_argument(parser, default=None,
                           shown="auto for --data/--tfds, float32 for the built-in corpus")
    model_options.add_model_arguments(parser, MODEL)
    DecodingConfig.add_arguments(parser, DECODING)
    return parser


def main(argv=None):
    args = add_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0])).parse_args(
        argv
    )
    return run(args)


@dataclasses.dataclass(frozen=True)
class TrainingSettings:
    """How `run` trains, resolved once from the command's options.

    The defaults depend on the data: on a real corpus (`--data`, `--tfds`) the
    clock schedule (with `--minutes`), the moving average and the `auto` dtype
    policy; on the built-in corpus the paper's warm-up, no average, float32.
    """

    real_corpus: bool
    schedule: str  # "warmup" (the paper's) or "clock" (warm-up + cosine over --minutes)
    learning_rate: float  # the clock schedule's peak
    ema: float  # momentum of the weights' moving average; 0: off
    policy: str  # the training model's dtype policy
    minutes: float | None  # the wall-clock budget, if any
    optimizer: str = "adam"  # "adam" or "muon"
    weight_decay: float = 0.0  # decoupled, of every weight

    # The clock schedule's peak for each optimizer (`--learning-rate` unset):
    # Muon's orthogonalized steps take a higher one (docs/recipes.md).
    LEARNING_RATES = {"muon": 6e-3, "adam": 3e-3}
    # The clock schedule's decoupled weight decay (`--weight-decay` unset).
    WEIGHT_DECAY = 0.1

    @classmethod
    def from_args(cls, args):
        """The settings `args` ask for, with a ValueError naming a contradiction."""
        real_corpus = bool(args.data or args.tfds)
        schedule = args.schedule or ("clock" if real_corpus and args.minutes else "warmup")
        if schedule == "clock" and not args.minutes:
            raise ValueError("`--schedule clock` spans the --minutes budget; give --minutes. "
                             f"Received: --minutes {args.minutes}")
        if schedule == "warmup" and args.learning_rate is not None:
            raise ValueError("`--learning-rate` is the clock schedule's peak; the warm-up "
                             "schedule sets its own from the width. Received: "
                             f"--learning-rate {args.learning_rate:g} with --schedule warmup")
        # Muon is the default where it was measured to win: the clock
        # schedule on a real corpus. The built-in corpus's main job keeps Adam.
        optimizer = getattr(args, "optimizer", None) or (
            "muon" if schedule == "clock" else "adam")
        ema = getattr(args, "ema", None)
        ema = (0.999 if real_corpus else 0.0) if ema is None else moving_average.checked(ema)
        # Weight decay holds off the over-fitting that sets in within a
        # 20-minute budget on spa-eng (docs/recipes.md); it too is measured
        # only with the clock schedule.
        weight_decay = getattr(args, "weight_decay", None)
        if weight_decay is None:
            weight_decay = cls.WEIGHT_DECAY if schedule == "clock" else 0.0
        if weight_decay < 0.0:
            raise ValueError("`--weight-decay` is a rate of 0 or more. Received: "
                             f"--weight-decay {weight_decay:g}")
        return cls(
            real_corpus=real_corpus, schedule=schedule,
            learning_rate=(cls.LEARNING_RATES[optimizer] if args.learning_rate is None
                           else args.learning_rate), ema=ema,
            policy=precision.resolve(getattr(args, "dtype_policy", None)
                                     or ("auto" if real_corpus else "float32")),
            minutes=args.minutes, optimizer=optimizer, weight_decay=weight_decay)


@dataclasses.dataclass
class Corpus:
    """The split sentence pairs and the vocabularies trained on the training split."""

    train_pairs: list
    val_pairs: list
    source_tokenizer: object
    target_tokenizer: object
    test_pairs: list = dataclasses.field(default_factory=list)


def run(args):
    """Trains, evaluates and saves a translation model as `args` says.

    The steps below, in order; each is a function of this module.
    """
    if args.smoke:
        args.pairs, args.epochs, args.vocabulary_size = 600, 2, 400
    keras.utils.set_random_seed(args.seed)
    settings = TrainingSettings.from_args(args)
    strategy, chief, run_dir = set_up_devices(args)
    corpus = prepare_corpus(args, run_dir)
    config = choose_model_shape(args, settings, corpus, run_dir)
    train, val = make_pipelines(corpus, config, args.seed)
    model = build_and_compile(config, settings, strategy, jit_compile=args.jit_compile,
                              verbose=getattr(args, "verbose", False))
    history, seconds = train_model(model, train, val, settings, run_dir, chief=chief,
                                   epochs=args.epochs)
    model.save_weights(os.path.join(run_dir, "final.weights.h5"))
    if not chief:  # the chief evaluates and exports
        return {"history": history.history, "seconds": seconds}
    translator, sample, report = evaluate_best(args, corpus, config, model, history, seconds)
    draw_pictures(history, translator, sample, args.output_dir)
    path = export_and_translate(translator, args.export_dir, [en for en, _ in sample[:3]])
    result = {"history": history.history, "exact_match": report["exact_match"],
              "bleu": report["bleu"], "seconds": seconds, "export_path": path}
    if corpus.test_pairs:
        test = score_test_split(path, corpus.test_pairs, DecodingConfig.from_args(args))
        result.update(test_bleu=test["bleu"], test_chrf=test["chrf"])
    return result


# ## Devices
#
# `--strategy` picks a `tf.distribute` strategy: one device, all local
# GPUs (`mirrored`), the workers of `TF_CONFIG` (`multi_worker`), or a
# TPU. Only the chief writes into `--output-dir` and exports; other
# workers keep their own files in `<output-dir>/worker_<i>`.
def set_up_devices(args):
    """`(strategy, chief, run_dir)`: the strategy, whether this process is the
    chief, and where this process writes."""
    strategy = distribute.make_strategy(args.strategy)
    if args.minutes and isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        raise ValueError("--minutes is not supported with several workers (each would stop "
                         "at a different step); use --epochs.")
    chief = distribute.is_chief()
    run_dir = distribute.worker_directory(args.output_dir)
    os.makedirs(run_dir, exist_ok=True)
    print(f"{strategy.num_replicas_in_sync} replica(s); this process is "
          f"{'the chief' if chief else 'a worker'}")
    return strategy, chief, run_dir


# ## Subword vocabularies
#
# The pairs are split 90/10 by the seed; on a real corpus the last 1,500
# of the held-out tenth are the test split (`split_test`). One WordPiece
# vocabulary per language, trained on the training split only and saved
# beside the model.
def prepare_corpus(args, run_dir):
    """The `Corpus`: pairs read and split, vocabularies trained and saved."""
    train_pairs, val_pairs = split(read_pairs(args), 0.1, args.seed)
    val_pairs, test_pairs = split_test(val_pairs, test_pair_count(args, len(val_pairs)))
    print(f"{len(train_pairs):,} training and {len(val_pairs):,} validation pairs"
          + (f"; {len(test_pairs):,} test pairs" if test_pairs else ""))
    source_tokenizer = tk.train_wordpiece([en for en, _ in train_pairs], args.vocabulary_size)
    target_tokenizer = tk.train_wordpiece([es for _, es in train_pairs], args.vocabulary_size)
    tk.save_tokenizer(source_tokenizer, os.path.join(run_dir, "source_vocabulary"))
    tk.save_tokenizer(target_tokenizer, os.path.join(run_dir, "target_vocabulary"))
    print(f"vocabularies: {source_tokenizer.vocabulary_size()} English, "
          f"{target_tokenizer.vocabulary_size()} Spanish word pieces")
    return Corpus(train_pairs, val_pairs, source_tokenizer, target_tokenizer, test_pairs)


# ## The model's shape
#
# `MODEL` above (`REAL_CORPUS_MODEL` for `--data` and `--tfds`), changed
# by `--config` and the model flags; the vocabulary sizes are the trained
# vocabularies'. The configuration is saved as the run's `config.json`.
def choose_model_shape(args, settings, corpus, run_dir):
    """The run's `TransformerConfig`, also written to `<run_dir>/config.json`."""
    config = model_options.model_config(
        args, REAL_CORPUS_MODEL if settings.real_corpus else MODEL,
        vocab_size=corpus.target_tokenizer.vocabulary_size(),
        source_vocab_size=corpus.source_tokenizer.vocabulary_size())
    with open(os.path.join(run_dir, "config.json"), "w") as handle:
        json.dump(config.to_dict(), handle, indent=2)
    return config


# ## Input pipelines
#
# `((source_ids, [START] y), y [END])` batches, bucketed by length with a
# budget of ~2,000 tokens a batch, so that little of each batch is padding.
def make_pipelines(corpus, config, seed):
    """`(train, val)` tf.data pipelines (the training one shuffled by `seed`)."""
    common = dict(max_length=config.max_length, tokens_per_batch=2048)
    train = pipelines.translation_dataset(
        corpus.train_pairs, corpus.source_tokenizer, corpus.target_tokenizer,
        shuffle_buffer=len(corpus.train_pairs), seed=seed, **common,
    )
    val = pipelines.translation_dataset(corpus.val_pairs, corpus.source_tokenizer,
                                        corpus.target_tokenizer, **common)
    return train, val


# ## The model
#
# The paper's schedule, rising for 400 steps to a peak of 3.1e-3 (at
# width 128) and then falling as 1/√step: a 5-minute run makes about
# 1,670 steps, and a longer or higher warm-up keeps the rate near its
# peak to the end of such a run. On a real corpus with `--minutes`, the
# clock schedule (`WallClockLearningRate`) instead rises over the first
# 5 % of the budget to `--learning-rate` and falls along a cosine to a
# tenth of it at the end, wherever the end falls in steps; there Muon
# orthogonalizes the projection matrices' updates (Adam the rest) at a
# peak of 6e-3, which reached a lower validation loss than Adam at 3e-3
# in 20 minutes on both seeds measured, and every weight decays by a
# tenth of the learning rate a step (`--weight-decay 0.1`, decoupled),
# which holds off the over-fitting of the budget's last epochs: lower
# validation loss again, and +1.7 and +1.8 test BLEU over Muon without it
# (+3.5 and +3.7 over Adam without it; docs/recipes.md).
# `--dtype-policy` (on a real corpus, `auto`: mixed_bfloat16 where the
# hardware multiplies bfloat16 natively) applies to this training model only.
def build_and_compile(config, settings, strategy, *, jit_compile=False, verbose=False):
    """The model, compiled with the label-smoothed loss that ignores padding."""
    ema = settings.ema
    with precision.dtype_policy(settings.policy), strategy.scope():  # on every replica
        model = build_transformer(config)
        averaging = dict(use_ema=True, ema_momentum=ema) if ema else {}
        decay = settings.weight_decay
        if settings.optimizer == "muon":
            rate = (settings.learning_rate if settings.schedule == "clock"
                    else TransformerSchedule(config.embed_dim, warmup_steps=400, scale=0.7))
            optimizer = Muon(rate, adam_beta_1=0.9, adam_beta_2=0.98, epsilon=1e-9,
                             weight_decay=decay, adam_weight_decay=decay, **averaging)
        elif settings.schedule == "clock":
            # Keras's weight decay is decoupled: Adam with it is AdamW.
            optimizer = keras.optimizers.Adam(settings.learning_rate, beta_1=0.9, beta_2=0.98,
                                              epsilon=1e-9, weight_decay=decay or None,
                                              **averaging)
        else:
            optimizer = transformer_optimizer(config.embed_dim, warmup_steps=400, scale=0.7,
                                              weight_decay=decay or None, **averaging)
        model.compile(
            optimizer=optimizer,
            loss=MaskedSparseCategoricalCrossentropy(label_smoothing=0.1),
            metrics=[MaskedAccuracy(), masked_perplexity()],
            jit_compile=jit_compile,
        )
    model_options.print_summary(model, config, verbose=verbose)
    # Under mixed_float16, `compile` wraps the optimizer for loss scaling.
    scaling = isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    print(f"dtype policy: {settings.policy}" + (" (dynamic loss scaling)" if scaling else ""))
    if settings.optimizer == "muon":
        print("optimizer: Muon on the projection matrices, Adam on the rest")
    if settings.weight_decay:
        print(f"weight decay: {settings.weight_decay:g} (decoupled, every weight)")
    if ema:
        print(f"weights: validated, kept and exported as their moving average "
              f"(momentum {ema:g}, about the last {1 / (1 - ema):,.0f} steps)")
    if settings.schedule == "clock":
        print(f"learning rate: warm-up, then a cosine over {settings.minutes:g} minutes "
              f"(peak {settings.learning_rate:g})")
    else:
        print("learning rate: the paper's warm-up (400 steps, peak "
              f"{0.7 * config.embed_dim ** -0.5 * 400 ** -0.5:.2g}) and 1/sqrt(step) decay")
    return model


# ## Training
#
# `training_callbacks` (above) keeps the best model by validation loss,
# backs the training state up each epoch and resumes from it when the
# same command runs again, stops at the first NaN loss and at the end of
# the budget, and with `--ema` validates and keeps the moving average.
def train_model(model, train, val, settings, run_dir, *, chief, epochs):
    """`(history, seconds)` of `model.fit` with the recipe's callbacks."""
    callbacks = training_callbacks(
        run_dir, chief=chief, ema=settings.ema, minutes=settings.minutes,
        clock_peak=settings.learning_rate if settings.schedule == "clock" else None)
    started = time.time()
    # The pipeline shuffles itself (`shuffle=False` only tells Keras so).
    history = model.fit(train, validation_data=val, epochs=epochs, callbacks=callbacks,
                        shuffle=False, verbose=2)
    return history, time.time() - started


# ## Translating held-out sentences
#
# The best checkpoint, in a float32 copy of the model whatever the training
# policy, behind a `Translator`: tokenizer → cached search (beam search of
# 4 unless the decoding options say otherwise) compiled with XLA →
# detokenizer, all TensorFlow graph code. We score held-out sentences by
# exact match and BLEU (case-blind: the WordPiece vocabulary is lowercased).
def evaluate_best(args, corpus, config, model, history, seconds):
    """`(translator, sample, report)`: the best checkpoint's translator, the
    held-out pairs it translated, and its exact match, BLEU and chrF on them."""
    best = float32_copy(keras.saving.load_model(os.path.join(args.output_dir, "best.keras")))
    decoding = DecodingConfig.from_args(args)
    translator = Translator(best, corpus.source_tokenizer, corpus.target_tokenizer,
                            max_length=config.max_length, decoding=decoding)
    sample = corpus.val_pairs[: 16 if args.smoke else 500]
    hypotheses, quality = evaluation.score_translations(
        evaluation.text_function(translator.translate), sample)
    # The step count comes from the optimizer: Keras's own `ms/step` for an
    # epoch that `TimeBudget` cut short divides by the full epoch's steps.
    print(f"\nTrained for {seconds:.0f} s ({int(model.optimizer.iterations.numpy()):,} steps); "
          f"validation loss {min(history.history['val_loss']):.3f}")
    print(f"On {len(sample)} validation sentences ({describe(decoding)}): exact match "
          f"{quality['exact_match']:.1%}, BLEU {quality['bleu']:.1f}, "
          f"chrF {quality['chrf']:.1f}\n")
    for (english, spanish), hypothesis in list(zip(sample, hypotheses))[:6]:
        print(f"  {english}\n    → {hypothesis}\n    (reference: {spanish})")
    return translator, sample, quality


# ## Pictures
#
# The loss and accuracy curves, and the cross-attention of the last
# decoder block for one sentence (a panel per head: which source pieces
# each output piece looked at).
def draw_pictures(history, translator, sample, output_dir):
    """`curves.png` and `attention.png` in `output_dir`."""
    plots.plot_history(history.history, os.path.join(output_dir, "curves.png"))
    plots.plot_attention(translator, sample[0][0], os.path.join(output_dir, "attention.png"))


# ## Export, and translate through the SavedModel
#
# `export_saved_model` writes the next version under `--export-dir`
# (TF Serving's layout), atomically. Loading it needs only TensorFlow and
# tensorflow-text; here we load it back and translate through it.
def export_and_translate(translator, export_dir, texts):
    """Exports `translator` as the next version in `export_dir`; returns its path."""
    path = export_saved_model(translator, export_dir)
    served = tf.saved_model.load(path).signatures["serving_default"]
    outputs = served(text=tf.constant(texts))["translation"].numpy()
    print(f"\nExported to {path}; translated through the SavedModel:")
    for english, spanish in zip(texts, outputs):
        print(f"  {english}  →  {spanish.decode('utf-8')}")
    return path


# ## The test split, through the SavedModel
#
# What a server would load, scored once on the pairs that nothing in
# training read: BLEU and chrF (lowercased, as above).
def score_test_split(path, test_pairs, decoding, batch_size=64):
    """`{"bleu", "chrf", "exact_match"}` of the SavedModel at `path` on `test_pairs`, printed."""
    served = tf.saved_model.load(path).signatures["serving_default"]
    _, quality = evaluation.score_translations(evaluation.text_function(served), test_pairs,
                                               batch_size)
    print(f"\nTest split: {len(test_pairs):,} pairs that training never read, through the "
          f"SavedModel ({describe(decoding)}): BLEU {quality['bleu']:.1f}, "
          f"chrF {quality['chrf']:.1f}, exact match {quality['exact_match']:.1%}")
    return quality


if __name__ == "__main__":
    main()
