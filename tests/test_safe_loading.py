"""Saved models: a .keras file that carries code (a Lambda layer) is refused by load_vae, and its code
never runs; a saved VAE loads back computing exactly what it computed before saving."""


import keras
import numpy as np
import pytest

from vaepipe.config import ModelParams, TrainParams
from vaepipe.errors import DataError
from vaepipe.model import build_vae, load_vae


def test_keras_file_with_lambda_layer_is_refused_not_executed(tmp_path):
    marker = tmp_path / "code-ran"
    inputs = keras.Input(shape=(784,))
    # No closure (Keras would refuse to save one): the path is a constant in the lambda's own code.
    touch = eval(f"lambda x: x * 0.0 + float(__import__('pathlib').Path({str(marker)!r}).touch() or 0.0)")
    payload = keras.layers.Lambda(touch, name="payload")
    model = keras.Model(inputs, payload(inputs))
    marker.unlink()  # building the model called the lambda once
    malicious = tmp_path / "vae.keras"
    model.save(malicious)
    assert not marker.exists()

    with pytest.raises(DataError) as refused:
        load_vae(malicious)
    message = str(refused.value)
    assert str(malicious) in message and "refused" in message and "lambda" in message.lower(), message
    assert not marker.exists(), "loading the model ran the code inside it"

    # The check is not vacuous: an unsafe load does run the payload.
    keras.saving.load_model(malicious, safe_mode=False)(keras.ops.zeros((1, 784)))
    assert marker.exists()


@pytest.mark.parametrize("arch,extra", [
    ("tutorial", {}), ("mlp", {"hidden": [16, 8]}), ("conv", {"conv_filters": [4, 8], "conv_dense": 8}),
])
def test_save_then_load_gives_bit_identical_encoder_means_and_decoder_logits(tmp_path, arch, extra):
    rng = np.random.default_rng(7)
    params = ModelParams(arch=arch, latent_dim=3, **extra)
    vae = build_vae(params, TrainParams(beta=0.5, seed=11), binarize="dynamic")
    # Weights no initializer would produce: a loader that rebuilt the model from its seeded config
    # instead of reading the file could not match them.
    for weight in vae.weights:
        weight.assign(rng.normal(0.0, 0.1, weight.shape).astype(weight.dtype))
    images = rng.uniform(0.0, 1.0, (16, 784)).astype(np.float32)
    z = rng.normal(0.0, 1.0, (16, 3)).astype(np.float32)

    def outputs(model):
        z_mean, _ = model.encoder(images)
        return keras.ops.convert_to_numpy(z_mean), keras.ops.convert_to_numpy(model.decoder(z))

    path = tmp_path / "vae.keras"
    vae.save(path)
    loaded = load_vae(path)
    for before, after in zip(outputs(vae), outputs(loaded), strict=True):
        np.testing.assert_array_equal(after, before)  # bit-identical, not approximately equal
    assert (loaded.term_weights, loaded.binarize, loaded.seed) == ({"beta": 0.5}, "dynamic", 11)
    # The comparison can fail: the same architecture with its own initial weights gives other numbers.
    fresh = build_vae(params, TrainParams(beta=0.5, seed=11), binarize="dynamic")
    assert not np.array_equal(outputs(fresh)[0], outputs(vae)[0])
