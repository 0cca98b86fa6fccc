"""The VAE in Keras 3: a Sampling layer, encoder/decoder builders per `model.arch`, and the VAE model.

The model reads like the math (after keras-io's vae.py): encode to (mean, log_var), sample
z = mean + exp(log_var / 2) * eps, decode to Bernoulli logits, loss = reconstruction + beta * KL.
Everything is a registered, serializable layer: a saved model loads with `safe_mode=True`.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import layers, ops

from vaepipe import objectives
from vaepipe.architectures import ARCHITECTURES, IMAGE_PIXELS
from vaepipe.config import ModelParams


@keras.saving.register_keras_serializable(package="vaepipe")
class Sampling(layers.Layer):
    """Reparameterised draw z = mean + exp(log_var / 2) * eps, eps ~ N(0, I), from a seeded stream."""

    def __init__(self, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs):
        mean, log_var = inputs
        eps = keras.random.normal(ops.shape(mean), seed=self.seed_generator)
        return mean + ops.exp(0.5 * log_var) * eps

    def get_config(self) -> dict:
        return {**super().get_config(), "seed": self.seed}


def _heads(hidden, latent_dim: int, inputs) -> keras.Model:
    z_mean = layers.Dense(latent_dim, name="z_mean")(hidden)
    z_log_var = layers.Dense(latent_dim, name="z_log_var")(hidden)
    return keras.Model(inputs, [z_mean, z_log_var], name="encoder")


def build_encoder(params: ModelParams) -> keras.Model:
    """Image (784 values) -> (z_mean, z_log_var): the architecture's body, then the two latent heads."""
    inputs = keras.Input(shape=(IMAGE_PIXELS,), name="image")
    body, _ = ARCHITECTURES[params.arch]
    return _heads(body(params, inputs), params.latent_dim, inputs)


def build_decoder(params: ModelParams) -> keras.Model:
    """Latent vector -> 784 Bernoulli logits (apply a sigmoid for pixel intensities)."""
    z = keras.Input(shape=(params.latent_dim,), name="z")
    _, decoder = ARCHITECTURES[params.arch]
    return keras.Model(z, decoder(params, z), name="decoder")


@keras.saving.register_keras_serializable(package="vaepipe")
class VAE(keras.Model):
    """Encoder + sampler + decoder, trained on the negative ELBO with a KL weight beta.

    `binarize="dynamic"` redraws each training batch as Bernoulli(pixel) from the model's own
    seeded stream (the test set is binarized once, outside). Metrics: loss, recon, kl (per example).
    """

    def __init__(self, encoder: keras.Model, decoder: keras.Model, beta: float = 1.0,
                 binarize: str = "none", seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.decoder = decoder
        self.beta = beta
        self.binarize = binarize
        self.seed = seed
        self.sampling = Sampling(seed=seed, name="sampling")
        self.binarize_seed = keras.random.SeedGenerator(None if seed is None else seed + 1)
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.recon_tracker = keras.metrics.Mean(name="recon")
        self.kl_tracker = keras.metrics.Mean(name="kl")

    def redraw_binary(self, x):
        """x -> Bernoulli(x), one fresh draw per call from the model's seeded stream.

        Philox is asked for by name: keras.random.uniform's default lowers under XLA on CPU to an
        RNG that took ~40 ms per 100x784 draw in the stacked training loop (bench/NOTES.md).
        """
        seed = tf.cast(self.binarize_seed.next(), tf.int32)
        return tf.cast(tf.random.stateless_uniform(tf.shape(x), seed=seed, alg="philox") < x, x.dtype)

    def build(self, input_shape=None) -> None:
        # The encoder and decoder are functional models, built when constructed.
        self.built = True

    @property
    def metrics(self) -> list:
        return [self.loss_tracker, self.recon_tracker, self.kl_tracker]

    def call(self, x, training: bool = False):
        """Reconstruction logits for images x, through one sampled z."""
        z_mean, z_log_var = self.encoder(x, training=training)
        return self.decoder(self.sampling((z_mean, z_log_var)), training=training)

    def loss_terms(self, x, training: bool = False):
        """Per-example (recon, kl) for one reparameterised sample per image."""
        z_mean, z_log_var = self.encoder(x, training=training)
        logits = self.decoder(self.sampling((z_mean, z_log_var)), training=training)
        return objectives.bernoulli_nll(x, logits), objectives.gaussian_kl(z_mean, z_log_var)

    def _update_metrics(self, recon, kl):
        self.loss_tracker.update_state(recon + self.beta * kl)
        self.recon_tracker.update_state(recon)
        self.kl_tracker.update_state(kl)
        return {metric.name: metric.result() for metric in self.metrics}

    def train_step(self, data):
        """One optimizer step on a batch (batch, 784), or one per batch of a stack (steps, batch, 784).

        A stack (what `make_datasets(..., steps_per_execution=K)` yields) runs its batches in order
        in a loop inside this one (XLA-compiled) call: per batch exactly the per-batch step below,
        with its own binarization and z draws and its own Adam update. That removes the per-batch
        launch of Keras's multi-step loop; the arithmetic is unchanged.
        """
        if len(data.shape) == 3:
            steps = tf.shape(data)[0]

            def body(step):
                self._train_batch(data[step])
                return step + 1

            # parallel_iterations=1: each batch reads the weights, optimizer state and seed
            # streams its predecessor wrote (XLA runs the loop sequentially anyway).
            tf.while_loop(lambda step: step < steps, body, [tf.constant(0)], parallel_iterations=1)
        else:
            self._train_batch(data)
        return {metric.name: metric.result() for metric in self.metrics}

    def _train_batch(self, x):
        recon, kl = self.apply_step(x)
        self._update_metrics(recon, kl)

    def apply_step(self, x, global_batch_size=None):
        """The one per-batch optimizer step of every training path; returns per-example (recon, kl).

        The loss is the mean of recon + beta * KL over the batch; under tf.distribute, where x is one
        replica's share, it is this share's sum over `global_batch_size`, so the gradients the
        optimizer sums over replicas are those of the mean over the whole global batch.
        """
        if self.binarize == "dynamic":  # a fresh Bernoulli(pixel) draw for every batch
            x = self.redraw_binary(x)
        with tf.GradientTape() as tape:
            recon, kl = self.loss_terms(x, training=True)
            per_example = recon + self.beta * kl
            if global_batch_size is None:
                loss = ops.mean(per_example)
            else:
                loss = ops.sum(per_example) / ops.cast(global_batch_size, per_example.dtype)
        gradients = tape.gradient(loss, self.trainable_weights)
        self.optimizer.apply(gradients, self.trainable_weights)
        return recon, kl

    def test_step(self, data):
        """Metrics of a batch, or of each batch of a stack (in order, as train_step)."""
        if len(data.shape) == 3:
            steps = tf.shape(data)[0]

            def body(step):
                self._update_metrics(*self.loss_terms(data[step], training=False))
                return step + 1

            tf.while_loop(lambda step: step < steps, body, [tf.constant(0)], parallel_iterations=1)
            return {metric.name: metric.result() for metric in self.metrics}
        recon, kl = self.loss_terms(data, training=False)
        return self._update_metrics(recon, kl)

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "encoder": keras.saving.serialize_keras_object(self.encoder),
            "decoder": keras.saving.serialize_keras_object(self.decoder),
            "beta": self.beta,
            "binarize": self.binarize,
            "seed": self.seed,
        }

    @classmethod
    def from_config(cls, config: dict) -> VAE:
        config = dict(config)
        config["encoder"] = keras.saving.deserialize_keras_object(config["encoder"])
        config["decoder"] = keras.saving.deserialize_keras_object(config["decoder"])
        return cls(**config)


def has_convolutions(vae: VAE) -> bool:
    """The one test for the conv model's speed choices: on CPU its convolutions run faster in
    TensorFlow's oneDNN kernels than under XLA, and very slowly inside an XLA while loop (bench/NOTES.md
    runs 17 and 20), so it is neither stacked nor, by default, XLA-compiled."""
    conv_layers = (layers.Conv2D, layers.Conv2DTranspose)
    return any(isinstance(layer, conv_layers) for part in (vae.encoder, vae.decoder) for layer in part.layers)


def build_vae(params: ModelParams, beta: float, binarize: str, seed: int) -> VAE:
    vae = VAE(build_encoder(params), build_decoder(params), beta=beta, binarize=binarize, seed=seed, name="vae")
    vae.build((None, IMAGE_PIXELS))
    return vae


def load_vae(path) -> VAE:
    """Load a saved VAE with safe_mode=True: a file that would run code (a Lambda layer) is refused."""
    from vaepipe.errors import DataError

    try:
        return keras.saving.load_model(path, safe_mode=True, compile=False)
    except FileNotFoundError:
        raise DataError(f"{path}: model file not found; run `dvc repro train`") from None
    except ValueError as error:
        raise DataError(f"{path}: refused to load model: {error}") from None
