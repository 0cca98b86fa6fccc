"""Resumable training state: weights + optimizer state after an epoch, replaced atomically.

One directory per training key (paths.checkpoint_dir): the weights of the last finished epoch,
`state.json` naming them (and when they were written), the epoch log so far and the MLflow run id of
the unfinished run. Which checkpoints of other keys are kept beside it: vaepipe.train.retention.

A checkpoint that cannot be read (empty, truncated, a bad CRC, a state.json of the wrong shape, weights
that do not fit the model) is moved aside to `<dir>.corrupt-<UTC time>`, never deleted, and training
starts from scratch (Checkpoint.restore).
"""

from __future__ import annotations

import json
import time
import zipfile
from pathlib import Path

import keras
import numpy as np

from vaepipe import paths
from vaepipe.errors import deferred_signals
from vaepipe.train import retention

CORRUPT = retention.CORRUPT  # a checkpoint directory moved aside: <key>.corrupt-<UTC time>
# What reading a damaged .npz or state.json raises (np.load, zipfile, json, the shape checks below).
UNREADABLE = (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile)


class _Unreadable(Exception):
    """The checkpoint's files exist but cannot be used; the message says why."""


class Checkpoint:
    """Weights + optimizer state of a finished epoch, in `directory`, replaced atomically.

    `state.json` names the epoch count and the state file; it is renamed into place after the
    state file is complete, so whenever the process dies the pair it names is consistent.
    SIGINT/SIGTERM wait until the checkpoint is written. It also records how many of its epochs
    MLflow had (`logged`), which the end-of-epoch writes batch (epoch_end.EpochEnd).

    The state is one uncompressed .npz of every model and optimizer variable by its Keras path:
    much faster to write than Keras's .weights.h5 for small models (bench/NOTES.md).
    """

    STATE = retention.STATE

    def __init__(self, directory: Path, key: str, provenance: dict[str, str] | None = None):
        self.directory = directory
        self.key = key
        self.provenance = provenance or {}  # what the key hashes, by part: say which one changed
        self.model: keras.Model | None = None  # set by restore

    def logged_epochs(self) -> int:
        """How many epochs had reached MLflow when the checkpoint was written (all, if not recorded)."""
        try:
            state = self._state()
        except _Unreadable:
            return 0
        return state.get("logged", state["epoch"]) if state else 0

    def _state(self) -> dict | None:
        """state.json, checked field by field; None if there is none or it is another key's."""
        try:
            state = json.loads((self.directory / self.STATE).read_text())
        except FileNotFoundError:
            return None
        except UNREADABLE as error:
            raise _Unreadable(f"{self.STATE}: {_one_line(error)}") from None
        if not isinstance(state, dict):
            raise _Unreadable(f"{self.STATE} holds a {type(state).__name__}, not an object")
        if not isinstance(state.get("key"), str):
            raise _Unreadable(f"{self.STATE} has no key")
        if state["key"] != self.key:  # never resume a checkpoint of other params
            return None
        epoch, weights, logged = state.get("epoch"), state.get("weights"), state.get("logged", 0)
        if not (type(epoch) is int and epoch >= 1 and type(logged) is int and 0 <= logged <= epoch):
            raise _Unreadable(f"{self.STATE}: epoch {epoch!r} and logged {logged!r} are not counts of epochs")
        if not (isinstance(weights, str) and weights.startswith("epoch-") and Path(weights).name == weights):
            raise _Unreadable(f"{self.STATE}: weights {weights!r} is not an epoch-*.npz file name")
        return state

    def restore(self, model: keras.Model) -> int:
        """Attach the compiled model, load the last checkpoint into it, return the epochs it holds.

        A checkpoint that cannot be read is moved aside (one line says where) and 0 is returned: the
        model keeps the weights it had, and the run id beside it goes with it, so the fresh start opens
        a new MLflow run instead of logging epoch 1 again into the run of the lost epochs."""
        self.model = model
        try:
            state = self._state()
            if not state:
                return 0
            model.optimizer.build(model.trainable_variables)
            _assign(model, self.directory / state["weights"])
        except (_Unreadable, *UNREADABLE) as error:
            self._move_aside(_one_line(error))
            return 0
        return state["epoch"]

    def _move_aside(self, reason: str) -> None:
        """Rename the directory to <dir>.corrupt-<UTC time> (kept for a post-mortem) and start it anew."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        target = self.directory.with_name(f"{self.directory.name}{CORRUPT}{stamp}")
        n = 1
        while target.exists():
            n += 1
            target = self.directory.with_name(f"{self.directory.name}{CORRUPT}{stamp}-{n}")
        self.directory.rename(target)
        self.directory.mkdir(parents=True, exist_ok=True)
        print(f"train: checkpoint {_shown(self.directory)} is unreadable ({reason}); moved it to {_shown(target)}; "
              f"training from scratch", flush=True)

    def write(self, epochs_done: int, logged: int) -> None:
        """Make the model's state now (after `epochs_done` epochs) the checkpoint, atomically; `logged`:
        how many of those epochs MLflow has."""
        snapshot = {variable.path: keras.ops.convert_to_numpy(variable) for variable in _variables(self.model)}
        with deferred_signals():
            name = f"epoch-{epochs_done:05d}.npz"
            with paths.atomic_path(self.directory / name) as tmp, tmp.open("wb") as handle:
                np.savez(handle, **snapshot)
            with paths.atomic_path(self.directory / self.STATE) as tmp:
                # written: which checkpoints of other keys a run keeps is decided by age (retention.py)
                tmp.write_text(json.dumps({"epoch": epochs_done, "weights": name, "key": self.key,
                                           "logged": logged, "provenance": self.provenance,
                                           "written": round(time.time(), 3)}) + "\n")
            for old in self.directory.glob("epoch-*"):
                if old.name != name:
                    old.unlink(missing_ok=True)


def _variables(model: keras.Model) -> list:
    variables = list(model.variables) + list(model.optimizer.variables)
    if len({variable.path for variable in variables}) != len(variables):  # a path names one variable
        raise ValueError("model and optimizer variables do not have unique paths")
    return variables


def _assign(model: keras.Model, file: Path) -> None:
    """Load every array of `file` into the model's variables; all are read and checked first, so a
    damaged or mismatched file leaves the model as it was."""
    variables = _variables(model)
    with np.load(file, allow_pickle=False) as saved:
        missing = sorted({variable.path for variable in variables} - set(saved.files))
        if missing or len(saved.files) != len(variables):
            raise ValueError(f"{file.name} holds {len(saved.files)} variables, the model has {len(variables)} "
                             f"(missing: {', '.join(missing[:3]) or 'none'})")
        arrays = {variable.path: saved[variable.path] for variable in variables}  # reading checks each CRC
    for variable in variables:
        if tuple(arrays[variable.path].shape) != tuple(variable.shape):
            raise ValueError(f"{file.name}: {variable.path} has shape {arrays[variable.path].shape}, "
                             f"the model's is {tuple(variable.shape)}")
    for variable in variables:
        variable.assign(arrays[variable.path])


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _shown(path: Path) -> Path:
    """A path as the stage's messages show it: relative to the repository when inside it."""
    try:
        return path.relative_to(paths.ROOT)
    except ValueError:
        return path
