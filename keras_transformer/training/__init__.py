"""Losses, metrics, schedules and optimizers for training Transformers."""

from keras_transformer.training.checkpoints import AtomicBackupAndRestore, AtomicBestCheckpoint
from keras_transformer.training.callbacks import StopOnNaN, TimeBudget, WallClockLearningRate
from keras_transformer.training.losses import MaskedSparseCategoricalCrossentropy
from keras_transformer.training.metrics import MaskedAccuracy, masked_perplexity
from keras_transformer.training.optimizers import Muon
from keras_transformer.training.schedules import TransformerSchedule, transformer_optimizer

__all__ = [
    "AtomicBackupAndRestore",
    "AtomicBestCheckpoint",
    "MaskedAccuracy",
    "MaskedSparseCategoricalCrossentropy",
    "Muon",
    "StopOnNaN",
    "TimeBudget",
    "TransformerSchedule",
    "WallClockLearningRate",
    "distribute",
    "masked_perplexity",
    "transformer_optimizer",
]


def __getattr__(name):
    # `distribute` (TensorFlow's strategies) loads on first use, so that
    # `import keras_transformer`, which registers this package's losses,
    # metrics and schedules, needs no TensorFlow (the JAX checks run without).
    if name == "distribute":
        import importlib

        return importlib.import_module("keras_transformer.training.distribute")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
