"""Evaluation of a trained VAE on held-out images: ELBO terms, importance-sampled NLL, active units,
and a k-nearest-neighbour probe of the latent means. Arrays in, numbers out; seeded and batched.

What metrics.json holds is vaepipe.metrics's test metrics: the ones that need the model are measured here,
every other declared one is computed there from the arrays `score` passes it (metrics.Arrays)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import tensorflow as tf
from keras import ops

from vaepipe import metrics, objectives, paths, prepared
from vaepipe.config import KNN_K, Params
from vaepipe.errors import stop_if_signalled
from vaepipe.model import VAE, has_convolutions, load_vae
from vaepipe.progress import PartProgress


def _batches(x: np.ndarray, batch_size: int):
    for start in range(0, len(x), batch_size):
        stop_if_signalled()  # a Ctrl-C whose exception library code swallowed stops here (the IW NLL: minutes)
        yield x[start:start + batch_size]


def encode(vae: VAE, x: np.ndarray, batch_size: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """Posterior (mean, log_var) for every image, in a few large encoder calls."""
    parts = [[np.asarray(part) for part in vae.encoder(batch)] for batch in _batches(x, batch_size)]
    return np.concatenate([mean for mean, _ in parts]), np.concatenate([log_var for _, log_var in parts])


def encode_means(vae: VAE, x: np.ndarray, batch_size: int = 2000) -> np.ndarray:
    """Posterior means E_q[z|x] for every image."""
    return encode(vae, x, batch_size)[0]


TUTORIAL = "test_tutorial_loss"
ELBO_DRAWS_PER_CALL = 20000  # (z draw, image) pairs decoded per call: ~63 MB of logits per tensor


def elbo_terms(vae: VAE, x: np.ndarray, mc_samples: int, batch_size: int, seed: int,
               draws_per_call: int = ELBO_DRAWS_PER_CALL, progress: PartProgress | None = None) -> dict[str, float]:
    """Test-set averages of the ELBO's terms (objectives.OBJECTIVES["elbo"]: recon, kl), each over
    `mc_samples` z draws per image, as test_<term>; test_loss is their sum at weight 1 (beta = 1: the
    negative ELBO proper); test_tutorial_loss is the tutorial's definition (784 x mean BCE + KL averaged
    over latent dims) from the same draws.

    A batch's draws are decoded in one call while mc_samples x batch fits in `draws_per_call` (the
    defaults, 10 x 500, do: their numbers are those of one call); beyond that in chunks of samples, so
    memory stays bounded at mc_samples = 10000 (docs/reliability.md has the measured peak).
    `progress` is told the images done (a fraction of a batch per chunk of draws) after each call.
    """
    generator = tf.random.Generator.from_seed(seed)
    elbo = objectives.OBJECTIVES["elbo"]
    names = [term.name for term in elbo.terms]
    totals = dict.fromkeys([*names, TUTORIAL], 0.0)
    analytic: set[str] = set()  # terms with one value per image (the KL), whatever the draws: counted once

    @tf.function(jit_compile=not has_convolutions(vae), reduce_retracing=True)
    def batch_terms(images, eps):  # eps: (samples, batch, latent), all samples decoded in one call
        posterior = objectives.Posterior(*vae.encoder(images))
        z = objectives.reparameterize(posterior.mean, posterior.log_var, eps)
        logits = vae.decode(z)
        targets = ops.broadcast_to(images[None], ops.shape(logits))
        sums = {}
        for term in elbo.terms:
            value = term.function(targets, posterior, z, logits)
            # A term of each draw is averaged over the draws; an analytic one (the KL) is per image.
            if len(value.shape) > 1:
                sums[term.name] = ops.sum(value) / mc_samples
            else:
                sums[term.name] = ops.sum(value)
                analytic.add(term.name)
        tutorial = ops.sum(objectives.tutorial_loss(targets, logits, posterior.mean[None], posterior.log_var[None]))
        sums[TUTORIAL] = tutorial / mc_samples
        return sums

    latent_dim = vae.decoder.inputs[0].shape[-1]
    for images in _batches(x, batch_size):
        chunk = mc_samples if mc_samples * len(images) <= draws_per_call else max(1, draws_per_call // len(images))
        for start in range(0, mc_samples, chunk):
            if start:
                stop_if_signalled()
            eps = generator.normal((min(chunk, mc_samples - start), len(images), latent_dim))
            sums = batch_terms(tf.constant(images), eps)
            for name, value in sums.items():
                if not start or name not in analytic:
                    totals[name] += float(value)
            if progress is not None:
                progress.advance(len(images) * min(chunk, mc_samples - start) / mc_samples)
    metrics = {f"test_{name}" if name != TUTORIAL else name: value / len(x) for name, value in totals.items()}
    metrics["test_loss"] = sum(metrics[f"test_{name}"] for name in names)
    return metrics


def iw_log_likelihood(vae: VAE, x: np.ndarray, k: int, seed: int, batch_size: int = 20,
                      chunk: int = 1000, progress: PartProgress | None = None) -> np.ndarray:
    """Importance-sampled log p(x) per image (Burda et al. 2015): log mean_k p(x|z_k) p(z_k) / q(z_k|x).

    Samples are drawn in chunks of at most `chunk` per image, so memory stays bounded for k = 5000;
    the chunks' log-weights are combined exactly with a running log-sum-exp. `progress` is told the
    images done after each call.
    """
    generator = tf.random.Generator.from_seed(seed)
    latent_dim = vae.decoder.inputs[0].shape[-1]

    @tf.function(jit_compile=not has_convolutions(vae), reduce_retracing=True)
    def log_weights(images, mean, log_var, eps):  # eps: (samples, batch, latent)
        z = objectives.reparameterize(mean, log_var, eps)
        samples = ops.shape(eps)[0]
        logits = vae.decoder(ops.reshape(z, (-1, latent_dim)))
        logits = ops.reshape(logits, (samples, -1, ops.shape(images)[-1]))
        log_px_z = -objectives.bernoulli_nll(images[None], logits)
        log_pz = objectives.gaussian_log_density(z, 0.0, ops.zeros_like(z))
        log_qz = objectives.gaussian_log_density(z, mean, log_var)
        return log_px_z + log_pz - log_qz  # (samples, batch)

    # Encoded up front in large batches (the same numbers as per batch of 20, in far fewer calls).
    means, log_vars = encode(vae, x)
    results = []
    for images, mean, log_var in zip(_batches(x, batch_size), _batches(means, batch_size),
                                     _batches(log_vars, batch_size), strict=True):
        images, mean, log_var = tf.constant(images), tf.constant(mean), tf.constant(log_var)
        running = None  # log-sum-exp of the weights seen so far, per image
        for start in range(0, k, chunk):
            n = min(chunk, k - start)
            lw = log_weights(images, mean, log_var, generator.normal((n, len(images), latent_dim)))
            part = tf.reduce_logsumexp(lw, axis=0)
            running = part if running is None else tf.reduce_logsumexp(tf.stack([running, part]), axis=0)
            if progress is not None:
                progress.advance(len(mean) * n / k)
        results.append(np.asarray(running) - np.log(k))
    return np.concatenate(results)


def knn_accuracy(train_z: np.ndarray, train_labels: np.ndarray, test_z: np.ndarray,
                 test_labels: np.ndarray, k: int = KNN_K, chunk: int = 500,
                 progress: PartProgress | None = None) -> float:
    """Accuracy of a k-nearest-neighbour (Euclidean, majority vote) classifier on latent means.

    Neighbours at equal distance (common: many images share a latent mean) are taken in training-set
    order. The selection is tf.math.top_k: faster than np.argpartition on these 500 x 50000 blocks
    (bench/NOTES.md), and argpartition breaks such ties arbitrarily. `progress` is told the test images
    done after each chunk.
    """
    train_z = train_z.astype(np.float32)
    train_sq = np.sum(train_z**2, axis=1)
    correct = 0
    for start in range(0, len(test_z), chunk):
        query = test_z[start:start + chunk].astype(np.float32)
        distances = train_sq[None, :] - 2.0 * query @ train_z.T  # + |q|^2, constant per row
        nearest = tf.math.top_k(-distances, k=k).indices.numpy()
        votes = train_labels[nearest]
        predicted = np.array([np.bincount(row, minlength=10).argmax() for row in votes])
        correct += int(np.sum(predicted == test_labels[start:start + chunk]))
        if progress is not None:
            progress.advance(len(query))
    return correct / len(test_z)


@dataclass(frozen=True)
class EvaluationInputs:
    vae: VAE
    x_test: np.ndarray
    test_labels: np.ndarray
    x_train: np.ndarray
    train_labels: np.ndarray


def load_inputs(data: prepared.EvaluationData) -> EvaluationInputs:
    """The saved model with the checked test (and probe training) data, which the stage read first.

    Loaded before the MLflow run is reopened, so a missing or corrupt input leaves the run untouched.
    """
    return EvaluationInputs(load_vae(paths.MODEL_FILE), data.x_test, data.test_labels, data.x_train, data.train_labels)


def score(inputs: EvaluationInputs, params: Params, clock: Callable[[], float] = time.perf_counter) -> dict:
    """Every test metric of the model (vaepipe.metrics's, in its order), with the protocol that produced it.

    Each part (ELBO terms, IW NLL, kNN probe) shows its progress and time left (vaepipe.progress, timed
    by `clock`), and says so first when it would take more than 5 minutes, naming the param that
    shortens it."""
    vae, settings = inputs.vae, params.evaluate
    n_test = len(inputs.x_test)

    def progress(part: str, why: str, param: str) -> PartProgress:
        return PartProgress(part, n_test, "image", why, param, clock=clock)

    measured = elbo_terms(vae, inputs.x_test, settings.mc_samples, settings.batch_size, settings.seed,
                          progress=progress("ELBO terms", f"evaluate.mc_samples={settings.mc_samples} z draws "
                                            "per image", "evaluate.mc_samples"))
    log_px = iw_log_likelihood(vae, inputs.x_test, settings.iw_samples, settings.seed,
                               progress=progress("IW NLL", f"evaluate.iw_samples={settings.iw_samples} "
                                                 "importance samples per image", "evaluate.iw_samples"))
    measured["test_nll_iw"] = float(-np.mean(log_px))
    test_z, test_log_var = encode(vae, inputs.x_test)
    train_z = encode_means(vae, inputs.x_train)
    # Each test image is compared with every training image: data.limit shortens both.
    measured["knn_accuracy"] = knn_accuracy(
        train_z, inputs.train_labels, test_z, inputs.test_labels,
        progress=progress("kNN probe", f"{n_test} test x {len(train_z)} training images", "data.limit"))
    arrays = metrics.Arrays(images=inputs.x_test, labels=inputs.test_labels, means=test_z, log_vars=test_log_var,
                            log_px=log_px, train_means=train_z, train_labels=inputs.train_labels)
    results: dict = metrics.metrics_json(measured, arrays)
    results["protocol"] = {
        "n_test": len(inputs.x_test),
        "binarize": params.data.binarize,
        "mc_samples": settings.mc_samples,
        "iw_samples": settings.iw_samples,
        "seed": settings.seed,
        "knn_k": KNN_K,
    }
    return results
