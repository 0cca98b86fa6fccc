"""The model architectures, one entry per `model.arch`: an encoder body (image -> features, before the
latent heads) and a decoder (z -> 784 Bernoulli logits). vaepipe.model adds the heads and the sampler.

To add an architecture: write its two functions here, add it to ARCHITECTURES, and add its name to
`ModelParams.arch` in config.py (docs/extending.md; tests/test_extending.py does exactly this).
"""

from __future__ import annotations

from collections.abc import Callable

from keras import layers

from vaepipe.config import ModelParams
from vaepipe.data import IMAGE_PIXELS


def tutorial_encoder(params: ModelParams, image):
    """The tutorial: one ReLU layer as wide as the latent space."""
    return layers.Dense(params.latent_dim, activation="relu", name="enc_dense")(image)


def tutorial_decoder(params: ModelParams, z):
    """The tutorial: straight to the pixels."""
    return layers.Dense(IMAGE_PIXELS, name="logits")(z)


def mlp_encoder(params: ModelParams, image):
    hidden = image
    for i, units in enumerate(params.hidden):
        hidden = layers.Dense(units, activation=params.activation, name=f"enc_dense_{i}")(hidden)
    return hidden


def mlp_decoder(params: ModelParams, z):
    """The encoder's hidden layers in reverse order."""
    hidden = z
    for i, units in enumerate(reversed(params.hidden)):
        hidden = layers.Dense(units, activation=params.activation, name=f"dec_dense_{i}")(hidden)
    return layers.Dense(IMAGE_PIXELS, name="logits")(hidden)


def conv_encoder(params: ModelParams, image):
    """After keras-io's conv VAE: two stride-2 convolutions, then a dense layer."""
    small, large = params.conv_filters
    hidden = layers.Reshape((28, 28, 1))(image)
    hidden = layers.Conv2D(small, 3, strides=2, padding="same", activation="relu", name="enc_conv_0")(hidden)
    hidden = layers.Conv2D(large, 3, strides=2, padding="same", activation="relu", name="enc_conv_1")(hidden)
    hidden = layers.Flatten()(hidden)
    return layers.Dense(params.conv_dense, activation="relu", name="enc_dense")(hidden)


def conv_decoder(params: ModelParams, z):
    small, large = params.conv_filters
    hidden = layers.Dense(7 * 7 * large, activation="relu", name="dec_dense")(z)
    hidden = layers.Reshape((7, 7, large))(hidden)
    hidden = layers.Conv2DTranspose(large, 3, strides=2, padding="same", activation="relu", name="dec_deconv_0")(hidden)
    hidden = layers.Conv2DTranspose(small, 3, strides=2, padding="same", activation="relu", name="dec_deconv_1")(hidden)
    hidden = layers.Conv2DTranspose(1, 3, padding="same", name="dec_deconv_out")(hidden)
    return layers.Flatten(name="logits")(hidden)


Builder = Callable[[ModelParams, object], object]
ARCHITECTURES: dict[str, tuple[Builder, Builder]] = {
    "tutorial": (tutorial_encoder, tutorial_decoder),
    "mlp": (mlp_encoder, mlp_decoder),
    "conv": (conv_encoder, conv_decoder),
}
