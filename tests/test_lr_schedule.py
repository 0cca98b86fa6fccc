"""train.lr_schedule: the learning rate each update uses, as a function of the optimizer's step count."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vaepipe.config import parse_params
from vaepipe.train.schedules import learning_rate
from vaepipe.train.single_process import batches_per_stack, compile_for_training, trained_vae, training_batches

LR = 1e-3


def rate_at(schedule, step: int) -> float:
    return float(schedule(step)) if callable(schedule) else float(schedule)


def rates_at(schedule, steps: int) -> np.ndarray:
    """The rate at each of steps 0..steps-1, in one call of the schedule on the vector of step counts (Keras's
    schedules compute elementwise; thousands of scalar calls took over a minute on a busy machine)."""
    rates = np.asarray(schedule(np.arange(steps)), dtype=np.float64)
    assert rates.shape == (steps,)
    for step in (0, steps // 2, steps - 1):  # the vector's values are the scalar calls'
        assert rates[step] == pytest.approx(rate_at(schedule, step), rel=1e-7)
    return rates


def test_constant_is_the_plain_learning_rate():
    train = parse_params({"train": {"learning_rate": LR}}).train
    assert learning_rate(train, batches_per_epoch=100) == LR


def test_iwae_schedule_follows_burda_et_al_stage_by_stage():
    # 3280 epochs of one step: stage i is exactly 3^i updates at LR * 10^(-i/7).
    train = parse_params({"train": {"learning_rate": LR, "lr_schedule": "iwae", "epochs": 3280}}).train
    schedule = learning_rate(train, batches_per_epoch=1)
    expected = np.concatenate([np.full(3**i, LR * 10 ** (-i / 7)) for i in range(8)])
    got = rates_at(schedule, 3280)
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_iwae_schedule_compressed_into_a_short_run_ends_at_a_tenth():
    # 30 epochs of 10 steps: the early stages are shorter than one step and vanish; the last
    # stage (2/3 of the run) runs at LR / 10 and the rate never rises.
    train = parse_params({"train": {"learning_rate": LR, "lr_schedule": "iwae", "epochs": 30}}).train
    schedule = learning_rate(train, batches_per_epoch=10)
    rates = rates_at(schedule, 300)
    assert np.all(np.diff(rates) <= 0)
    assert rates[-1] == pytest.approx(LR / 10)
    assert np.mean(np.isclose(rates, LR / 10)) == pytest.approx(2187 / 3280, abs=0.01)


def test_cosine_decays_to_zero_over_the_run():
    train = parse_params({"train": {"learning_rate": LR, "lr_schedule": "cosine", "epochs": 4}}).train
    schedule = learning_rate(train, batches_per_epoch=25)
    for step in (0, 25, 50, 99):
        assert rate_at(schedule, step) == pytest.approx(LR * 0.5 * (1 + math.cos(math.pi * step / 100)), rel=1e-5, abs=1e-9)


@pytest.mark.parametrize("stack", [1, 5])
def test_training_advances_the_schedule_once_per_batch(stack):
    """Per-step and stacked (XLA while loop) training both step the schedule once per update."""

    params = parse_params({"train": {"batch_size": 32, "epochs": 2, "lr_schedule": "cosine", "learning_rate": LR,
                                     "steps_per_execution": stack},
                           "data": {"limit": 320, "val_size": 64}})
    rng = np.random.default_rng(0)
    x = rng.random((320, 784), dtype=np.float32)
    model = compile_for_training(params, batches_per_epoch=10)
    assert batches_per_stack(model) == stack
    batches = training_batches(model, params, x, None, epochs=range(1))
    model.fit(batches.train, steps_per_epoch=batches.stacks_per_epoch, epochs=1, shuffle=False, verbose=0)
    vae = trained_vae(model)
    assert int(vae.optimizer.iterations) == 10
    # Halfway through a 20-update cosine run: half the initial rate.
    assert float(vae.optimizer.learning_rate) == pytest.approx(LR / 2, rel=1e-5)
