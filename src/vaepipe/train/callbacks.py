"""Keras callbacks of the single-process loop around its epochs: per-epoch randomness, timing, the stop
on a lost signal, progress in batches, and the NaN guard both loops apply before an epoch is logged."""

from __future__ import annotations

import time
from collections.abc import Callable

import keras
import numpy as np

from vaepipe.errors import NonFiniteLossError, stop_if_signalled
from vaepipe.progress import EpochProgress
from vaepipe.train.inputs import epoch_seed


def check_finite(epoch: int, logs: dict) -> None:
    """Stop with a clear error when the epoch's loss is NaN or infinite (the checkpoint is kept).

    Called before the epoch is logged or checkpointed, so the last checkpoint is the last good epoch.
    """
    loss = logs.get("loss")
    if loss is not None and not np.isfinite(loss):
        raise NonFiniteLossError(
            f"training loss became {loss} in epoch {epoch + 1}; lower train.learning_rate "
            "(the last good checkpoint is kept)"
        )


def seed_generators(model: keras.Model) -> list[keras.random.SeedGenerator]:
    """Every `keras.random.SeedGenerator` the model holds, in its layers, nested models or attributes,
    ordered as their `state` variables are in `model.variables` (the order the epoch seeds are indexed
    by, kept from before). Found as objects, not by Keras's internal variable name, so exact resume
    cannot become silently inexact; a model without any is an error (a VAE always samples)."""
    found: dict[int, keras.random.SeedGenerator] = {}
    seen: set[int] = set()
    todo: list[object] = [model]
    while todo:
        item = todo.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, keras.random.SeedGenerator):
            found[id(item.state)] = item
        elif isinstance(item, keras.layers.Layer):
            todo += [value for name, value in vars(item).items() if not name.startswith("_")]
            todo += list(getattr(item, "layers", []))  # a nested model's layers (a property)
        elif isinstance(item, (list, tuple)):
            todo += list(item)
        elif isinstance(item, dict):
            todo += list(item.values())
    order = {id(variable): index for index, variable in enumerate(model.variables)}
    missing = [generator.name for key, generator in found.items() if key not in order]
    if not found or missing:
        raise ValueError(f"{model.name}: " + (f"SeedGenerator state not among the model's variables: {missing}"
                                              if missing else "no keras.random.SeedGenerator found: the epochs "
                                              "could not be reseeded and resume would not be exact"))
    return [found[key] for key in sorted(found, key=order.__getitem__)]


class EpochRandomState(keras.callbacks.Callback):
    """Before each epoch, set every SeedGenerator in the model from (seed, epoch); the data order is
    keyed by the epoch inside the dataset (inputs.make_datasets)."""

    def __init__(self, seed: int):
        super().__init__()
        self.seed = seed

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        for index, state in enumerate(generator.state for generator in seed_generators(self.model)):
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


class EpochTimer(keras.callbacks.Callback):
    """Add `epoch_time` (seconds, wall clock) to each epoch's logs, for CSV and MLflow alike."""

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is not None:
            logs["epoch_time"] = time.perf_counter() - self._start


class BatchProgress(keras.callbacks.Callback):
    """fit's progress in batches (fit runs with verbose=0): Keras's own bar counts its steps, which are
    stacks of batches on the fast path (23/23 for an epoch of 1563 batches). `batches_after(k)` is the
    number of batches in the epoch's first k elements (inputs.batches_in_elements)."""

    def __init__(self, progress: EpochProgress, batches_after: Callable[[int], int]):
        super().__init__()
        self.progress = progress
        self.batches_after = batches_after

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.progress.begin(epoch)

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.progress.update(self.batches_after(batch + 1))  # `batch`: the call's last element, from 0

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.progress.end(epoch, logs or {})
