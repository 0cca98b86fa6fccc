"""Run by tests/test_extending.py on a copy of the package that docs/extending.md's recipe extended with
the `tiny` architecture and its `model.tiny_units`: train it two epochs the way the train stage does,
save it, reload it with safe_mode=True, and print the losses."""

import numpy as np

from vaepipe.config import param_applies, parse_params
from vaepipe.model import load_vae
from vaepipe.train.single_process import compile_for_training, trained_vae, training_batches

# (No XLA: its compile time is nothing the recipe is about.)
params = parse_params({"model": {"arch": "tiny", "latent_dim": 3, "tiny_units": 8},
                       "train": {"batch_size": 16, "jit_compile": False}})
assert param_applies("model.tiny_units", "tiny") and not param_applies("model.tiny_units", "mlp")
model = compile_for_training(params, batches_per_epoch=4)
vae = trained_vae(model)
x = np.random.default_rng(0).random((64, 784), dtype=np.float32)
batches = training_batches(model, params, x, None, epochs=range(2))
history = model.fit(batches.train, steps_per_epoch=batches.stacks_per_epoch, epochs=2, verbose=0, shuffle=False)
assert [(layer.name, layer.units) for layer in vae.encoder.layers if layer.name.endswith("tiny")] == [("enc_tiny", 8)]
vae.save("tiny.keras")
loaded = load_vae("tiny.keras")  # safe_mode=True
np.testing.assert_array_equal(np.asarray(loaded.encoder(x[:4])[0]), np.asarray(vae.encoder(x[:4])[0]))
print("losses", history.history["loss"])
