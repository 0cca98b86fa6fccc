"""Keras callbacks of a training run: per-epoch randomness, timing, the NaN guard, the CSV log, MLflow.

The distributed loop calls the same callbacks' `on_epoch_end` itself, so both paths log alike.
"""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path

import keras
import numpy as np

from vaepipe import paths, tracking
from vaepipe.batches import epoch_seed
from vaepipe.errors import VaepipeError, stop_if_signalled


class NonFiniteLossError(VaepipeError):
    exit_code = 5


class EpochRandomState(keras.callbacks.Callback):
    """Before each epoch, set every SeedGenerator in the model from (seed, epoch); the data order is
    keyed by the epoch inside the dataset (batches.make_datasets)."""

    def __init__(self, seed: int):
        super().__init__()
        self.seed = seed

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        states = [v for v in self.model.variables if v.name == "seed_generator_state"]
        for index, state in enumerate(states):
            state.assign(np.array([epoch_seed(self.seed, epoch, index), 0], dtype=state.dtype))


class StopOnSignal(keras.callbacks.Callback):
    """Between compiled calls, stop on a SIGINT/SIGTERM whose exception library code swallowed
    (errors.stop_if_signalled): one check per call, so per step on Keras's per-step path."""

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        stop_if_signalled()

    def on_test_batch_end(self, batch: int, logs: dict | None = None) -> None:
        stop_if_signalled()

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        stop_if_signalled()


class EpochMetricsLogger(keras.callbacks.Callback):
    """Log each epoch's losses (and epoch_time) to the active run with step = epoch number (1-based).

    mlflow.keras's MlflowCallback would also log stepless `validation_*` copies of every epoch's
    validation metrics; this logs each value once, synchronously, so a kill loses nothing logged.
    """

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.write([(epoch, logs or {})])

    def write(self, epochs: list[tuple[int, dict]]) -> None:
        for epoch, logs in epochs:
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
    """Append one CSV row per finished epoch (the columns of keras.callbacks.CSVLogger)."""

    def __init__(self, path: Path):
        super().__init__()
        self.path = path

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.write([(epoch, logs or {})])

    def write(self, epochs: list[tuple[int, dict]]) -> None:
        """Append one row per (epoch, logs). Flushed, not fsynced: a killed process loses nothing the
        kernel has, and the checkpoint beside it is not fsynced either (an fsync cost 29 ms per
        epoch under load, bench/NOTES.md run 27)."""
        if not epochs:
            return
        keys = sorted(epochs[0][1])
        new = not self.path.exists() or self.path.stat().st_size == 0
        with self.path.open("a", newline="") as handle:
            writer = csv.writer(handle)
            if new:
                writer.writerow(["epoch", *keys])
            writer.writerows([epoch, *(float(logs[key]) for key in keys)] for epoch, logs in epochs)
            handle.flush()


class EpochBookkeeping(keras.callbacks.Callback):
    """The end-of-epoch writes with MLflow batched: the CSV row and the checkpoint after every epoch,
    the MLflow metrics of several epochs at a time, so that MLflow (the costly write: about 0.1 s per
    call to a SQLite store under load, bench/NOTES.md run 27) costs at most about 1/FLUSH_RATIO of
    the training time however short an epoch is.

    MLflow is flushed after the first epoch, after the last, on any error or signal (`flush`, called
    by the training loop), and otherwise once the time since the last flush exceeds FLUSH_RATIO
    times what that flush took. Each checkpoint records how many epochs MLflow had then
    (`logged`); after a SIGKILL the resumed run logs the epochs between that and the checkpoint
    from the checkpoint's CSV log (`log_missed`), with the values the killed run computed. So
    nothing a finished epoch logged is lost; an epoch logged twice has identical values.
    """

    FLUSH_RATIO = 20

    def __init__(self, log: EpochLog, metrics: EpochMetricsLogger, checkpoint, final_epoch: int):
        super().__init__()
        self.log, self.metrics, self.checkpoint = log, metrics, checkpoint
        self.final_epoch = final_epoch  # 0-based index of the run's last epoch
        self.unlogged: list[tuple[int, dict]] = []  # finished epochs not yet in MLflow
        self.logged = 0  # epochs of this run in MLflow
        self.last_flush_end = time.perf_counter()
        self.last_flush_seconds = 0.0

    def set_model(self, model: keras.Model) -> None:
        super().set_model(model)
        self.checkpoint.set_model(model)

    def log_missed(self, start_epoch: int) -> None:
        """Log to MLflow the checkpointed epochs a killed run had not logged yet (from the CSV log)."""
        logged = min(self.checkpoint.logged_epochs(), start_epoch)
        if logged < start_epoch:
            rows = list(csv.DictReader(io.StringIO(self.log.path.read_text())))
            self.metrics.write([(int(row.pop("epoch")), {key: float(value) for key, value in row.items()})
                                for row in rows if logged <= int(row["epoch"]) < start_epoch])
        self.logged = start_epoch

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = dict(logs or {})
        self.log.write([(epoch, logs)])
        self.unlogged.append((epoch, logs))
        due = (not self.last_flush_seconds or epoch >= self.final_epoch
               or time.perf_counter() - self.last_flush_end >= self.FLUSH_RATIO * self.last_flush_seconds)
        if due:
            self.flush()
        self.checkpoint.write(epoch + 1, self.checkpoint.snapshot(), logged=self.logged)

    def on_train_end(self, logs: dict | None = None) -> None:
        self.flush()

    def flush(self) -> None:
        """Log the epochs MLflow does not have yet; safe to call again after an interrupted flush."""
        start = time.perf_counter()
        while self.unlogged:  # one epoch at a time, so a retried flush never logs an epoch twice
            self.metrics.write(self.unlogged[:1])
            self.logged = self.unlogged.pop(0)[0] + 1
        self.last_flush_end = time.perf_counter()
        self.last_flush_seconds = self.last_flush_end - start


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
