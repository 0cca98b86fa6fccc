"""Matplotlib figures from arrays (no training logic). Each function returns a Figure; the plot
stage saves them. The Agg backend: no screen is needed."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from vaepipe import epoch_metrics  # noqa: E402


def _image(ax, pixels: np.ndarray) -> None:
    ax.imshow(pixels.reshape(28, 28), cmap="gray", vmin=0.0, vmax=1.0)
    ax.axis("off")


def reconstructions(originals: np.ndarray, reconstructed: np.ndarray) -> Figure:
    """The tutorial's figure: held-out digits (top row) over their reconstructions (bottom row)."""
    n = len(originals)
    fig, axes = plt.subplots(2, n, figsize=(max(n, 2) * 1.2, 2.6), squeeze=False)  # a 2-D grid even for n = 1
    for i in range(n):
        _image(axes[0, i], originals[i])
        _image(axes[1, i], reconstructed[i])
    axes[0, 0].set_title("original", loc="left", fontsize=9)
    axes[1, 0].set_title("reconstruction", loc="left", fontsize=9)
    fig.tight_layout()
    return fig


def loss_curves(log: dict[str, np.ndarray]) -> Figure:
    """Each drawn epoch metric (vaepipe.epoch_metrics: loss, recon, kl) per epoch, training and validation, one
    panel each, from train_log.csv's columns (a metric the log lacks has no panel)."""
    drawn = [metric for metric in epoch_metrics.EPOCH_METRICS if metric.drawn and metric.name in log]
    fig, axes = plt.subplots(1, len(drawn), figsize=(13 / 3 * len(drawn), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], drawn, strict=True):
        ax.plot(log["epoch"] + 1, log[metric.name], label="train")
        if metric.val_column in log:  # absent when data.val_size = 0
            ax.plot(log["epoch"] + 1, log[metric.val_column], label="validation")
        ax.set_xlabel("epoch")
        ax.set_title(metric.name)
        ax.legend()
    fig.tight_layout()
    return fig


def project_2d(z: np.ndarray) -> tuple[np.ndarray, str]:
    """The latent points themselves when 2-D, else their first two principal components."""
    if z.shape[1] == 1:
        return np.column_stack([z[:, 0], np.zeros(len(z))]), "z"
    if z.shape[1] == 2:
        return z, "z"
    centred = z - z.mean(axis=0)
    _, _, components = np.linalg.svd(centred, full_matrices=False)
    return centred @ components[:2].T, "principal component"


def latent_scatter(z_means: np.ndarray, labels: np.ndarray, split: str = "validation",
                   class_names: tuple[str, ...] | None = None) -> Figure:
    """Latent means of a split's images coloured by label (a PCA projection when latent_dim > 2), the
    colour bar naming each label's class (data.CLASS_NAMES: digits, or Fashion-MNIST's T-shirt/top...)."""
    points, axis_name = project_2d(z_means)
    fig, ax = plt.subplots(figsize=(7, 6))
    scatter = ax.scatter(points[:, 0], points[:, 1], c=labels, cmap="tab10", s=2, vmin=-0.5, vmax=9.5)
    bar = fig.colorbar(scatter, ax=ax, ticks=range(10), label="class")
    if class_names:
        bar.ax.set_yticklabels(class_names)
    ax.set_xlabel(f"{axis_name} 1")
    ax.set_ylabel(f"{axis_name} 2")
    ax.set_title(f"{split}-set latent means (latent_dim={z_means.shape[1]})")
    fig.tight_layout()
    return fig


def image_grid(images: np.ndarray, rows: int, cols: int, title: str) -> Figure:
    """Images (rows*cols of 784 pixels) tiled into one picture."""
    tiles = images.reshape(rows, cols, 28, 28).transpose(0, 2, 1, 3).reshape(rows * 28, cols * 28)
    fig, ax = plt.subplots(figsize=(cols * 0.6 + 0.5, rows * 0.6 + 0.7))
    ax.imshow(tiles, cmap="gray", vmin=0.0, vmax=1.0)
    ax.axis("off")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def manifold_grid_points(n: int = 20, limit: float = 2.0) -> np.ndarray:
    """A regular n x n grid of 2-D latent points over [-limit, limit]^2, top row = largest z2."""
    axis = np.linspace(-limit, limit, n, dtype=np.float32)
    z1, z2 = np.meshgrid(axis, axis[::-1])
    return np.column_stack([z1.ravel(), z2.ravel()])


def interpolation_points(z_start: np.ndarray, z_end: np.ndarray, steps: int) -> np.ndarray:
    """Linear interpolation between pairs of latent vectors: (pairs * steps, latent_dim), row-major by pair."""
    t = np.linspace(0.0, 1.0, steps, dtype=np.float32)[None, :, None]
    return (z_start[:, None, :] * (1 - t) + z_end[:, None, :] * t).reshape(-1, z_start.shape[1])
