"""Losses, metrics, schedules and optimizers for training Transformers."""

from keras_transformer.training import distribute
from keras_transformer.training.checkpoints import AtomicBackupAndRestore, AtomicBestCheckpoint
from keras_transformer.training.callbacks import StopOnNaN, TimeBudget, WallClockLearningRate
from keras_transformer.training.losses import MaskedSparseCategoricalCrossentropy
from keras_transformer.training.metrics import MaskedAccuracy, masked_perplexity
from keras_transformer.training.schedules import TransformerSchedule, transformer_optimizer

__all__ = [
    "AtomicBackupAndRestore",
    "AtomicBestCheckpoint",
    "MaskedAccuracy",
    "MaskedSparseCategoricalCrossentropy",
    "StopOnNaN",
    "TimeBudget",
    "TransformerSchedule",
    "WallClockLearningRate",
    "distribute",
    "masked_perplexity",
    "transformer_optimizer",
]
