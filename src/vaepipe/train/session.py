"""The run session both training loops share: checkpoint, MLflow run, the end-of-epoch path and the
stage's outputs.

    session = open_session(params, inputs, on_outputs)  # the key, this key's directory locked, retention
    start_epoch = session.restore(vae)                   # epochs already done (0 for a fresh run)
    with session.run(vae, start_epoch) as epoch_end:     # the MLflow run, opened or continued
        ... train, calling epoch_end.on_epoch_end after each epoch ...
    # here the outputs are written, each on_outputs hook has run, and the checkpoint is gone

open_session runs the steps before a run explicitly, in order: the checkpoint key (provenance.py: hashes
the training code and reads the data's checksums), the session itself, whose constructor does no I/O
beyond its own checkpoint directory (created and locked: a second train of the same key stops there,
before touching anything else), then retention of other keys' checkpoints (retention.py: may remove
them and close their MLflow runs). The tracking store's fail-fast check runs before all of this, in
stages/train.py, before TensorFlow loads.

What the train stage adds from outside training's code comes in through two parameters of the loops'
`train()`, never through an import here: Keras callbacks run after the end-of-epoch path (a search
trial's pruning, tune/pruning.py) and `on_outputs` hooks called with the saved model file once the
outputs are written, inside the MLflow run (the model logged with serving.py, tracking/model_logging.py).

Resuming is exact: every epoch's randomness is a function of (train.seed, epoch) alone
(vaepipe.train.inputs), and the checkpoint written at the end of each epoch holds the weights and the
optimizer state. A run interrupted after epoch k and resumed computes bit for bit what the
uninterrupted run computes, and continues the same MLflow run.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import keras

from vaepipe import epoch_metrics, paths, tracking
from vaepipe.config import Params, flat_params
from vaepipe.errors import CheckpointBusy
from vaepipe.prepared import TrainingInputs
from vaepipe.train.checkpoint import Checkpoint
from vaepipe.train.epoch_end import EpochEnd, keep_epochs_before, read_log
from vaepipe.train.provenance import key_of, key_parts
from vaepipe.train.retention import LOCK_FILE, keep_other_checkpoints

OutputsHook = Callable[[Path], None]  # given the saved model file (paths.MODEL_FILE) once the outputs are written


def open_session(params: Params, inputs: TrainingInputs, on_outputs: Sequence[OutputsHook] = ()) -> TrainingSession:
    """The steps before a run, in this order (the chief's only, in the distributed loop):

    1. the checkpoint key: the params, the training code (read with `ast`), the data's checksums;
    2. the session: this key's checkpoint directory, created and locked (CheckpointBusy if another
       train holds it: nothing else has been touched);
    3. retention: other keys' checkpoints kept or removed, the MLflow runs of removed ones closed.
    """
    provenance = key_parts(params)
    session = TrainingSession(params, key_of(provenance), provenance, inputs.train_sha256, on_outputs)
    keep_other_checkpoints(current=session.directory, provenance=provenance)
    return session


class TrainingSession:
    """One training run's state on disk (checkpoint, epoch log, run id) and its MLflow run.

    The constructor touches nothing but the key's checkpoint directory (it creates and locks it): no source
    or data hashing, no other checkpoint, no tracking store (tests/test_train_session.py)."""

    def __init__(self, params: Params, key: str, provenance: dict[str, str], dataset_sha: str,
                 on_outputs: Sequence[OutputsHook] = ()):
        self.params = params
        self.dataset_sha = dataset_sha  # the training images' sha256 (the run's data tag)
        self.on_outputs = tuple(on_outputs)
        self.directory = paths.checkpoint_dir(key)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock = hold_exclusively(self.directory)
        self.checkpoint = Checkpoint(self.directory, key, provenance)
        self.epoch_log = self.directory / "train_log.csv"
        self.run_id_file = paths.checkpoint_run_id_file(key)

    def restore(self, vae: keras.Model) -> int:
        """Load the last checkpoint into the compiled model; return the number of epochs it holds."""
        start_epoch = self.checkpoint.restore(vae)
        keep_epochs_before(self.epoch_log, start_epoch)
        return start_epoch

    @contextmanager
    def run(self, vae: keras.Model, start_epoch: int) -> Iterator[EpochEnd]:
        """Open (or continue) the MLflow run and yield the one end-of-epoch path (epoch_end.EpochEnd),
        with the epochs a killed run had not logged yet logged. On an error, the finished epochs reach
        MLflow if they can; on success, the outputs are written, the on_outputs hooks run (in the run)
        and the checkpoint is removed."""
        # The run of an interrupted attempt with these params (even one killed before its first
        # checkpoint) is continued, so the store never holds an abandoned run for these params.
        previous_run = self.run_id_file.read_text().strip() if self.run_id_file.exists() else None
        start = {"run_name": tracking.run_name(self.params), "params": flat_params(self.params),
                 "tags": tracking.run_tags(self.dataset_sha)}
        with tracking.active_run(previous_run, start=start) as run_id:
            self._announce(run_id, start_epoch)
            log_model_summary(vae)
            epoch_end = EpochEnd(self.epoch_log, self.checkpoint, final_epoch=self.params.train.epochs - 1)
            epoch_end.resume(start_epoch)
            try:
                yield epoch_end
            except BaseException:
                epoch_end.flush_after_error()
                raise
            epoch_end.flush()
            write_outputs(vae, self.epoch_log, run_id, self.params)
            for hook in self.on_outputs:  # e.g. the model logged to MLflow: after the outputs, in the run
                hook(paths.MODEL_FILE)
        # Finished: no checkpoint is left that a later run could mistake for an interrupted one.
        shutil.rmtree(self.directory, ignore_errors=True)

    def _announce(self, run_id: str, start_epoch: int) -> None:
        """Remember the run id beside the checkpoint (so a restart continues this run) and say what runs."""
        with paths.atomic_path(self.run_id_file) as tmp_id:
            tmp_id.write_text(run_id)
        tracking.print_run_link(run_id)
        if start_epoch:
            print(f"train: resuming after epoch {start_epoch} of {self.params.train.epochs} "
                  f"from {self.directory.relative_to(paths.ROOT)}", flush=True)


def hold_exclusively(directory: Path) -> IO[str]:
    """Lock the checkpoint directory for this process's lifetime (flock: the kernel releases it when the
    process dies, however it dies). A second train of the same params (say a new `dvc repro` beside a
    train stage orphaned by a killed `dvc`) stops in one line naming the process that holds it, instead
    of resuming the same checkpoint beside it and logging its epochs twice."""
    handle = (directory / LOCK_FILE).open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        shown = directory.relative_to(paths.ROOT) if directory.is_relative_to(paths.ROOT) else directory
        raise CheckpointBusy(f"train: checkpoint {shown} is in use by train process {holder} (still running, "
                             f"e.g. after its `dvc` was killed): wait for it to finish, or stop it with "
                             f"`kill {holder}`, then run `dvc repro` again") from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def log_model_summary(vae: keras.Model) -> None:
    tracking.log_metrics({"parameter_count": vae.count_params()})
    summary: list[str] = []
    vae.encoder.summary(print_fn=summary.append)
    vae.decoder.summary(print_fn=summary.append)
    tracking.log_text("\n".join(summary), "model_summary.txt")


def write_outputs(vae: keras.Model, epoch_log: Path, run_id: str, params: Params) -> None:
    """The stage's outputs, one set: the model, its epoch log, its validation summary, then its run id.

    Each is written to a temporary name first, so a failure (a full disk) replaces none. The run id is
    removed before any rename and renamed last: whatever moment a kill strikes, a run id beside the model
    is that model's run, and a model without one is refused by evaluate (tracking.read_run_id), never
    scored into another run's record."""
    with paths.replaced_together() as outputs:
        with outputs.write(paths.MODEL_FILE) as tmp_model:
            vae.save(tmp_model)
        with outputs.write(paths.TRAIN_LOG, size=epoch_log.stat().st_size) as tmp_log:
            shutil.copyfile(epoch_log, tmp_log)
        with outputs.write(paths.VAL_METRICS_FILE) as tmp_summary:
            tmp_summary.write_text(json.dumps(validation_summary(epoch_log, params.train.epochs), indent=2) + "\n")
        with outputs.write(paths.RUN_ID_FILE) as tmp_id:
            tmp_id.write_text(run_id + "\n")
        paths.RUN_ID_FILE.unlink(missing_ok=True)  # from here to the last rename, no run id names a mixed set


def validation_summary(epoch_log: Path, epochs: int) -> dict[str, Any]:
    """val_metrics.json: the registry's validation metrics (vaepipe.epoch_metrics: what a search's objectives
    name: the last epoch's val_loss, val_recon and val_kl; the best val_loss), each summarising its epoch-log
    column, then the epochs trained and whether it stopped early (pruned). Metrics only: the MLflow run id is
    models/mlflow_run_id. Values are null without a validation split."""
    header, rows = read_log(epoch_log)
    columns = {name: [row[index] for row in rows] for index, name in enumerate(header)}
    summary: dict[str, Any] = {metric.name: epoch_metrics.summarise(metric, columns.get(metric.column, ()))
                               for metric in epoch_metrics.validation_metrics()}
    return {**summary, "epochs": len(rows), "pruned": len(rows) < epochs}
