"""Single-process training: compile the VAE and `fit` it inside a TrainingSession (resumable, tracked).

`train.distribute != none` runs vaepipe.distributed instead; stages/train.py chooses.
"""

from __future__ import annotations

import os

import keras
import tensorflow as tf

from vaepipe import prepared
from vaepipe.batches import make_datasets
from vaepipe.callbacks import EpochRandomState, EpochTimer
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
    x_train, x_test, dataset_sha = prepared.training_inputs(params.data.binarize)
    session = TrainingSession(params, dataset_sha)
    steps_per_epoch = -(-len(x_train) // params.train.batch_size)
    vae = compile_vae(params, steps_per_execution=min(params.train.steps_per_execution, steps_per_epoch),
                      steps_per_epoch=steps_per_epoch)
    start_epoch = session.restore(vae)
    epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
    train_ds, test_ds = make_datasets(x_train, x_test, params.train.batch_size, params.train.seed,
                                      params.evaluate.batch_size, epoch=epoch,
                                      steps_per_execution=vae.stack_steps)  # stacked batches: see compile_vae
    with session.run(vae, start_epoch) as end_of_epoch:
        callbacks = [EpochRandomState(params.train.seed, epoch), EpochTimer(), *end_of_epoch]
        if start_epoch < params.train.epochs:
            vae.fit(train_ds, validation_data=test_ds, epochs=params.train.epochs, initial_epoch=start_epoch,
                    callbacks=callbacks, shuffle=False, verbose=2 if _quiet() else 1)


def _quiet() -> bool:
    return os.environ.get("VAEPIPE_QUIET") == "1"
