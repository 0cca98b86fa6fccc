"""The VAE's objectives, one registry of their terms, and evaluation measures, as pure functions on tensors.

Conventions: x holds images in [0,1] (continuous or binarized) of shape (batch, 784); the decoder
gives Bernoulli logits; the posterior is a diagonal Gaussian (mean, log_var); the prior N(0, I).
Every per-example function returns shape (batch,), summed over pixels and latent dimensions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

import keras
from keras import ops

LOG_2PI = math.log(2.0 * math.pi)


def bernoulli_nll(x, logits):
    """-log p(x|z) = binary cross-entropy summed over pixels, in the stable logits form (no clipping).

    Per pixel: max(l, 0) - l*x + log(1 + exp(-|l|)), which equals -x log s(l) - (1-x) log(1-s(l)).
    """
    per_pixel = ops.relu(logits) - logits * x + ops.log1p(ops.exp(-ops.abs(logits)))
    return ops.sum(per_pixel, axis=-1)


def gaussian_kl(mean, log_var):
    """KL(N(mean, exp(log_var)) || N(0, I)) in closed form, summed over latent dimensions."""
    return -0.5 * ops.sum(1.0 + log_var - ops.square(mean) - ops.exp(log_var), axis=-1)


def reparameterize(mean, log_var, eps):
    """z = mean + exp(log_var / 2) * eps: a draw from N(mean, exp(log_var)) given eps ~ N(0, I), written
    so gradients flow to mean and log_var (the Sampling layer's draw; evaluation passes its own eps)."""
    return mean + ops.exp(0.5 * log_var) * eps


class Posterior(NamedTuple):
    """The encoder's output: q(z|x) = N(mean, exp(log_var)), each of shape (batch, latent)."""

    mean: object
    log_var: object


# ---------------------------------------------------------------- the terms: f(x, posterior, z, logits)
# Each returns one value per example, or per (draw, example) when z and logits carry a leading axis of
# k draws (objective iwae). Training, the distributed loop and evaluation all call them through `score`.

def reconstruction(x, posterior: Posterior, z, logits):
    """-log p(x|z): the Bernoulli decoder's negative log-likelihood of x."""
    return bernoulli_nll(x, logits)


def analytic_kl(x, posterior: Posterior, z, logits):
    """KL(q(z|x) || p(z)) in closed form (one value per image, whatever the draws)."""
    return gaussian_kl(posterior.mean, posterior.log_var)


def sampled_kl(x, posterior: Posterior, z, logits):
    """log q(z|x) - log p(z) at each draw z: the KL's one-sample estimate, the log-ratio inside IWAE's weights."""
    return gaussian_log_density(z, posterior.mean, posterior.log_var) - gaussian_log_density(z, 0.0, ops.zeros_like(z))


@dataclass(frozen=True)
class Term:
    """One term of an objective: a per-example function of (x, posterior, z, logits), weighted in the loss
    by the `train` param named `weight` (None: weight 1). Its name is its column in train_log.csv / MLflow."""

    name: str
    function: Callable
    weight: str | None = None


@dataclass(frozen=True)
class Objective:
    """What training minimises: the weighted sum of its terms per z draw. With `samples` (the `train` param
    giving k draws per image) the k sums are combined as importance weights, log w_i = -sum_i, into the
    negative k-sample bound -log (1/k) sum_i w_i (Burda et al. 2015, eq. 8), and each term is reported
    as its mean over the draws."""

    terms: tuple[Term, ...]
    samples: str | None = None


OBJECTIVES: dict[str, Objective] = {
    # -ELBO = recon + beta * KL: one draw per image, the KL analytic.
    "elbo": Objective((Term("recon", reconstruction), Term("kl", analytic_kl, weight="beta"))),
    # -IWAE_k: k draws per image, the KL sampled (it is part of each draw's weight). beta = 1 is the bound
    # proper, never looser than the ELBO; k = 1 is the ELBO's one-sample estimate.
    "iwae": Objective((Term("recon", reconstruction), Term("kl", sampled_kl, weight="beta")), samples="iw_k"),
}

LOSS = "loss"  # the objective's value per example: what training minimises (as a batch mean)


def reported(objective: Objective) -> tuple[str, ...]:
    """The names training reports per epoch (and validation as val_*): the loss, then each term."""
    return (LOSS, *(term.name for term in objective.terms))


def weight_params(objective: Objective) -> tuple[str, ...]:
    """The `train` params the objective reads: its terms' weights and its number of draws."""
    names = [term.weight for term in objective.terms if term.weight] + ([objective.samples] if objective.samples else [])
    return tuple(dict.fromkeys(names))


def score(objective: Objective, weights: Mapping[str, float], x, posterior: Posterior, z, logits) -> dict:
    """Per-example values of the objective: {"loss": ..., term name: ...}, each of shape (batch,).

    `weights` maps each term's weight param to its value (beta). With draws (z of shape (k, batch, latent))
    the loss is the negative k-sample bound and each term its mean over the draws."""
    values = {term.name: term.function(x, posterior, z, logits) for term in objective.terms}
    per_draw = None
    for term in objective.terms:  # recon + beta * kl for the ELBO
        value = values[term.name] if term.weight is None else weights[term.weight] * values[term.name]
        per_draw = value if per_draw is None else per_draw + value
    if objective.samples is None:
        return {LOSS: per_draw, **values}
    return {LOSS: -log_mean_exp(-per_draw, axis=0),
            **{name: ops.mean(value, axis=0) if len(value.shape) > 1 else value for name, value in values.items()}}


def log_mean_exp(values, axis: int = 0):
    """log(mean(exp(values))) along `axis`, computed stably (log-sum-exp minus log n)."""
    n = ops.cast(ops.shape(values)[axis], values.dtype)
    return ops.logsumexp(values, axis=axis) - ops.log(n)


def tutorial_loss(x, logits, mean, log_var):
    """The tutorial's own loss: 784 * mean binary cross-entropy + KL *averaged* over latent dimensions.

    Computed exactly as the tutorial does, on sigmoid probabilities with Keras's clipped
    binary_crossentropy, so the number is comparable with its printed val_loss.
    """
    pixels = ops.shape(x)[-1]
    recon = pixels * keras.losses.binary_crossentropy(x, ops.sigmoid(logits))
    kl_mean = -0.5 * ops.mean(1.0 + log_var - ops.square(mean) - ops.exp(log_var), axis=-1)
    return recon + kl_mean


def gaussian_log_density(z, mean, log_var):
    """log N(z; mean, exp(log_var)) summed over the last axis."""
    return -0.5 * ops.sum(LOG_2PI + log_var + ops.square(z - mean) * ops.exp(-log_var), axis=-1)
