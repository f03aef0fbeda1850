"""Backups and checkpoints that a killed process never leaves half-written.

Keras's `keras.callbacks.BackupAndRestore` overwrites `latest.weights.h5` in
place and then rewrites `training_metadata.json`; `ModelCheckpoint` overwrites
`best.keras` in place. A process killed while they write (a preempted VM, an
OOM kill, Ctrl-C twice) leaves a truncated file: the next run cannot start at
all (`OSError: Unable to synchronously open file (truncated file ...)`), or
finds new weights beside the previous epoch's metadata and trains an epoch
twice, or the best model so far is gone.

`AtomicBackupAndRestore` writes each backup as a new weights file, flushes it
to disk, and only then commits it by atomically replacing the metadata file
that names it (`os.replace`). The metadata is the single commit point: at any
instant a kill leaves either the previous backup or the new one, whole.
Weights files that no committed metadata names (a kill mid-write) are
removed at the next start.

    callbacks = [AtomicBackupAndRestore("runs/translation/backup")]
    model.fit(..., callbacks=callbacks)   # killed anywhere: run it again

Like Keras's callback, it resumes at the start of the epoch after the last
backup (with `save_freq` in batches: at the start of the epoch in progress,
from the weights and optimizer state of the backup), and deletes the backup
when training ends normally unless `delete_checkpoint=False`.

`AtomicBestCheckpoint` keeps the best model by a monitored metric the same
way: written beside the target, flushed, then renamed over it.
"""

import json
import math
import os
import re
import shutil

import keras

from keras_transformer._keras_compat import set_initial_epoch

_WEIGHTS = re.compile(r"^backup-(\d+)\.weights\.h5$")
METADATA = "training_metadata.json"


def _fsync(path, directory=False):
    descriptor = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class AtomicBackupAndRestore(keras.callbacks.Callback):
    """Backs up the training state so that a killed `fit` resumes where it was.

    Args:
        backup_dir: directory of the backup, one per run (and per worker in
            a multi-worker run: see `distribute.worker_directory`).
        save_freq: `"epoch"` (after every epoch) or an int: every that many
            batches.
        delete_checkpoint: remove `backup_dir` when `fit` ends normally.

    Files in `backup_dir`: `backup-<n>.weights.h5` (model and optimizer
    weights, as `model.save_weights` writes them) and `training_metadata.json`
    (`{"epoch", "backup", "weights"}`: the epoch to resume at, the backup's
    number and its weights file).

    Raises (at the start of `fit`):
        ValueError: the model is not built, or the metadata file is not this
            callback's JSON (the message names the file).
        OSError: the committed weights file cannot be read (disk damage, not
            a kill); the message names the file.
    """

    def __init__(self, backup_dir, save_freq="epoch", delete_checkpoint=True):
        super().__init__()
        if not backup_dir:
            raise ValueError(f"backup_dir must be a directory path, received {backup_dir!r}")
        if save_freq != "epoch" and not (isinstance(save_freq, int) and save_freq > 0):
            raise ValueError(
                f"save_freq must be 'epoch' or a positive int, received {save_freq!r}")
        self.backup_dir = os.fspath(backup_dir)
        self.save_freq = save_freq
        self.delete_checkpoint = delete_checkpoint
        self._backup = 0  # number of the last committed backup
        self._epoch = 0  # the epoch in progress
        self._batches_since_save = 0

    @property
    def metadata_path(self):
        return os.path.join(self.backup_dir, METADATA)

    # ## Restoring

    def _read_metadata(self):
        if not os.path.exists(self.metadata_path):
            return None
        try:
            with open(self.metadata_path) as handle:
                metadata = json.load(handle)
            int(metadata["epoch"]), int(metadata["backup"]), str(metadata["weights"])
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(
                f"{self.metadata_path} is not the metadata of an AtomicBackupAndRestore "
                f"backup ({error}); expected JSON with 'epoch', 'backup' and 'weights'. "
                f"Delete {self.backup_dir} to start the run over.") from error
        return metadata

    def on_train_begin(self, logs=None):
        if not self.model.built:
            raise ValueError(
                "AtomicBackupAndRestore needs a built model before fit() (call it on a "
                f"batch first); received an unbuilt {type(self.model).__name__}.")
        metadata = self._read_metadata()
        committed = metadata["weights"] if metadata else None
        self._remove_weights_files(keep=committed)  # leftovers of a kill mid-write
        if metadata is None:
            return
        path = os.path.join(self.backup_dir, committed)
        optimizer = self.model.optimizer
        if optimizer is not None and not optimizer.built:
            optimizer.build(self.model.trainable_variables)
        try:
            self.model.load_weights(path)
        except Exception as error:  # h5py raises OSError; a missing file, ValueError
            raise OSError(
                f"the backup weights {path} (named by {self.metadata_path}) cannot be "
                f"read: {error}. Delete {self.backup_dir} to start the run over.") from error
        self._backup = int(metadata["backup"])
        self._epoch = int(metadata["epoch"])
        set_initial_epoch(self.model, self._epoch)  # how Keras's own callback resumes fit

    # ## Backing up

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.save_freq == "epoch":
            return
        self._batches_since_save += 1
        if self._batches_since_save >= self.save_freq:
            self._batches_since_save = 0
            self._save(resume_epoch=self._epoch)

    def on_epoch_end(self, epoch, logs=None):
        if self.save_freq == "epoch":
            self._save(resume_epoch=epoch + 1)

    def _save(self, resume_epoch):
        os.makedirs(self.backup_dir, exist_ok=True)
        number = self._backup + 1
        name = f"backup-{number:08d}.weights.h5"
        path = os.path.join(self.backup_dir, name)
        # 1. The new weights, under a name no committed backup uses, on disk.
        self.model.save_weights(path, overwrite=True)
        _fsync(path)
        # 2. The commit: metadata naming them, replaced in one step.
        staging = self.metadata_path + ".tmp"
        with open(staging, "w") as handle:
            json.dump({"epoch": resume_epoch, "backup": number, "weights": name}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(staging, self.metadata_path)
        _fsync(self.backup_dir, directory=True)
        self._backup = number
        # 3. The previous backup is no longer needed.
        self._remove_weights_files(keep=name)

    def _remove_weights_files(self, keep):
        if not os.path.isdir(self.backup_dir):
            return
        for entry in os.listdir(self.backup_dir):
            if (_WEIGHTS.match(entry) and entry != keep) or entry == METADATA + ".tmp":
                os.remove(os.path.join(self.backup_dir, entry))

    def on_train_end(self, logs=None):
        if self.delete_checkpoint:
            shutil.rmtree(self.backup_dir, ignore_errors=True)


class AtomicBestCheckpoint(keras.callbacks.Callback):
    """Saves the model (`.keras`) whenever `monitor` improves, atomically.

    `ModelCheckpoint(filepath, monitor, save_best_only=True)` without the
    window in which a kill leaves `filepath` half-written: the model is saved
    to a hidden file in the same directory, flushed, and renamed over
    `filepath`, so `filepath` is always the previous best or the new one.

    Args:
        filepath: where the best model goes; must end in `.keras`.
        monitor: a key of the epoch logs, e.g. `"val_loss"`.
        mode: `"min"`, `"max"`, or `"auto"` (max for names containing "acc",
            min otherwise).

    Attributes:
        best: the best value so far (starts at ±inf in each `fit`, as
            Keras's does).
    """

    def __init__(self, filepath, monitor="val_loss", mode="auto"):
        super().__init__()
        self.filepath = os.fspath(filepath)
        if not self.filepath.endswith(".keras"):
            raise ValueError(f"filepath must end in '.keras', received {self.filepath!r}")
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"mode must be 'auto', 'min' or 'max', received {mode!r}")
        if mode == "auto":
            mode = "max" if "acc" in monitor else "min"
        self.monitor, self.mode = monitor, mode

    def on_train_begin(self, logs=None):
        self.best = math.inf if self.mode == "min" else -math.inf

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None:
            raise KeyError(
                f"AtomicBestCheckpoint monitors {self.monitor!r}, which is not in the "
                f"epoch logs; available: {sorted(logs or {})}")
        value = float(value)
        if not (value < self.best if self.mode == "min" else value > self.best):
            return
        self.best = value
        directory, name = os.path.split(os.path.abspath(self.filepath))
        os.makedirs(directory, exist_ok=True)
        staging = os.path.join(directory, f".{name[:-len('.keras')]}-{os.getpid()}.tmp.keras")
        try:
            self.model.save(staging, overwrite=True)
            _fsync(staging)
            os.replace(staging, self.filepath)
            _fsync(directory, directory=True)
        finally:
            if os.path.exists(staging):
                os.remove(staging)
