"""The seed generators that exact resume reseeds each epoch are the model's own `keras.random.SeedGenerator`
objects (train.callbacks.seed_generators): reseeding them makes a training-mode pass repeat exactly, and a
model that samples without any generator to be found is an error, never a silently inexact resume."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from vaepipe.config import TrainParams, parse_params
from vaepipe.model import build_vae
from vaepipe.train.callbacks import seed_generators


def _vae(binarize: str):
    params = parse_params({"data": {"binarize": binarize}, "model": {"latent_dim": 2}})
    return build_vae(params.model, TrainParams(beta=1.0, seed=3), binarize=params.data.binarize)


@pytest.mark.parametrize("binarize", ["none", "dynamic"])
def test_reseeding_the_models_own_generators_repeats_a_training_pass_exactly(binarize):
    vae = _vae(binarize)
    generators = seed_generators(vae)
    assert len(generators) == 2  # the Sampling layer's, the binarization's
    x = np.random.default_rng(0).uniform(size=(8, 784)).astype("float32")

    def reseeded_pass() -> np.ndarray:
        for index, generator in enumerate(generators):
            generator.state.assign(np.array([100 + index, 0], dtype=generator.state.dtype))
        return np.asarray(vae.compute_terms(x, training=True)["loss"])

    first = reseeded_pass()
    assert not np.allclose(np.asarray(vae.compute_terms(x, training=True)["loss"]), first)  # it does sample
    np.testing.assert_array_equal(reseeded_pass(), first)  # a generator missed would make this differ


def test_the_generators_come_in_the_order_of_the_models_variables():
    """The epoch seeds are indexed by this order: the same as the name-based lookup it replaced, so the
    numbers of earlier runs and checkpoints stay what they were."""
    vae = _vae("dynamic")
    states = [generator.state for generator in seed_generators(vae)]
    positions = [next(i for i, v in enumerate(vae.variables) if v is state) for state in states]
    assert positions == sorted(positions)
    by_name = [v for v in vae.variables if v.name == "seed_generator_state"]  # Keras 3.15's internal name
    if by_name:
        assert [id(v) for v in by_name] == [id(v) for v in states]


def test_a_nested_models_generator_is_found():
    inputs = keras.Input((4,))
    inner = keras.Model(inputs, keras.layers.GaussianNoise(0.1, seed=1)(inputs), name="inner")
    outer = keras.Model(inputs, keras.layers.Dense(2)(inner(inputs)), name="outer")
    assert len(seed_generators(outer)) == 1


def test_a_model_without_a_generator_found_fails_loudly():
    inputs = keras.Input((4,))
    with pytest.raises(ValueError, match="plain: no keras.random.SeedGenerator found"):
        seed_generators(keras.Model(inputs, keras.layers.Dense(2)(inputs), name="plain"))
