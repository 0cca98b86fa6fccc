"""Resumable training state: weights + optimizer state after an epoch, replaced atomically.

One directory per training key (paths.checkpoint_dir): the weights of the last finished epoch,
`state.json` naming them, the epoch log so far and the MLflow run id of the unfinished run.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import keras
import numpy as np

from vaepipe import paths
from vaepipe.errors import DataError, deferred_signals


class Checkpoint:
    """Weights + optimizer state of a finished epoch, in `directory`, replaced atomically.

    `state.json` names the epoch count and the state file; it is renamed into place after the
    state file is complete, so whenever the process dies the pair it names is consistent.
    SIGINT/SIGTERM wait until the checkpoint is written. It also records how many of its epochs
    MLflow had (`logged`), which the end-of-epoch writes batch (epoch_end.EpochEnd).

    The state is one uncompressed .npz of every model and optimizer variable by its Keras path:
    much faster to write than Keras's .weights.h5 for small models (bench/NOTES.md).
    """

    STATE = "state.json"

    def __init__(self, directory: Path, key: str, provenance: dict[str, str] | None = None):
        self.directory = directory
        self.key = key
        self.provenance = provenance or {}  # what the key hashes, by part: say which one changed
        self.model: keras.Model | None = None  # set by restore

    def logged_epochs(self) -> int:
        """How many epochs had reached MLflow when the checkpoint was written (all, if not recorded)."""
        state = self._state()
        return state.get("logged", state["epoch"]) if state else 0

    def _state(self) -> dict | None:
        try:
            state = json.loads((self.directory / self.STATE).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            raise DataError(f"{self.directory / self.STATE}: unreadable checkpoint ({error}); "
                            f"delete {self.directory} to train from scratch") from None
        if state.get("key") != self.key:  # never resume a checkpoint of other params
            return None
        return state

    def restore(self, model: keras.Model) -> int:
        """Attach the compiled model, load the last checkpoint into it, return the epochs it holds."""
        self.model = model
        state = self._state()
        if not state:
            return 0
        weights = self.directory / state["weights"]
        try:
            model.optimizer.build(model.trainable_variables)
            _assign(model, weights)
        except (OSError, ValueError, KeyError) as error:
            raise DataError(f"{weights}: cannot load checkpoint ({error}); "
                            f"delete {self.directory} to train from scratch") from None
        return state["epoch"]

    def write(self, epochs_done: int, logged: int) -> None:
        """Make the model's state now (after `epochs_done` epochs) the checkpoint, atomically; `logged`:
        how many of those epochs MLflow has."""
        snapshot = {variable.path: keras.ops.convert_to_numpy(variable) for variable in _variables(self.model)}
        with deferred_signals():
            name = f"epoch-{epochs_done:05d}.npz"
            with paths.atomic_path(self.directory / name) as tmp, tmp.open("wb") as handle:
                np.savez(handle, **snapshot)
            with paths.atomic_path(self.directory / self.STATE) as tmp:
                tmp.write_text(json.dumps({"epoch": epochs_done, "weights": name, "key": self.key,
                                           "logged": logged, "provenance": self.provenance}) + "\n")
            for old in self.directory.glob("epoch-*"):
                if old.name != name:
                    old.unlink(missing_ok=True)


def _variables(model: keras.Model) -> list:
    variables = list(model.variables) + list(model.optimizer.variables)
    if len({variable.path for variable in variables}) != len(variables):  # a path names one variable
        raise ValueError("model and optimizer variables do not have unique paths")
    return variables


def _assign(model: keras.Model, file: Path) -> None:
    with np.load(file, allow_pickle=False) as saved:
        variables = _variables(model)
        missing = sorted({variable.path for variable in variables} - set(saved.files))
        if missing or len(saved.files) != len(variables):
            raise ValueError(f"holds {len(saved.files)} variables, the model has {len(variables)} "
                             f"(missing: {', '.join(missing[:3]) or 'none'})")
        for variable in variables:
            variable.assign(saved[variable.path])


def drop_other_checkpoints(keep: Path, provenance: dict[str, str]) -> None:
    """Checkpoints of other params, code or data can never be resumed by this run: remove them, and
    say in one line why an unfinished run's checkpoint is not resumed."""
    if not paths.CHECKPOINTS_DIR.exists():
        return
    for other in paths.CHECKPOINTS_DIR.iterdir():
        if other == keep:
            continue
        try:
            state = json.loads((other / Checkpoint.STATE).read_text())
        except (OSError, ValueError):
            state = None
        if state and state.get("epoch"):
            old = state.get("provenance") or {}
            changed = [part for part, value in provenance.items() if old.get(part) != value] or ["params"]
            print(f"train: not resuming the checkpoint of {state['epoch']} epochs in {other.relative_to(paths.ROOT)}: "
                  f"it was written with other {' and '.join(changed)}; training from scratch", flush=True)
        shutil.rmtree(other, ignore_errors=True)
