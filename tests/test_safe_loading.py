"""A .keras file that carries code (a Lambda layer) is refused by load_vae, and its code never runs."""


import keras
import pytest

from vaepipe.errors import DataError
from vaepipe.model import load_vae


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
