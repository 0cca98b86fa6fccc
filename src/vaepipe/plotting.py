"""The plot stage's work: run the trained model over held-out images and the prior, draw every figure.

The images are the validation split's (the training split's when data.val_size = 0): never the test
split, which only evaluate reads, so looking at figures while tuning does not peek at the test set.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from keras import ops

from vaepipe import paths, plots, prepared
from vaepipe.data import CLASS_NAMES, Split
from vaepipe.errors import DataError
from vaepipe.evaluation import encode_means
from vaepipe.model import VAE, load_vae

FIGURE_SEED = 1234  # prior samples and interpolation pairs are the same for every run


def _decode(vae, z: np.ndarray) -> np.ndarray:
    return np.asarray(ops.sigmoid(vae.decoder(z.astype(np.float32))))


def _read_log(path: Path) -> dict[str, np.ndarray]:
    table = np.genfromtxt(path, delimiter=",", names=True)
    return {name: np.atleast_1d(table[name]) for name in table.dtype.names}


def load_inputs(data: prepared.FigureData) -> tuple[VAE, Split, np.ndarray, dict[str, np.ndarray], str, tuple[str, ...]]:
    """Model, the images to draw (which the stage read first), their model inputs, the epoch log, the
    split's name and the names of the dataset's classes; read before the MLflow run is reopened, so a
    bad input leaves the run untouched."""
    vae = load_vae(paths.MODEL_FILE)
    try:
        log = _read_log(paths.TRAIN_LOG)
    except (OSError, ValueError) as error:
        raise DataError(f"{paths.TRAIN_LOG}: unreadable epoch log ({error}); rerun `dvc repro train`") from None
    return vae, data.images, data.x, log, data.split, dataset_class_names()


def dataset_class_names() -> tuple[str, ...]:
    """The names of the prepared dataset's classes (meta.json's dataset; digits for MNIST)."""
    return CLASS_NAMES.get(prepared.read_meta().get("dataset"), CLASS_NAMES["mnist"])


def draw_all(vae: VAE, images: Split, x: np.ndarray, log: dict[str, np.ndarray], split: str,
             class_names: tuple[str, ...] = CLASS_NAMES["mnist"]) -> list[Path]:
    """Write every figure into plots/ (each atomically), remove the ones it no longer draws, return the paths."""
    z = encode_means(vae, x)
    rng = np.random.default_rng(FIGURE_SEED)
    latent_dim = z.shape[1]

    figures = {
        "reconstructions.png": plots.reconstructions(x[:10], _decode(vae, z[:10])),
        "loss_curves.png": plots.loss_curves(log),
        "latent_space.png": plots.latent_scatter(z, images.labels, split, class_names),
        "prior_samples.png": plots.image_grid(
            _decode(vae, rng.standard_normal((100, latent_dim))), 10, 10, "decoded samples from the prior N(0, I)"),
    }
    pairs = rng.choice(len(x), size=(6, 2), replace=len(x) < 12)
    figures["interpolation.png"] = plots.image_grid(
        _decode(vae, plots.interpolation_points(z[pairs[:, 0]], z[pairs[:, 1]], 10)), 6, 10,
        f"linear interpolation in latent space between pairs of {split} images")
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
    # plots/ is a persistent output (DVC leaves it in place): a figure this model no longer has (the
    # manifold, after latent_dim 2) goes only now that the new ones are all written.
    for stale in set(paths.PLOTS_DIR.glob("*.png")) - set(written):
        stale.unlink()
    return written
