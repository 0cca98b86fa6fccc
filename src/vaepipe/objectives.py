"""The VAE's objective and evaluation measures as pure functions on tensors (keras.ops).

Conventions: x holds images in [0,1] (continuous or binarized) of shape (batch, 784); the decoder
gives Bernoulli logits; the posterior is a diagonal Gaussian (mean, log_var); the prior N(0, I).
Every per-example function returns shape (batch,), summed over pixels and latent dimensions.
"""

from __future__ import annotations

import math
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


class ElboTerms(NamedTuple):
    """Per-example terms of the objective, each of shape (batch,) (or broadcast over samples)."""

    loss: object  # what training minimises: recon + beta * kl (elbo), the negative k-sample bound (iwae)
    recon: object  # -log p(x|z)
    kl: object  # KL(q(z|x) || p(z))


def negative_elbo(x, logits, mean, log_var, beta: float = 1.0) -> ElboTerms:
    """The one per-example objective of training (both loops) and evaluation: reconstruction + beta * KL.

    beta = 1 is the negative ELBO proper; evaluation always scores that. The terms come back too,
    because both training and evaluation report them.
    """
    recon = bernoulli_nll(x, logits)
    kl = gaussian_kl(mean, log_var)
    return ElboTerms(recon + beta * kl, recon, kl)


def log_mean_exp(values, axis: int = 0):
    """log(mean(exp(values))) along `axis`, computed stably (log-sum-exp minus log n)."""
    n = ops.cast(ops.shape(values)[axis], values.dtype)
    return ops.logsumexp(values, axis=axis) - ops.log(n)


def negative_iwae(x, logits, z, mean, log_var, beta: float = 1.0) -> ElboTerms:
    """The negative k-sample importance-weighted bound (Burda et al. 2015, eq. 8), per example.

    Shapes: x (batch, 784); z (k, batch, latent), k reparameterised draws from q(z|x) = N(mean,
    exp(log_var)) with mean, log_var (batch, latent); logits (k, batch, 784), the decoder's output for z.
    The bound is log (1/k) sum_i w_i with log w_i = log p(x|z_i) + beta * (log p(z_i) - log q(z_i|x)).

    beta = 1 is the IWAE bound proper: a lower bound on log p(x), never looser than the ELBO in
    expectation, equal to the ELBO's one-sample estimate at k = 1 (the KL term then sampled, not
    analytic). Other beta weight the prior-to-posterior log-ratio inside each weight, so that at k = 1
    the expected loss is negative_elbo's recon + beta * KL (it is then no bound on log p(x)).

    Returned terms: loss = -bound (what training minimises, as a batch mean); recon = the mean over
    the k samples of -log p(x|z_i); kl = the analytic KL(q(z|x) || p(z)), as negative_elbo's. So
    recon + kl is the k-sample estimate of the negative ELBO, and (recon + kl) - loss is how much
    tighter the bound is than the ELBO (at beta = 1).
    """
    log_px_z = -bernoulli_nll(x[None], logits)  # (k, batch)
    log_ratio = gaussian_log_density(z, 0.0, ops.zeros_like(z)) - gaussian_log_density(z, mean[None], log_var[None])
    bound = log_mean_exp(log_px_z + beta * log_ratio, axis=0)
    return ElboTerms(-bound, -ops.mean(log_px_z, axis=0), gaussian_kl(mean, log_var))


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
