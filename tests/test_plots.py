"""The plot stage's figures at the smallest validation split the schema allows (data.val_size: 1)."""

import numpy as np
import pytest

from vaepipe import paths, plotting
from vaepipe.config import ModelParams, TrainParams
from vaepipe.data import Split
from vaepipe.model import build_vae


@pytest.mark.parametrize("n_images", [1, 2])
def test_every_figure_is_drawn_from_a_split_of_one_or_two_images(tmp_path, monkeypatch, n_images):
    monkeypatch.setattr(paths, "PLOTS_DIR", tmp_path / "plots")
    rng = np.random.default_rng(0)
    images = Split(rng.integers(0, 256, (n_images, 784), dtype=np.uint8), np.arange(n_images) % 10)
    x = images.images.astype(np.float32) / 255
    log = {name: np.array([2.0, 1.0]) for name in ("epoch", "loss", "recon", "kl", "val_loss", "val_recon", "val_kl")}
    vae = build_vae(ModelParams(), TrainParams(beta=0.5, seed=1), binarize="none")

    written = plotting.draw_all(vae, images, x, log, "validation")

    assert sorted(p.name for p in written) == ["interpolation.png", "latent_space.png", "loss_curves.png",
                                               "manifold.png", "prior_samples.png", "reconstructions.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in written)
