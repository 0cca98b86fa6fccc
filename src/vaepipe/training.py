"""Single-process training: compile the VAE and `fit` it inside a TrainingSession (resumable, tracked).

`train.distribute != none` runs vaepipe.distributed instead; stages/train.py chooses.
"""

from __future__ import annotations

import os

import keras

from vaepipe import prepared
from vaepipe.batches import make_datasets
from vaepipe.callbacks import EpochBookkeeping, EpochLog, EpochMetricsLogger, EpochRandomState, EpochTimer, StopOnSignal
from vaepipe.checkpoint import Checkpoint
from vaepipe.config import Params
from vaepipe.model import VAE, build_vae, has_convolutions
from vaepipe.schedules import make_optimizer
from vaepipe.session import TrainingSession


def compile_vae(params: Params, steps_per_execution: int, steps_per_epoch: int) -> VAE:
    """The VAE, compiled to run `steps_per_execution` batches per compiled call.

    Where the model allows it, those batches come stacked from
    `make_datasets(..., steps_per_execution=vae.stack_steps)` and VAE.train_step loops over them
    inside one XLA program (Keras runs one stack per call): about 2x faster per step than Keras's
    own multi-step loop for small models. Convolutions inside that loop run very slowly under XLA
    on CPU (75x in bench/NOTES.md), so the conv model keeps Keras's loop (`vae.stack_steps` = 1),
    and by default (`jit_compile: auto`) runs without XLA at all: TensorFlow's oneDNN convolutions
    are about 1.6x faster here (NOTES.md run 20).
    """
    keras.utils.set_random_seed(params.train.seed)
    vae = build_vae(params.model, beta=params.train.beta, binarize=params.data.binarize, seed=params.train.seed)
    conv = has_convolutions(vae)
    stack_steps = 1 if conv else steps_per_execution
    if stack_steps > 1:
        keras_steps = 1  # one stack per call
    else:  # Keras's own loop counts whole calls: a divisor of the epoch keeps its progress bar at N/N
        keras_steps = max(d for d in range(1, steps_per_execution + 1) if steps_per_epoch % d == 0)
    vae.compile(
        optimizer=make_optimizer(params.train, steps_per_epoch),
        steps_per_execution=keras_steps,
        jit_compile=not conv if params.train.jit_compile == "auto" else params.train.jit_compile,
    )
    vae.stack_steps = stack_steps
    return vae


def train(params: Params) -> None:
    """Train (resuming an interrupted run with the same params), then write the model, log and run id."""
    inputs = prepared.training_inputs(params.data.binarize)
    session = TrainingSession(params, inputs)
    steps_per_epoch = -(-len(inputs.x_train) // params.train.batch_size)
    vae = compile_vae(params, steps_per_execution=min(params.train.steps_per_execution, steps_per_epoch),
                      steps_per_epoch=steps_per_epoch)
    start_epoch = session.restore(vae)
    batches = make_datasets(inputs.x_train, inputs.x_val, params.train.batch_size, params.train.seed,
                            epochs=range(start_epoch, params.train.epochs),
                            steps_per_execution=vae.stack_steps)  # stacked: see compile_vae
    with session.run(vae, start_epoch) as end_of_epoch:
        end_of_epoch, bookkeeping = batch_bookkeeping(end_of_epoch, final_epoch=params.train.epochs - 1)
        if bookkeeping is not None:
            bookkeeping.log_missed(start_epoch)
        callbacks = [StopOnSignal(), EpochRandomState(params.train.seed), EpochTimer(), *end_of_epoch]
        if start_epoch < params.train.epochs:
            try:
                vae.fit(batches.train, steps_per_epoch=batches.steps_per_epoch, validation_data=batches.val,
                        epochs=params.train.epochs, initial_epoch=start_epoch, callbacks=callbacks, shuffle=False,
                        verbose=2 if _quiet() else 1)
            except BaseException:
                _flush_after_error(bookkeeping)
                raise


def batch_bookkeeping(callbacks: list[keras.callbacks.Callback],
                      final_epoch: int) -> tuple[list[keras.callbacks.Callback], EpochBookkeeping | None]:
    """The session's end-of-epoch callbacks with its CSV log, MLflow logger and checkpoint replaced by
    one EpochBookkeeping that batches the MLflow writes (the others, e.g. the NaN guard, run first)."""
    writers = {type(callback): callback for callback in callbacks
               if isinstance(callback, (EpochLog, EpochMetricsLogger, Checkpoint))}
    if len(writers) != 3:
        return callbacks, None
    bookkeeping = EpochBookkeeping(writers[EpochLog], writers[EpochMetricsLogger], writers[Checkpoint], final_epoch)
    return [callback for callback in callbacks if type(callback) not in writers] + [bookkeeping], bookkeeping


def _flush_after_error(bookkeeping: EpochBookkeeping | None) -> None:
    """After an error or a signal, log the finished epochs to MLflow; a failure here (e.g. the tracking
    store is gone) must not hide the original error, and the resumed run logs them instead."""
    if bookkeeping is None:
        return
    try:
        bookkeeping.flush()
    except Exception as error:  # noqa: BLE001
        print(f"train: could not log the last finished epochs to MLflow ({error}); the resumed run logs them",
              flush=True)


def _quiet() -> bool:
    return os.environ.get("VAEPIPE_QUIET") == "1"
