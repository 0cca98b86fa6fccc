"""The one end-of-epoch path of both training loops: check the loss, append the epoch's CSV row, log it
to MLflow (batched), checkpoint. In that order, so a checkpoint always follows its row and a NaN epoch
is never logged or checkpointed.

The single-process loop gets it as a Keras callback; the distributed loop calls the same hooks itself.
"""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path

import keras

from vaepipe import paths, tracking
from vaepipe.train.callbacks import check_finite
from vaepipe.train.checkpoint import Checkpoint


class EpochEnd(keras.callbacks.Callback):
    """What happens when an epoch finishes: the CSV row and the checkpoint after every epoch, the
    MLflow metrics of several epochs at a time, so that MLflow (the costly write) costs at most about
    1/FLUSH_RATIO of the training time however short an epoch is.

    MLflow is flushed after the first epoch, after the last (and once more by the session when
    training ends), on any error or signal (`flush_after_error`), and otherwise once the time since
    the last flush exceeds FLUSH_RATIO times what that flush took. Each checkpoint records how many
    epochs MLflow had then; after a SIGKILL the resumed run logs the epochs between that and the
    checkpoint from the checkpoint's CSV log (`resume`), with the values the killed run computed.
    So nothing a finished epoch logged is lost; an epoch logged twice has identical values.
    """

    FLUSH_RATIO = 20

    def __init__(self, log: Path, checkpoint: Checkpoint, final_epoch: int):
        super().__init__()
        self.log = log  # the epoch log beside the checkpoint; the stage's train_log.csv when finished
        self.checkpoint = checkpoint
        self.final_epoch = final_epoch  # 0-based index of the run's last epoch
        self.unlogged: list[tuple[int, dict]] = []  # finished epochs not yet in MLflow
        self.logged = 0  # epochs of this run in MLflow
        self.last_flush_end = time.perf_counter()
        self.last_flush_seconds = 0.0

    def resume(self, start_epoch: int) -> None:
        """Log to MLflow the checkpointed epochs a killed run had not logged yet (from the CSV log)."""
        logged = min(self.checkpoint.logged_epochs(), start_epoch)
        if logged < start_epoch:
            header, rows = read_log(self.log)
            for epoch, *values in rows:
                if logged <= epoch < start_epoch:
                    tracking.log_metrics(dict(zip(header[1:], values, strict=True)), step=epoch + 1)
        self.logged = start_epoch

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = dict(logs or {})
        check_finite(epoch, logs)
        self._append_row(epoch, logs)
        self.unlogged.append((epoch, logs))
        due = (not self.last_flush_seconds or epoch >= self.final_epoch
               or time.perf_counter() - self.last_flush_end >= self.FLUSH_RATIO * self.last_flush_seconds)
        if due:
            self.flush()
        self.checkpoint.write(epoch + 1, logged=self.logged)

    def flush(self) -> None:
        """Log the epochs MLflow does not have yet; safe to call again after an interrupted flush."""
        start = time.perf_counter()
        while self.unlogged:  # one epoch at a time, so a retried flush never logs an epoch twice
            epoch, logs = self.unlogged[0]
            if logs:
                tracking.log_metrics(logs, step=epoch + 1)
            self.logged = self.unlogged.pop(0)[0] + 1
        self.last_flush_end = time.perf_counter()
        self.last_flush_seconds = self.last_flush_end - start

    def flush_after_error(self) -> None:
        """After an error or a signal, log the finished epochs to MLflow; a failure here (e.g. the
        tracking store is gone) must not hide the original error, and the resumed run logs them."""
        try:
            self.flush()
        except Exception as error:  # noqa: BLE001
            print(f"train: could not log the last finished epochs to MLflow ({error}); the resumed run logs them",
                  flush=True)

    def _append_row(self, epoch: int, logs: dict) -> None:
        """Append the epoch's row (the columns of keras.callbacks.CSVLogger). Flushed, not fsynced: a
        killed process loses nothing the kernel has, and the checkpoint beside it is not fsynced either.
        A row torn by a kill is the last one, of an epoch after the checkpoint: the resume's read_log
        drops it (and keep_epochs_before rewrites the file without it) before anything is appended."""
        keys = sorted(logs)
        new = not self.log.exists() or self.log.stat().st_size == 0
        with self.log.open("a", newline="") as handle:
            writer = csv.writer(handle)
            if new:
                writer.writerow(["epoch", *keys])
            writer.writerow([epoch, *(float(logs[key]) for key in keys)])
            handle.flush()


def read_log(log: Path) -> tuple[list[str], list[tuple]]:
    """The epoch log's header and its valid rows, as (epoch, *floats), epochs strictly increasing.

    A row that is torn (a kill mid-write), has the wrong number of fields, a non-integer epoch, a
    non-number value or an epoch out of order is dropped, with one line saying how many and which line.
    Without a valid header (`epoch,...`) there are no rows.
    """
    text = log.read_text(errors="replace") if log.exists() else ""
    try:
        lines = list(csv.reader(io.StringIO(text.replace("\0", ""))))
    except csv.Error:  # e.g. a garbage field longer than csv's limit
        lines = []
    header = lines[0] if lines else []
    if not header or header[0] != "epoch" or any(not name.strip() for name in header):
        if text:
            print(f"train: the epoch log {log} has no valid header; starting it anew", flush=True)
        return ["epoch"], []
    rows, dropped = [], []
    for number, line in enumerate(lines[1:], start=2):
        row = _parse_row(line, len(header))
        if row is None or (rows and row[0] <= rows[-1][0]):
            dropped.append(number)
        else:
            rows.append(row)
    if dropped:
        print(f"train: dropped {len(dropped)} unreadable row(s) of the epoch log {log} (line "
              f"{', '.join(map(str, dropped[:5]))}{', ...' if len(dropped) > 5 else ''})", flush=True)
    return header, rows


def _parse_row(line: list[str], width: int) -> tuple | None:
    if len(line) != width:
        return None
    try:
        epoch, values = int(line[0]), tuple(float(value) for value in line[1:])
    except ValueError:
        return None
    return (epoch, *values) if epoch >= 0 else None


def keep_epochs_before(log: Path, start_epoch: int) -> None:
    """Drop rows of epochs >= start_epoch (logged after the last checkpoint, about to be redone), and
    any row read_log finds invalid; rewritten atomically."""
    if start_epoch == 0 or not log.exists():
        log.unlink(missing_ok=True)
        return
    header, rows = read_log(log)
    kept = [[row[0], *row[1:]] for row in rows if row[0] < start_epoch]
    if not kept:  # _append_row then starts the file with its header
        log.unlink()
        return
    with paths.atomic_path(log) as tmp:
        with tmp.open("w", newline="") as handle:
            csv.writer(handle).writerows([header, *kept])
