"""The MLflow pyfunc model ("models from code": MLflow stores this file, not a pickle).

Input: rows of numbers (a pandas DataFrame, or a JSON `inputs`/`dataframe_split` payload).
- Rows of 784 values in [0, 1] are images: the output has `z_mean` (latent means) and
  `reconstruction` (784 pixel probabilities decoded from the latent means).
- Rows of `latent_dim` values are latent vectors: the output has `image` (784 pixel probabilities).

Refused with HTTP 400 and a message naming the problem (an MlflowException of INVALID_PARAMETER_VALUE,
which MLflow's scoring server answers with 400): rows of another width, NaN or infinite values, image
values outside [0, 1], and more than MAX_ROWS rows in one request.
"""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel

MAX_ROWS = 10000  # rows per request: about 31 MB of float32 images in, twice that out


def check_rows(rows: np.ndarray, latent_dim: int) -> None:
    """Refuse input the model would answer with garbage, naming the problem."""
    def refuse(problem: str):
        raise MlflowException(f"bad input: {problem}", error_code=INVALID_PARAMETER_VALUE)

    if rows.ndim != 2 or rows.shape[1] not in (784, latent_dim):
        refuse(f"expected rows of 784 pixels or {latent_dim} latent values, got shape {rows.shape}")
    if len(rows) > MAX_ROWS:
        refuse(f"{len(rows)} rows in one request; at most {MAX_ROWS}: send them in several requests")
    finite = np.isfinite(rows)
    if not finite.all():
        bad = np.flatnonzero(~finite.all(axis=1))
        refuse(f"{int((~finite).sum())} NaN or infinite values, in rows {bad[:10].tolist()}"
               + (" and more" if len(bad) > 10 else ""))
    if rows.shape[1] == 784 and (rows.min() < 0 or rows.max() > 1):
        outside = np.flatnonzero(((rows < 0) | (rows > 1)).any(axis=1))
        refuse(f"image pixel values must be in [0, 1]; rows {outside[:10].tolist()}" + (" and more" if len(outside) > 10 else "")
               + f" hold values from {float(rows.min())} to {float(rows.max())}")


class VAEServing(PythonModel):
    def load_context(self, context) -> None:
        import keras

        import vaepipe.model  # noqa: F401  registers the custom layers for safe loading

        self.vae = keras.saving.load_model(context.artifacts["keras_model"], safe_mode=True, compile=False)
        self.latent_dim = int(self.vae.decoder.inputs[0].shape[-1])

    # Annotated DataFrame (what MLflow's scoring server passes): MLflow then neither validates by type hint nor
    # warns that predict has none (it warns, in colour codes, on every logging of an unannotated predict);
    # check_rows validates the pixels and answers a bad request with a 400 naming the problem.
    def predict(self, context, model_input: pd.DataFrame, params=None) -> dict:
        from keras import ops

        try:
            rows = np.asarray(model_input, dtype=np.float32)
        except (TypeError, ValueError) as error:
            raise MlflowException(f"bad input: not rows of numbers ({error})", error_code=INVALID_PARAMETER_VALUE) from None
        check_rows(rows, self.latent_dim)
        if rows.shape[1] == self.latent_dim:
            return {"image": np.asarray(ops.sigmoid(self.vae.decoder(rows)))}
        z_mean, _ = self.vae.encoder(rows)
        return {
            "z_mean": np.asarray(z_mean),
            "reconstruction": np.asarray(ops.sigmoid(self.vae.decoder(z_mean))),
        }


mlflow.models.set_model(VAEServing())
