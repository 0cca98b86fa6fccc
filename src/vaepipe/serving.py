"""The MLflow pyfunc model ("models from code": MLflow stores this file, not a pickle).

Input: rows of numbers (a pandas DataFrame, or a JSON `inputs`/`dataframe_split` payload).
- Rows of 784 values in [0, 1] are images: the output has `z_mean` (latent means) and
  `reconstruction` (784 pixel probabilities decoded from the latent means).
- Rows of `latent_dim` values are latent vectors: the output has `image` (784 pixel probabilities).
"""

from __future__ import annotations

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel


class VAEServing(PythonModel):
    def load_context(self, context) -> None:
        import keras

        import vaepipe.model  # noqa: F401  registers the custom layers for safe loading

        self.vae = keras.saving.load_model(context.artifacts["keras_model"], safe_mode=True, compile=False)
        self.latent_dim = int(self.vae.decoder.inputs[0].shape[-1])

    def predict(self, context, model_input, params=None) -> dict:
        from keras import ops

        rows = np.asarray(model_input, dtype=np.float32)
        if rows.ndim != 2 or rows.shape[1] not in (784, self.latent_dim):
            raise ValueError(f"expected rows of 784 pixels or {self.latent_dim} latent values, got shape {rows.shape}")
        if rows.shape[1] == self.latent_dim:
            return {"image": np.asarray(ops.sigmoid(self.vae.decoder(rows)))}
        z_mean, _ = self.vae.encoder(rows)
        return {
            "z_mean": np.asarray(z_mean),
            "reconstruction": np.asarray(ops.sigmoid(self.vae.decoder(z_mean))),
        }


mlflow.models.set_model(VAEServing())
