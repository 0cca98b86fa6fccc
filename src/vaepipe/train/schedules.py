"""The optimizer and its learning-rate schedules (the tutorial's Adam, optionally decayed over the run)."""

from __future__ import annotations

import keras
import numpy as np

from vaepipe.config import TrainParams


def learning_rate(train: TrainParams, batches_per_epoch: int) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """train.learning_rate, or a schedule of it over the whole run, keyed on the optimizer's step count.

    The step count is optimizer state and is checkpointed, so a resumed run continues the schedule
    exactly. `iwae` is Burda et al.'s: stage i (0..7) runs at learning_rate * 10^(-i/7) for 3^i of
    3280 epochs; here the stages keep those proportions of `train.epochs`.
    """
    total_steps = train.epochs * batches_per_epoch
    if train.lr_schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(train.learning_rate, decay_steps=total_steps)
    if train.lr_schedule == "iwae":
        stage_ends = np.cumsum([3**i for i in range(8)]) / 3280
        # PiecewiseConstantDecay gives values[i] while step <= boundaries[i]; the optimizer's step
        # count before update n is n - 1, so a stage ending after update n has boundary n - 1.
        boundaries = [int(round(fraction * total_steps)) - 1 for fraction in stage_ends[:-1]]
        values = [train.learning_rate * 10 ** (-i / 7) for i in range(8)]
        return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)
    return train.learning_rate


def make_optimizer(train: TrainParams, batches_per_epoch: int) -> keras.optimizers.Optimizer:
    """Adam with default settings apart from the learning rate (the tutorial's optimizer)."""
    return keras.optimizers.Adam(learning_rate=learning_rate(train, batches_per_epoch))
