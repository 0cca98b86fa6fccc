"""The plot stage's work: run the trained model over test images and the prior, draw every figure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from keras import ops

from vaepipe import paths, plots, prepared
from vaepipe.config import Params
from vaepipe.data import Split
from vaepipe.errors import DataError
from vaepipe.evaluation import encode_means
from vaepipe.model import VAE, load_vae

FIGURE_SEED = 1234  # prior samples and interpolation pairs are the same for every run


def _decode(vae, z: np.ndarray) -> np.ndarray:
    return np.asarray(ops.sigmoid(vae.decoder(z.astype(np.float32))))


def _read_log(path: Path) -> dict[str, np.ndarray]:
    table = np.genfromtxt(path, delimiter=",", names=True)
    return {name: np.atleast_1d(table[name]) for name in table.dtype.names}


def load_inputs(params: Params) -> tuple[VAE, Split, np.ndarray, dict[str, np.ndarray]]:
    """Model, test split, its model inputs and the epoch log; read before the MLflow run is reopened."""
    vae = load_vae(paths.MODEL_FILE)
    test = prepared.load_verified("test")
    try:
        log = _read_log(paths.TRAIN_LOG)
    except (OSError, ValueError) as error:
        raise DataError(f"{paths.TRAIN_LOG}: unreadable epoch log ({error}); rerun `dvc repro train`") from None
    return vae, test, prepared.model_inputs(test, params.data.binarize, training=False), log


def draw_all(vae: VAE, test: Split, x_test: np.ndarray, log: dict[str, np.ndarray]) -> list[Path]:
    """Write every figure into plots/ (each atomically) and return their paths."""
    z_test = encode_means(vae, x_test)
    rng = np.random.default_rng(FIGURE_SEED)
    latent_dim = z_test.shape[1]

    figures = {
        "reconstructions.png": plots.reconstructions(x_test[:10], _decode(vae, z_test[:10])),
        "loss_curves.png": plots.loss_curves(log),
        "latent_space.png": plots.latent_scatter(z_test, test.labels),
        "prior_samples.png": plots.image_grid(
            _decode(vae, rng.standard_normal((100, latent_dim))), 10, 10, "decoded samples from the prior N(0, I)"),
    }
    pairs = rng.choice(len(x_test), size=(6, 2), replace=len(x_test) < 12)
    figures["interpolation.png"] = plots.image_grid(
        _decode(vae, plots.interpolation_points(z_test[pairs[:, 0]], z_test[pairs[:, 1]], 10)), 6, 10,
        "linear interpolation in latent space between pairs of test digits")
    if latent_dim == 2:
        figures["manifold.png"] = plots.image_grid(
            _decode(vae, plots.manifold_grid_points(20, 2.0)), 20, 20, "decoded latent grid over [-2, 2]^2")

    paths.PLOTS_DIR.mkdir(parents=True, exist_ok=True)
    written = []
    for name, figure in figures.items():
        target = paths.PLOTS_DIR / name
        with paths.atomic_path(target) as tmp:
            figure.savefig(tmp, dpi=100, format="png")
        plots.plt.close(figure)
        written.append(target)
    return written
