"""Keras callbacks of a training run: per-epoch randomness, timing, the NaN guard, the CSV log, MLflow.

The distributed loop calls the same callbacks' `on_epoch_end` itself, so both paths log alike.
"""

from __future__ import annotations

import csv
import io
import os
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from vaepipe import paths, tracking
from vaepipe.batches import epoch_seed
from vaepipe.errors import VaepipeError


class NonFiniteLossError(VaepipeError):
    exit_code = 5


class EpochRandomState(keras.callbacks.Callback):
    """Before each epoch, set the data order and every SeedGenerator in the model from (seed, epoch)."""

    def __init__(self, seed: int, epoch: tf.Variable):
        super().__init__()
        self.seed = seed
        self.epoch = epoch

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch.assign(epoch)
        states = [v for v in self.model.variables if v.name == "seed_generator_state"]
        for index, state in enumerate(states):
            state.assign(np.array([epoch_seed(self.seed, epoch, index), 0], dtype=state.dtype))


class EpochMetricsLogger(keras.callbacks.Callback):
    """Log each epoch's losses (and epoch_time) to the active run with step = epoch number (1-based).

    mlflow.keras's MlflowCallback would also log stepless `validation_*` copies of every epoch's
    validation metrics; this logs each value once, synchronously, so a kill loses nothing logged.
    """

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs:
            tracking.log_metrics(logs, step=epoch + 1)


class EpochTimer(keras.callbacks.Callback):
    """Add `epoch_time` (seconds, wall clock) to each epoch's logs, for CSV and MLflow alike."""

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is not None:
            logs["epoch_time"] = time.perf_counter() - self._start


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stop with a clear error when the epoch's loss is NaN or infinite (the checkpoint is kept).

    Runs before the epoch is logged or checkpointed, so the last checkpoint is the last good epoch.
    """

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(loss):
            raise NonFiniteLossError(
                f"training loss became {loss} in epoch {epoch + 1}; lower train.learning_rate "
                "(the last good checkpoint is kept)"
            )


class EpochLog(keras.callbacks.Callback):
    """Append one CSV row per finished epoch (the columns of keras.callbacks.CSVLogger), flushed."""

    def __init__(self, path: Path):
        super().__init__()
        self.path = path

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        keys = sorted(logs)
        new = not self.path.exists() or self.path.stat().st_size == 0
        with self.path.open("a", newline="") as handle:
            writer = csv.writer(handle)
            if new:
                writer.writerow(["epoch", *keys])
            writer.writerow([epoch, *(float(logs[key]) for key in keys)])
            handle.flush()
            os.fsync(handle.fileno())


def keep_epochs_before(log: Path, start_epoch: int) -> None:
    """Drop rows of epochs >= start_epoch (logged after the last checkpoint, about to be redone)."""
    if start_epoch == 0 or not log.exists():
        log.unlink(missing_ok=True)
        return
    rows = list(csv.reader(io.StringIO(log.read_text())))
    kept = rows[:1] + [row for row in rows[1:] if row and int(row[0]) < start_epoch]
    with paths.atomic_path(log) as tmp:
        with tmp.open("w", newline="") as handle:
            csv.writer(handle).writerows(kept)
