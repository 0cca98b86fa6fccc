"""The loss terms against hand-written numpy references."""

import numpy as np
import pytest

from vaepipe import objectives


def numpy_bce_sum(x, logits):
    p = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    return -np.sum(x * np.log(p) + (1 - x) * np.log(1 - p), axis=-1)


def numpy_kl_sum(mean, log_var):
    var = np.exp(log_var.astype(np.float64))
    return np.sum(0.5 * (var + mean**2 - 1.0 - log_var), axis=-1)


@pytest.fixture
def batch():
    rng = np.random.default_rng(0)
    x = rng.random((16, 784)).astype(np.float32)
    logits = rng.normal(0, 3, (16, 784)).astype(np.float32)
    mean = rng.normal(0, 1, (16, 4)).astype(np.float32)
    log_var = rng.normal(0, 0.5, (16, 4)).astype(np.float32)
    return x, logits, mean, log_var


def test_reconstruction_term_is_summed_binary_cross_entropy(batch):
    x, logits, _, _ = batch
    np.testing.assert_allclose(np.asarray(objectives.bernoulli_nll(x, logits)), numpy_bce_sum(x, logits), rtol=1e-5)


def test_logits_form_is_stable_where_sigmoid_saturates():
    x = np.array([[1.0, 0.0]], np.float32)
    logits = np.array([[-200.0, 200.0]], np.float32)  # p = sigmoid(l) rounds to exactly 0 and 1 in float32
    value = float(np.asarray(objectives.bernoulli_nll(x, logits))[0])
    assert value == pytest.approx(400.0, rel=1e-6)


def test_kl_term_matches_closed_form(batch):
    _, _, mean, log_var = batch
    np.testing.assert_allclose(np.asarray(objectives.gaussian_kl(mean, log_var)), numpy_kl_sum(mean, log_var), rtol=1e-5)


def test_kl_is_zero_at_the_prior():
    zeros = np.zeros((3, 5), np.float32)
    np.testing.assert_allclose(np.asarray(objectives.gaussian_kl(zeros, zeros)), 0.0, atol=1e-7)


def test_negative_elbo_weights_the_kl_by_beta(batch):
    x, logits, mean, log_var = batch
    expected = numpy_bce_sum(x, logits) + 0.25 * numpy_kl_sum(mean, log_var)
    terms = objectives.score(objectives.OBJECTIVES["elbo"], {"beta": 0.25}, x, objectives.Posterior(mean, log_var),
                             None, logits)
    np.testing.assert_allclose(np.asarray(terms["loss"]), expected, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(terms["recon"]), numpy_bce_sum(x, logits), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(terms["kl"]), numpy_kl_sum(mean, log_var), rtol=1e-5)


def test_tutorial_loss_is_the_tutorials_definition(batch):
    """784 * mean(clipped BCE on sigmoid outputs) + KL averaged (not summed) over latent dimensions."""
    x, logits, mean, log_var = batch
    p = np.clip(1.0 / (1.0 + np.exp(-logits.astype(np.float64))), 1e-7, 1 - 1e-7)
    recon = 784 * np.mean(-(x * np.log(p) + (1 - x) * np.log(1 - p)), axis=-1)
    kl_mean = numpy_kl_sum(mean, log_var) / mean.shape[1]
    np.testing.assert_allclose(np.asarray(objectives.tutorial_loss(x, logits, mean, log_var)), recon + kl_mean, rtol=1e-4)


def test_tutorial_loss_at_latent_2_equals_beta_half(batch):
    x, logits, mean, log_var = batch
    mean, log_var = mean[:, :2], log_var[:, :2]
    tutorial = np.asarray(objectives.tutorial_loss(x, logits, mean, log_var))
    beta_half = np.asarray(objectives.score(objectives.OBJECTIVES["elbo"], {"beta": 0.5}, x,
                                            objectives.Posterior(mean, log_var), None, logits)["loss"])
    np.testing.assert_allclose(tutorial, beta_half, rtol=1e-4)


def test_gaussian_log_density_matches_numpy():
    rng = np.random.default_rng(1)
    z, mean, log_var = (rng.normal(size=(5, 3)).astype(np.float32) for _ in range(3))
    expected = np.sum(-0.5 * (np.log(2 * np.pi) + log_var + (z - mean) ** 2 / np.exp(log_var)), axis=-1)
    np.testing.assert_allclose(np.asarray(objectives.gaussian_log_density(z, mean, log_var)), expected, rtol=1e-5)


def test_every_objective_reports_declared_epoch_metrics_and_evaluate_measures_the_elbos_terms():
    """The two registries in step: what training reports per epoch (the loss and each term) is an epoch metric
    of vaepipe.epoch_metrics, the `tested` ones (test_<name> in metrics.json) are exactly the terms evaluate
    scores, and every weight param a term names is a train param."""
    from vaepipe import epoch_metrics
    from vaepipe.config import TrainParams

    declared = {metric.name for metric in epoch_metrics.EPOCH_METRICS}
    for name, objective in objectives.OBJECTIVES.items():
        assert set(objectives.reported(objective)) <= declared, name
        assert set(objectives.weight_params(objective)) <= set(TrainParams.model_fields), name
    tested = {metric.name for metric in epoch_metrics.EPOCH_METRICS if metric.tested}
    assert tested == {term.name for term in objectives.OBJECTIVES["elbo"].terms}
