"""Resumable training state: weights + optimizer state after every epoch, replaced atomically.

One directory per training key (paths.checkpoint_dir): the weights of the last finished epoch,
`state.json` naming them, the epoch log so far and the MLflow run id of the unfinished run.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import keras

from vaepipe import paths
from vaepipe.errors import DataError, deferred_signals


class Checkpoint(keras.callbacks.Callback):
    """Weights + optimizer state at the end of every epoch, in `directory`, replaced atomically.

    `state.json` names the epoch count and the weights file; it is renamed into place after the
    weights file is complete, so whenever the process dies the pair it names is consistent.
    SIGINT/SIGTERM wait until the checkpoint is written (the epoch ends cleanly).
    """

    STATE = "state.json"

    def __init__(self, directory: Path, key: str):
        super().__init__()
        self.directory = directory
        self.key = key

    def completed_epochs(self) -> int:
        state = self._state()
        return state["epoch"] if state else 0

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
        """Load the last checkpoint into a compiled model; return the number of epochs it holds."""
        state = self._state()
        if not state:
            return 0
        weights = self.directory / state["weights"]
        try:
            model.optimizer.build(model.trainable_variables)
            model.load_weights(weights)
        except (OSError, ValueError) as error:
            raise DataError(f"{weights}: cannot load checkpoint ({error}); "
                            f"delete {self.directory} to train from scratch") from None
        return state["epoch"]

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        with deferred_signals():
            name = f"epoch-{epoch + 1:05d}.weights.h5"
            tmp = self.directory / f".{os.getpid()}-{name}"  # save_weights wants a .weights.h5 name
            try:
                self.model.save_weights(tmp)
                tmp.replace(self.directory / name)
            finally:
                tmp.unlink(missing_ok=True)
            with paths.atomic_path(self.directory / self.STATE) as tmp:
                tmp.write_text(json.dumps({"epoch": epoch + 1, "weights": name, "key": self.key}) + "\n")
            for old in self.directory.glob("epoch-*.weights.h5"):
                if old.name != name:
                    old.unlink(missing_ok=True)


def drop_other_checkpoints(keep: Path) -> None:
    """Checkpoints of other param sets can never be resumed by these params: remove them."""
    if paths.CHECKPOINTS_DIR.exists():
        for other in paths.CHECKPOINTS_DIR.iterdir():
            if other != keep:
                shutil.rmtree(other, ignore_errors=True)
