"""Single-process training: compile the VAE and `fit` it inside a TrainingSession (resumable, tracked).

`train.distribute != none` runs vaepipe.train.distributed instead; stages/train.py chooses.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np

from vaepipe import prepared
from vaepipe.config import Params
from vaepipe.model import VAE, build_vae, has_convolutions
from vaepipe.progress import EpochProgress
from vaepipe.train.callbacks import BatchProgress, EpochRandomState, EpochTimer, StopOnSignal
from vaepipe.train.inputs import Batches, batches_in_elements, batches_per_epoch, make_datasets
from vaepipe.train.schedules import make_optimizer
from vaepipe.train.session import OutputsHook, open_session
from vaepipe.train.stacking import StackedSteps


def compile_for_training(params: Params, batches_per_epoch: int) -> keras.Model:
    """The VAE, compiled to run `train.steps_per_execution` batches (at most an epoch's) per compiled call;
    returned as the model `fit` runs: the VAE itself, or StackedSteps around it (`trained_vae` unwraps).

    Where the model allows it, those batches come stacked and StackedSteps loops the VAE's train_step over
    them inside one XLA program (Keras runs one stack per call): faster per step than Keras's own multi-step
    loop for small models. Convolutions inside that loop run very slowly under XLA on CPU, so the conv model
    keeps Keras's loop and by default (`jit_compile: auto`) runs without XLA at all: TensorFlow's oneDNN
    convolutions are faster here (bench/NOTES.md).
    """
    keras.utils.set_random_seed(params.train.seed)
    vae = build_vae(params.model, params.train, binarize=params.data.binarize)
    steps_per_execution = min(params.train.steps_per_execution, batches_per_epoch)
    conv = has_convolutions(vae)
    jit_compile = not conv if params.train.jit_compile == "auto" else params.train.jit_compile
    optimizer = make_optimizer(params.train, batches_per_epoch)
    if conv or steps_per_execution == 1:
        # Keras's own loop counts whole calls: a divisor of the epoch keeps its progress bar at N/N.
        keras_steps = max(d for d in range(1, steps_per_execution + 1) if batches_per_epoch % d == 0)
        vae.compile(optimizer=optimizer, steps_per_execution=keras_steps, jit_compile=jit_compile)
        return vae
    vae.compile(optimizer=optimizer)  # its train_step applies the optimizer; StackedSteps runs it
    stacked = StackedSteps(vae, batches_per_stack=steps_per_execution)
    stacked.compile(optimizer=optimizer, steps_per_execution=1, jit_compile=jit_compile)  # one stack per call
    return stacked


def trained_vae(model: keras.Model) -> VAE:
    """The VAE inside what `fit` runs (compile_for_training's model)."""
    return model.inner if isinstance(model, StackedSteps) else model


def batches_per_stack(model: keras.Model) -> int:
    return model.batches_per_stack if isinstance(model, StackedSteps) else 1


def training_batches(model: keras.Model, params: Params, x_train: np.ndarray, x_val: np.ndarray | None,
                     epochs: range) -> Batches:
    """The epochs' training batches and the validation batches, stacked as the compiled model expects."""
    return make_datasets(x_train, x_val, params.train.batch_size, params.train.seed, epochs=epochs,
                         batches_per_stack=batches_per_stack(model))


def fit_callbacks(params: Params) -> list[keras.callbacks.Callback]:
    """The callbacks around every epoch of `fit`, before the end-of-epoch path: stop on a lost signal,
    the epoch's randomness, its wall time."""
    return [StopOnSignal(), EpochRandomState(params.train.seed), EpochTimer()]


def progress_callback(model: keras.Model, params: Params, n_images: int) -> BatchProgress:
    """The progress of fit's epochs in batches (progress.EpochProgress), whatever stacks Keras counts."""
    batch_size, stack = params.train.batch_size, batches_per_stack(model)
    batches = batches_per_epoch(n_images, params)
    return BatchProgress(EpochProgress(params.train.epochs, batches),
                         lambda elements: batches_in_elements(elements, n_images, batch_size, stack))


def fit(params: Params, x_train: np.ndarray, x_val: np.ndarray | None = None, *,
        callbacks: Sequence[keras.callbacks.Callback] = (), model: keras.Model | None = None,
        initial_epoch: int = 0) -> VAE:
    """Train a VAE on arrays, in this process: no DVC, no MLflow, no checkpoint (`from vaepipe import fit`).

    `x_train` and `x_val` are float32 images of shape (n, 784) in [0, 1], as the model sees them
    (prepared.model_inputs makes them from a split; `data.binarize: dynamic` redraws each batch inside the
    model). The numbers are the train stage's: the stage is this call with a checkpointed, tracked session
    around it, which passes its compiled (perhaps resumed) `model` (compile_for_training's), the
    `initial_epoch` to continue from and its end-of-epoch `callbacks`. Returns the VAE, whose `history`
    holds each epoch's loss, terms (recon, kl) and val_*."""
    if model is None:
        model = compile_for_training(params, batches_per_epoch(len(x_train), params))
    vae = trained_vae(model)
    if initial_epoch < params.train.epochs:
        batches = training_batches(model, params, x_train, x_val, range(initial_epoch, params.train.epochs))
        vae.history = model.fit(batches.train, steps_per_epoch=batches.stacks_per_epoch, validation_data=batches.val,
                                epochs=params.train.epochs, initial_epoch=initial_epoch,
                                callbacks=[*fit_callbacks(params), progress_callback(model, params, len(x_train)),
                                           *callbacks],
                                shuffle=False, verbose=0)  # progress in batches: progress_callback
    return vae


def train(params: Params, inputs: prepared.TrainingInputs, *, extra_callbacks: Sequence[keras.callbacks.Callback] = (),
          on_outputs: Sequence[OutputsHook] = ()) -> None:
    """The train stage: `fit` inside a TrainingSession (resuming an interrupted run with the same params),
    then the model, log, validation summary and run id written as one set. `inputs`: the checked prepared
    arrays (prepared.training_inputs), which the stage reads before it imports this module.

    What the stage adds from outside training's code (stages/train.py builds it): `extra_callbacks` run
    after the end-of-epoch path, so an epoch is logged and checkpointed before they see it (a search
    trial's pruning: one that sets `model.stop_training` ends the run early, outputs written); each of
    `on_outputs` is called with the saved model file once the outputs are written, inside the MLflow run
    (the model logging)."""
    session = open_session(params, inputs, on_outputs)  # the key, this key's directory locked, retention
    model = compile_for_training(params, batches_per_epoch(len(inputs.x_train), params))
    vae = trained_vae(model)
    start_epoch = session.restore(vae)
    with session.run(vae, start_epoch) as epoch_end:
        fit(params, inputs.x_train, inputs.x_val, model=model, initial_epoch=start_epoch,
            callbacks=[epoch_end, *extra_callbacks])
