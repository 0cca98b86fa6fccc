"""Evaluation measures against exact answers: the importance-sampled log-likelihood against
quadrature on a 1-D latent model, active units on a model with known collapsed dimensions, the
k-NN probe on separable and on random labels."""

import signal

import keras
import numpy as np
import pytest
from scipy.special import logsumexp

from vaepipe import errors, evaluation, metrics
from vaepipe.config import ModelParams, TrainParams
from vaepipe.model import build_vae


@pytest.fixture(scope="module")
def one_d_model():
    """A small random VAE with a 1-D latent space, sharp enough that the posterior is not the prior."""
    keras.utils.set_random_seed(3)
    vae = build_vae(ModelParams(arch="mlp", hidden=[16], latent_dim=1, activation="tanh"), TrainParams(beta=1.0, seed=3),
                    binarize="none")
    for layer in vae.decoder.layers:
        if layer.weights:
            kernel, bias = layer.get_weights()
            layer.set_weights([kernel * 2.0, bias])
    images = (np.random.default_rng(0).random((6, 784)) < 0.3).astype(np.float32)
    return vae, images


def exact_log_likelihood(vae, images) -> np.ndarray:
    """log p(x) = log ∫ p(x|z) N(z; 0, 1) dz by the trapezoid rule on a fine grid (1-D latent)."""
    grid = np.linspace(-8, 8, 8001, dtype=np.float32)
    logits = np.asarray(vae.decoder(grid[:, None]), dtype=np.float64)  # (grid, 784)
    x = images.astype(np.float64)
    log_px_z = x @ -np.logaddexp(0, -logits).T + (1 - x) @ -np.logaddexp(0, logits).T  # (images, grid)
    log_prior = -0.5 * (np.log(2 * np.pi) + grid.astype(np.float64) ** 2)
    weights = np.full(grid.size, grid[1] - grid[0], np.float64)
    weights[[0, -1]] /= 2
    return logsumexp(log_px_z + log_prior + np.log(weights), axis=1)


@pytest.mark.parametrize("seed, chunk", [(0, 5000), (5, 1500)], ids=["large-chunks", "small-chunks"])
def test_importance_sampled_likelihood_matches_quadrature(one_d_model, seed, chunk):
    """Whatever the chunking, the estimate agrees with the exact marginal likelihood."""
    vae, images = one_d_model
    exact = exact_log_likelihood(vae, images)
    estimate = evaluation.iw_log_likelihood(vae, images, k=20000, seed=seed, chunk=chunk)
    np.testing.assert_allclose(estimate, exact, atol=0.05)


def test_importance_sampled_nll_is_not_above_the_negative_elbo(one_d_model):
    vae, images = one_d_model
    elbo = evaluation.elbo_terms(vae, images, mc_samples=2000, batch_size=6, seed=1)
    nll = -np.mean(evaluation.iw_log_likelihood(vae, images, k=200, seed=1))
    assert nll <= elbo["test_loss"] + 0.05
    # ...and with one sample it *is* an ELBO estimate (same quantity, Monte Carlo error only).
    one = -np.mean(evaluation.iw_log_likelihood(vae, np.repeat(images, 400, axis=0), k=1, seed=2))
    assert one == pytest.approx(elbo["test_loss"], abs=0.5)


@pytest.mark.parametrize("measure", ["iw_nll", "elbo"])
def test_evaluation_stops_at_its_next_batch_after_a_signal_whose_exception_was_lost(one_d_model, monkeypatch, measure):
    """The IW NLL takes minutes at k = 5000: a swallowed Ctrl-C (errors.stop_if_signalled) must end it."""
    vae, images = one_d_model
    if measure == "iw_nll":  # the signal lands once every image is encoded: the NLL's own loop must see it
        encode = evaluation.encode

        def encode_then_signal(*args, **kwargs):
            result = encode(*args, **kwargs)
            monkeypatch.setattr(errors, "_received", signal.SIGINT)
            return result

        monkeypatch.setattr(errors, "_received", None)
        monkeypatch.setattr(evaluation, "encode", encode_then_signal)
        with pytest.raises(errors.Interrupted):
            evaluation.iw_log_likelihood(vae, images, k=10, seed=0)
    else:
        monkeypatch.setattr(errors, "_received", signal.SIGINT)
        with pytest.raises(errors.Interrupted):
            evaluation.elbo_terms(vae, images, mc_samples=2, batch_size=6, seed=0)


def test_elbo_terms_add_up_and_tutorial_loss_uses_the_kl_mean(one_d_model):
    vae, images = one_d_model
    terms = evaluation.elbo_terms(vae, images, mc_samples=4, batch_size=4, seed=0)
    assert terms["test_loss"] == pytest.approx(terms["test_recon"] + terms["test_kl"])
    # latent_dim 1: the KL mean over dimensions is the KL itself; the BCE is clipped but close.
    assert terms["test_tutorial_loss"] == pytest.approx(terms["test_loss"], rel=1e-3)


def test_active_units_counts_dimensions_that_carry_information():
    keras.utils.set_random_seed(0)
    vae = build_vae(ModelParams(arch="mlp", hidden=[32], latent_dim=5), TrainParams(beta=1.0, seed=0), binarize="none")
    head = vae.encoder.get_layer("z_mean")
    kernel, bias = head.get_weights()
    kernel[:, 3:] = 0.0  # dimensions 3 and 4 ignore the input: collapsed
    kernel[:, :3] *= 10.0
    head.set_weights([kernel, bias])
    images = np.random.default_rng(0).random((500, 784)).astype(np.float32)
    z = evaluation.encode_means(vae, images)
    assert metrics.active_units(z) == 3


def test_active_units_threshold_is_on_the_variance():
    z = np.column_stack([np.linspace(-1, 1, 1000), np.linspace(-0.1, 0.1, 1000)])  # variances 0.33, 0.0033
    assert metrics.active_units(z) == 1


def test_knn_probe_separable_and_random_labels():
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 10, (10, 2))
    train_labels = rng.integers(0, 10, 2000)
    test_labels = rng.integers(0, 10, 500)
    train_z = centres[train_labels] + rng.normal(0, 0.1, (2000, 2))
    test_z = centres[test_labels] + rng.normal(0, 0.1, (500, 2))
    assert evaluation.knn_accuracy(train_z, train_labels, test_z, test_labels) == 1.0
    shuffled = rng.permutation(train_labels)
    assert evaluation.knn_accuracy(train_z, shuffled, test_z, test_labels) < 0.25


def test_knn_probe_equals_a_stable_sort_reference_and_breaks_ties_by_training_order():
    """The k nearest by a stable argsort (equal distances in training-set order), majority vote with
    the lowest label winning a tied vote: the probe must give exactly that accuracy."""
    rng = np.random.default_rng(1)
    train_z = np.round(rng.normal(0, 1, (3000, 2)), 1)  # rounded: many exact duplicates, so many ties
    train_labels = rng.integers(0, 10, 3000)
    test_z = np.round(rng.normal(0, 1, (700, 2)), 1)
    test_labels = rng.integers(0, 10, 700)
    train_sq = np.sum(train_z.astype(np.float32) ** 2, axis=1)
    distances = train_sq[None, :] - 2.0 * test_z.astype(np.float32) @ train_z.astype(np.float32).T
    nearest = np.argsort(distances, axis=1, kind="stable")[:, :5]
    predicted = np.array([np.bincount(row, minlength=10).argmax() for row in train_labels[nearest]])
    expected = float(np.mean(predicted == test_labels))
    assert evaluation.knn_accuracy(train_z, train_labels, test_z, test_labels, chunk=128) == expected
    # Six training points at the query's own position: the first three in training order are its neighbours.
    same = np.zeros((6, 2))
    assert evaluation.knn_accuracy(same, np.array([3, 3, 3, 7, 7, 7]), np.zeros((1, 2)), np.array([3]), k=3) == 1.0
    assert evaluation.knn_accuracy(same, np.array([7, 7, 7, 3, 3, 3]), np.zeros((1, 2)), np.array([3]), k=3) == 0.0


def exact_elbo_terms(vae, images) -> tuple[float, float]:
    """E_q[-log p(x|z)] by quadrature over q(z|x) (1-D latent), and the analytic KL: test-set means."""
    mean, log_var = (np.asarray(part, dtype=np.float64)[:, 0] for part in vae.encoder(images))
    grid = np.linspace(-8, 8, 8001, dtype=np.float32)
    logits = np.asarray(vae.decoder(grid[:, None]), dtype=np.float64)
    x = images.astype(np.float64)
    nll = -(x @ -np.logaddexp(0, -logits).T + (1 - x) @ -np.logaddexp(0, logits).T)  # (images, grid)
    q = np.exp(-0.5 * (grid[None, :] - mean[:, None]) ** 2 / np.exp(log_var[:, None])) / np.sqrt(
        2 * np.pi * np.exp(log_var[:, None]))
    recon = np.trapezoid(q * nll, grid, axis=1)
    kl = -0.5 * (1 + log_var - mean**2 - np.exp(log_var))
    return float(np.mean(recon)), float(np.mean(kl))


@pytest.mark.parametrize("draws_per_call", [10**9, 600, 1], ids=["one-call", "chunks-of-100", "one-draw-per-call"])
def test_elbo_terms_in_chunks_of_draws_estimate_the_exact_terms(one_d_model, draws_per_call):
    """mc_samples beyond draws_per_call are decoded in chunks (bounded memory at mc_samples 10000): the
    estimate is the same quantity, the KL counted once per image however many chunks."""
    vae, images = one_d_model
    recon, kl = exact_elbo_terms(vae, images)
    mc_samples = 3000 if draws_per_call > 1 else 200
    terms = evaluation.elbo_terms(vae, images, mc_samples=mc_samples, batch_size=6, seed=4,
                                  draws_per_call=draws_per_call)
    assert terms["test_kl"] == pytest.approx(kl, rel=1e-5)
    assert terms["test_recon"] == pytest.approx(recon, rel=0.01 if draws_per_call > 1 else 0.03)
    assert terms["test_loss"] == pytest.approx(terms["test_recon"] + terms["test_kl"])


def test_the_default_evaluation_decodes_each_batch_in_one_call():
    """metrics.json of the defaults must not change: their draws (mc_samples x batch_size) fit one call."""
    from vaepipe.config import EvaluateParams

    defaults = EvaluateParams()
    assert defaults.mc_samples * defaults.batch_size <= evaluation.ELBO_DRAWS_PER_CALL


def test_the_knn_probe_works_with_as_few_training_images_as_its_k():
    """Why the schema wants at least KNN_K training images: with one fewer the probe cannot run."""
    from vaepipe.config import KNN_K

    rng = np.random.default_rng(0)
    train_z, test_z = rng.normal(size=(KNN_K, 2)), rng.normal(size=(3, 2))
    labels = np.zeros(KNN_K, dtype=np.int64)
    assert evaluation.knn_accuracy(train_z, labels, test_z, np.zeros(3, dtype=np.int64)) == 1.0
    with pytest.raises(Exception):  # noqa: B017 (TensorFlow's InvalidArgumentError: k > candidates)
        evaluation.knn_accuracy(train_z[:-1], labels[:-1], test_z, np.zeros(3, dtype=np.int64))


def test_score_gives_the_registrys_test_metrics_in_its_order_then_the_protocol(one_d_model):
    """metrics.json's keys are vaepipe.metrics's test metrics, whether evaluation measures them or the
    registry computes them from the arrays (active_units)."""
    from vaepipe.config import Params

    vae, images = one_d_model
    labels = np.arange(len(images)) % 2
    inputs = evaluation.EvaluationInputs(vae, images, labels, images, labels)
    params = Params.model_validate({"evaluate": {"mc_samples": 2, "iw_samples": 3, "batch_size": 4}})
    scored = evaluation.score(inputs, params)
    assert list(scored) == [*metrics.names(metrics.TEST), "protocol"]
    assert scored["active_units"] == metrics.active_units(evaluation.encode_means(vae, images))
