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
from vaepipe.config import ModelParams, TrainParams


@keras.saving.register_keras_serializable(package="vaepipe")
class Sampling(layers.Layer):
    """Reparameterised draws z = mean + exp(log_var / 2) * eps, eps ~ N(0, I), from a seeded stream:
    one per image (shape (batch, latent)), or `samples` per image (shape (samples, batch, latent))."""

    def __init__(self, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, samples: int | None = None):
        mean, log_var = inputs
        if samples is None:
            eps = keras.random.normal(ops.shape(mean), seed=self.seed_generator)
        else:
            # tf's stateless Philox with an int32 seed from the same stream: the bits keras.random.normal gives
            # under XLA, but 25x faster inside the stacked XLA loop (5 x 100 x 50 draws: 2.4 ms against 60 ms).
            seed = tf.cast(self.seed_generator.next(), tf.int32)
            eps = tf.random.stateless_normal(tf.concat([[samples], tf.shape(mean)], axis=0), seed=seed,
                                             alg="philox", dtype=mean.dtype)
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
    """Encoder + sampler + decoder, trained on an objective of objectives.OBJECTIVES: the negative ELBO,
    recon + beta * KL (`elbo`), or the negative k-sample IWAE bound (`iwae`, k = `samples` draws per image).

    `term_weights` holds the objective's weight params by name (beta); `binarize="dynamic"` redraws each training
    batch as Bernoulli(pixel) from the model's own seeded stream (the test set is binarized once, outside).
    Its metrics are the objective's per-example loss and terms (objectives.reported): loss, recon, kl.
    """

    def __init__(self, encoder: keras.Model, decoder: keras.Model, objective: str = "elbo",
                 term_weights: dict[str, float] | None = None, samples: int = 1, binarize: str = "none",
                 seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.decoder = decoder
        self.objective_name = objective
        self.objective = objectives.OBJECTIVES[objective]
        self.term_weights = dict(term_weights or {})
        self.samples = samples
        self.binarize = binarize
        self.seed = seed
        self.sampling = Sampling(seed=seed, name="sampling")
        self.binarize_seed = keras.random.SeedGenerator(None if seed is None else seed + 1)
        self.trackers = [keras.metrics.Mean(name=name) for name in objectives.reported(self.objective)]

    @property
    def metrics(self) -> list:
        return self.trackers

    def build(self, input_shape=None) -> None:
        self.built = True  # the encoder and decoder are functional models, built when constructed

    def compute_terms(self, x, training: bool = False) -> dict:
        """The objective's per-example loss and terms for images x: encode, sample, decode, score."""
        posterior = objectives.Posterior(*self.encoder(x, training=training))
        draws = self.samples if self.objective.samples else None  # None: one z per image
        z = self.sampling((posterior.mean, posterior.log_var), samples=draws)
        logits = self.decode(z, training=training)
        return objectives.score(self.objective, self.term_weights, x, posterior, z, logits)

    def train_step(self, x):
        """One optimizer step on the batch mean of the loss; returns the epoch's running means."""
        if self.binarize == "dynamic":  # a fresh Bernoulli(pixel) draw for every batch
            x = self.redraw_binary(x)
        with tf.GradientTape() as tape:
            terms = self.compute_terms(x, training=True)
            loss = ops.mean(terms[objectives.LOSS])
        gradients = tape.gradient(loss, self.trainable_weights)
        self.optimizer.apply(gradients, self.trainable_weights)
        return self.track(terms)

    def test_step(self, x):
        return self.track(self.compute_terms(x))

    def track(self, terms: dict) -> dict:
        """Add a batch's per-example values to the epoch's running means; return the means so far."""
        for tracker in self.trackers:
            tracker.update_state(terms[tracker.name])
        return {tracker.name: tracker.result() for tracker in self.trackers}

    def decode(self, z, training: bool = False):
        """Bernoulli logits for z of shape (batch, latent), or (draws, batch, latent) in one decoder call."""
        if len(z.shape) == 2:
            return self.decoder(z, training=training)
        logits = self.decoder(ops.reshape(z, (-1, ops.shape(z)[-1])), training=training)
        return ops.reshape(logits, (ops.shape(z)[0], -1, IMAGE_PIXELS))

    def call(self, x, training: bool = False):
        """Reconstruction logits for images x, through one sampled z."""
        z_mean, z_log_var = self.encoder(x, training=training)
        return self.decoder(self.sampling((z_mean, z_log_var)), training=training)

    def redraw_binary(self, x):
        """x -> Bernoulli(x), one fresh draw per call from the model's seeded stream.

        Philox is asked for by name: keras.random.uniform's default lowers under XLA on CPU to a much
        slower RNG inside the stacked training loop (bench/NOTES.md).
        """
        seed = tf.cast(self.binarize_seed.next(), tf.int32)
        return tf.cast(tf.random.stateless_uniform(tf.shape(x), seed=seed, alg="philox") < x, x.dtype)

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "encoder": keras.saving.serialize_keras_object(self.encoder),
            "decoder": keras.saving.serialize_keras_object(self.decoder),
            "objective": self.objective_name,
            "term_weights": self.term_weights,
            "samples": self.samples,
            "binarize": self.binarize,
            "seed": self.seed,
        }

    @classmethod
    def from_config(cls, config: dict) -> VAE:
        config = dict(config)
        config["encoder"] = keras.saving.deserialize_keras_object(config["encoder"])
        config["decoder"] = keras.saving.deserialize_keras_object(config["decoder"])
        if "beta" in config:  # saved before the objective registry (beta, objective_name, iw_k)
            config["term_weights"] = {"beta": config.pop("beta")}
            config["objective"] = config.pop("objective_name", "elbo")
            config["samples"] = config.pop("iw_k", 1)
        return cls(**config)


def has_convolutions(vae: VAE) -> bool:
    """The one test for the conv model's speed choices: on CPU its convolutions run faster in TensorFlow's
    oneDNN kernels than under XLA, and very slowly inside an XLA while loop (bench/NOTES.md), so it is
    neither stacked (train.stacking) nor, by default, XLA-compiled."""
    conv_layers = (layers.Conv2D, layers.Conv2DTranspose)
    return any(isinstance(layer, conv_layers) for part in (vae.encoder, vae.decoder) for layer in part.layers)


def build_vae(params: ModelParams, train: TrainParams, binarize: str = "none") -> VAE:
    """The VAE of `model` params, with the objective, weights, draws and seed of `train` params."""
    objective = objectives.OBJECTIVES[train.objective]
    weights = {term.weight: float(getattr(train, term.weight)) for term in objective.terms if term.weight}
    samples = getattr(train, objective.samples) if objective.samples else 1
    vae = VAE(build_encoder(params), build_decoder(params), objective=train.objective, term_weights=weights,
              samples=samples, binarize=binarize, seed=train.seed, name="vae")
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
