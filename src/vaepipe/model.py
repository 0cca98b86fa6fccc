"""The VAE in Keras 3: a Sampling layer, encoder/decoder builders per `model.arch`, and the VAE model.

The model reads like the math (after keras-io's vae.py): encode to (mean, log_var), sample
z = mean + exp(log_var / 2) * eps, decode to Bernoulli logits, loss = reconstruction + beta * KL
(`objective="elbo"`), or the negative k-sample importance-weighted bound over k draws (`"iwae"`).
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
        return objectives.reparameterize(mean, log_var, eps)

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
    """Encoder + sampler + decoder, trained on the negative ELBO with a KL weight beta, or on the
    negative IWAE bound with `iw_k` importance samples (objectives.negative_iwae; `objective="iwae"`).

    `binarize="dynamic"` redraws each training batch as Bernoulli(pixel) from the model's own
    seeded stream (the test set is binarized once, outside). Metrics, per example: loss (the
    objective's value: recon + beta * kl for elbo, the negative k-sample bound for iwae), recon
    (-log p(x|z), for iwae its mean over the k draws) and kl (the analytic KL(q(z|x) || p(z)), both).
    """

    def __init__(self, encoder: keras.Model, decoder: keras.Model, beta: float = 1.0,
                 binarize: str = "none", seed: int | None = None, objective_name: str = "elbo",
                 iw_k: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.decoder = decoder
        self.beta = beta
        self.objective_name = objective_name
        self.iw_k = iw_k
        self.binarize = binarize
        self.seed = seed
        self.sampling = Sampling(seed=seed, name="sampling")
        self.binarize_seed = keras.random.SeedGenerator(None if seed is None else seed + 1)
        self.batches_per_stack = 1  # set by compile
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.recon_tracker = keras.metrics.Mean(name="recon")
        self.kl_tracker = keras.metrics.Mean(name="kl")

    def redraw_binary(self, x):
        """x -> Bernoulli(x), one fresh draw per call from the model's seeded stream.

        Philox is asked for by name: keras.random.uniform's default lowers under XLA on CPU to a much
        slower RNG inside the stacked training loop (bench/NOTES.md).
        """
        seed = tf.cast(self.binarize_seed.next(), tf.int32)
        return tf.cast(tf.random.stateless_uniform(tf.shape(x), seed=seed, alg="philox") < x, x.dtype)

    def build(self, input_shape=None) -> None:
        # The encoder and decoder are functional models, built when constructed.
        self.built = True

    def compile(self, *, batches_per_stack: int = 1, **kwargs) -> None:
        """Keras's compile, plus the shape of the training data: `batches_per_stack` > 1 means each
        element is a stack of batches (inputs.make_datasets), which train_step and test_step loop
        over inside one compiled call; 1 means plain batches."""
        super().compile(**kwargs)
        self.batches_per_stack = batches_per_stack

    @property
    def metrics(self) -> list:
        return [self.loss_tracker, self.recon_tracker, self.kl_tracker]

    def forward(self, x, training: bool = False):
        """Encode, sample one z per image, decode: (logits, mean, log_var)."""
        z_mean, z_log_var = self.encoder(x, training=training)
        logits = self.decoder(self.sampling((z_mean, z_log_var)), training=training)
        return logits, z_mean, z_log_var

    def call(self, x, training: bool = False):
        """Reconstruction logits for images x, through one sampled z."""
        return self.forward(x, training=training)[0]

    def objective(self, x, training: bool = False) -> objectives.ElboTerms:
        """Per-example (loss, recon, kl) of images x: one reparameterised sample each (elbo), or iw_k (iwae)."""
        if self.objective_name == "iwae":
            return self.iwae_objective(x, training=training)
        logits, z_mean, z_log_var = self.forward(x, training=training)
        return objectives.negative_elbo(x, logits, z_mean, z_log_var, beta=self.beta)

    def iwae_objective(self, x, training: bool = False) -> objectives.ElboTerms:
        """Encode once, draw iw_k z per image from the sampler's seeded stream, decode all in one call.

        eps comes from tf.random.stateless_normal (Philox, int32 seed, as redraw_binary draws): the same
        bits as keras.random.normal(seed=the generator) under XLA, but inside the stacked XLA loop 25x
        faster here (5 x 100 x 50 draws: 2.4 ms against 60 ms per step).
        """
        z_mean, z_log_var = self.encoder(x, training=training)
        seed = tf.cast(self.sampling.seed_generator.next(), tf.int32)
        eps = tf.random.stateless_normal(tf.concat([[self.iw_k], tf.shape(z_mean)], axis=0), seed=seed,
                                         alg="philox", dtype=z_mean.dtype)
        z = objectives.reparameterize(z_mean[None], z_log_var[None], eps)  # (k, batch, latent)
        logits = self.decoder(ops.reshape(z, (-1, ops.shape(z)[-1])), training=training)
        logits = ops.reshape(logits, (self.iw_k, -1, ops.shape(x)[-1]))
        return objectives.negative_iwae(x, logits, z, z_mean, z_log_var, beta=self.beta)

    def optimizer_step(self, x, global_batch_size=None) -> objectives.ElboTerms:
        """One optimizer step on batch x, the one of both training loops; returns its per-example terms.

        The loss minimised is the batch mean of the objective; under tf.distribute, where x is one
        replica's share, it is this share's sum over `global_batch_size`, so the gradients the
        optimizer sums over replicas are those of the mean over the whole global batch.
        """
        if self.binarize == "dynamic":  # a fresh Bernoulli(pixel) draw for every batch
            x = self.redraw_binary(x)
        with tf.GradientTape() as tape:
            terms = self.objective(x, training=True)
            if global_batch_size is None:
                loss = ops.mean(terms.loss)
            else:
                loss = ops.sum(terms.loss) / ops.cast(global_batch_size, terms.loss.dtype)
        gradients = tape.gradient(loss, self.trainable_weights)
        self.optimizer.apply(gradients, self.trainable_weights)
        return terms

    def track(self, terms: objectives.ElboTerms) -> None:
        """Add a batch's per-example terms to the epoch's running means (Keras's loss, recon, kl)."""
        self.loss_tracker.update_state(terms.loss)
        self.recon_tracker.update_state(terms.recon)
        self.kl_tracker.update_state(terms.kl)

    def train_batch(self, x) -> None:
        self.track(self.optimizer_step(x))

    def test_batch(self, x) -> None:
        self.track(self.objective(x, training=False))

    def train_step(self, data):
        """Keras's per-call training step: one batch, or each batch of a stack in order."""
        for_each_batch(self.train_batch, data, self.batches_per_stack)
        return {metric.name: metric.result() for metric in self.metrics}

    def test_step(self, data):
        """Keras's per-call validation step: the metrics of a batch, or of each batch of a stack."""
        for_each_batch(self.test_batch, data, self.batches_per_stack)
        return {metric.name: metric.result() for metric in self.metrics}

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "encoder": keras.saving.serialize_keras_object(self.encoder),
            "decoder": keras.saving.serialize_keras_object(self.decoder),
            "beta": self.beta,
            "binarize": self.binarize,
            "seed": self.seed,
            "objective_name": self.objective_name,
            "iw_k": self.iw_k,
        }

    @classmethod
    def from_config(cls, config: dict) -> VAE:
        config = dict(config)
        config["encoder"] = keras.saving.deserialize_keras_object(config["encoder"])
        config["decoder"] = keras.saving.deserialize_keras_object(config["decoder"])
        return cls(**config)


def for_each_batch(batch_step, data, batches_per_stack: int) -> None:
    """Run `batch_step` on data, a batch; or, with batches_per_stack > 1, a stack (steps, batch, 784)
    whose batches it runs in order in a loop inside the one compiled call. That removes the per-batch
    launch of Keras's multi-step loop; per batch the arithmetic is exactly batch_step's."""
    if batches_per_stack == 1:
        batch_step(data)
        return
    steps = tf.shape(data)[0]

    def body(step):
        batch_step(data[step])
        return step + 1

    # parallel_iterations=1: each batch reads the weights, optimizer state and seed streams its
    # predecessor wrote (XLA runs the loop sequentially anyway).
    tf.while_loop(lambda step: step < steps, body, [tf.constant(0)], parallel_iterations=1)


def has_convolutions(vae: VAE) -> bool:
    """The one test for the conv model's speed choices: on CPU its convolutions run faster in
    TensorFlow's oneDNN kernels than under XLA, and very slowly inside an XLA while loop (bench/NOTES.md),
    so it is neither stacked nor, by default, XLA-compiled."""
    conv_layers = (layers.Conv2D, layers.Conv2DTranspose)
    return any(isinstance(layer, conv_layers) for part in (vae.encoder, vae.decoder) for layer in part.layers)


def build_vae(params: ModelParams, beta: float, binarize: str, seed: int, objective: str = "elbo",
              iw_k: int = 1) -> VAE:
    vae = VAE(build_encoder(params), build_decoder(params), beta=beta, binarize=binarize, seed=seed,
              objective_name=objective, iw_k=iw_k, name="vae")
    vae.build((None, IMAGE_PIXELS))
    return vae


def load_vae(path) -> VAE:
    """Load a saved VAE with safe_mode=True: a file that would run code (a Lambda layer) is refused.

    A file that cannot be read (empty, truncated, a bad CRC, not a VAE) is a DataError naming it and
    the fix, in one line, whatever Keras, zipfile or h5py raised."""
    import zipfile
    from pathlib import Path

    from vaepipe.errors import DataError

    if not Path(path).exists():
        raise DataError(f"{path}: model file not found; run `dvc repro train`")
    if Path(path).is_file() and not zipfile.is_zipfile(path):  # Keras would call it "File not found"
        size = Path(path).stat().st_size
        raise _unreadable_model(path, f"{size} bytes, not a .keras zip archive: empty, truncated or overwritten")
    try:
        vae = keras.saving.load_model(path, safe_mode=True, compile=False)
    except FileNotFoundError:
        raise DataError(f"{path}: model file not found; run `dvc repro train`") from None
    except ValueError as error:
        if "safe_mode" in str(error):
            raise DataError(f"{path}: refused to load model: {error}") from None
        raise _unreadable_model(path, error) from None
    except (OSError, KeyError, TypeError, AttributeError, EOFError, zipfile.BadZipFile) as error:
        raise _unreadable_model(path, error) from None
    if not isinstance(vae, VAE):
        raise _unreadable_model(path, f"it holds a {type(vae).__name__}, not a vaepipe VAE")
    return vae


def _unreadable_model(path, error) -> Exception:
    from vaepipe.errors import DataError

    reason = " ".join(str(error).split()) or type(error).__name__
    reason = reason if len(reason) <= 200 else reason[:197] + "..."
    return DataError(f"{path}: cannot read the model file ({reason}); restore it with `dvc checkout {path}` "
                     f"or retrain it with `dvc repro -f -s train`")
