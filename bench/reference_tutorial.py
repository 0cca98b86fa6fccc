"""The blog tutorial's VAE, ported to Keras 3 as plainly as possible: the benchmark's reference.

Deliberately *not* optimised: plain `model.fit(x, batch_size=32)`, no steps_per_execution, no XLA.
Model and loss are the tutorial's:
  encoder  784 -> Dense(2, relu) -> Dense(2) z_mean, Dense(2) z_log_var
  sampling z = z_mean + exp(z_log_var / 2) * eps      (a small layer, not a Lambda)
  decoder  2 -> Dense(784, sigmoid)
  loss     784 * binary_crossentropy(x, x_hat) + KL averaged over the latent dimensions
  Adam with default settings.
Keras 3 has no `add_loss` on a symbolic functional model, so the loss lives in a custom train_step
(as in keras-io's vae.py); the arithmetic per step is the same.

Run alone: `python bench/reference_tutorial.py [epochs] [prepared data dir]` prints seconds per
epoch (the bench times it as a whole process too, as it times the train stage).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from keras import layers, ops

ORIGINAL_DIM = 784
LATENT_DIM = 2
INTERMEDIATE_DIM = 2  # the tutorial's encoder layer is as narrow as the latent space


class Sampling(layers.Layer):
    """z = mean + exp(log_var / 2) * eps, eps ~ N(0, I)."""

    def __init__(self, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs):
        z_mean, z_log_var = inputs
        eps = keras.random.normal(ops.shape(z_mean), seed=self.seed_generator)
        return z_mean + ops.exp(z_log_var / 2) * eps


class TutorialVAE(keras.Model):
    def __init__(self, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        x = keras.Input(shape=(ORIGINAL_DIM,))
        h = layers.Dense(INTERMEDIATE_DIM, activation="relu")(x)
        z_mean = layers.Dense(LATENT_DIM)(h)
        z_log_var = layers.Dense(LATENT_DIM)(h)
        z = Sampling(seed=seed)([z_mean, z_log_var])
        self.encoder = keras.Model(x, [z_mean, z_log_var, z], name="encoder")
        z_in = keras.Input(shape=(LATENT_DIM,))
        self.decoder = keras.Model(z_in, layers.Dense(ORIGINAL_DIM, activation="sigmoid")(z_in), name="decoder")
        self.loss_tracker = keras.metrics.Mean(name="loss")

    @property
    def metrics(self) -> list:
        return [self.loss_tracker]

    def call(self, x):
        return self.decoder(self.encoder(x)[2])

    def vae_loss(self, x):
        z_mean, z_log_var, z = self.encoder(x)
        x_decoded = self.decoder(z)
        xent = ORIGINAL_DIM * keras.losses.binary_crossentropy(x, x_decoded)
        kl = -0.5 * ops.mean(1 + z_log_var - ops.square(z_mean) - ops.exp(z_log_var), axis=-1)
        return ops.mean(xent + kl)

    def train_step(self, x):
        with tf.GradientTape() as tape:
            loss = self.vae_loss(x)
        grads = tape.gradient(loss, self.trainable_weights)
        self.optimizer.apply(grads, self.trainable_weights)
        self.loss_tracker.update_state(loss)
        return {"loss": self.loss_tracker.result()}


def build(seed: int = 42) -> TutorialVAE:
    keras.utils.set_random_seed(seed)
    vae = TutorialVAE(seed=seed)
    # Adam defaults; steps_per_execution=1 and no XLA (Keras's "auto" could pick XLA): plain.
    vae.compile(optimizer="adam", jit_compile=False)
    return vae


def load_x_train(prepared: Path | None = None) -> np.ndarray:
    """MNIST training images as float32 in [0, 1] (uint8 / 255), from prepared data (the repo's by default)."""
    prepared = prepared or Path(__file__).resolve().parents[1] / "data" / "prepared"
    with np.load(prepared / "train.npz", allow_pickle=False) as arrays:
        return arrays["images"].astype("float32") / 255.0


class EpochClock(keras.callbacks.Callback):
    """Wall seconds of each epoch (training steps only, not fit's setup)."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds: list[float] = []

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.seconds.append(time.perf_counter() - self._start)


def main(epochs: int = 3, prepared: Path | None = None) -> None:
    x_train = load_x_train(prepared)
    vae = build()
    clock = EpochClock()
    vae.fit(x_train, epochs=epochs, batch_size=32, callbacks=[clock], verbose=2)
    for epoch, seconds in enumerate(clock.seconds, 1):
        print(f"epoch {epoch}: {seconds:.2f} s")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3, Path(sys.argv[2]) if len(sys.argv) > 2 else None)
