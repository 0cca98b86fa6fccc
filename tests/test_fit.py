"""`from vaepipe import fit`: training on arrays in this process, with no DVC, MLflow or checkpoint; the
notebook example of docs/extending.md runs here exactly as written."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import numpy as np

DOCS = Path(__file__).resolve().parents[1] / "docs" / "extending.md"


def notebook_example() -> str:
    text = DOCS.read_text()
    section = text[text.index("## Train in a notebook"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_notebook_example_trains_in_process_and_touches_no_store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anything written to the working directory would show here
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'must-not-exist.db'}")
    namespace: dict = {}
    exec(compile(notebook_example(), str(DOCS), "exec"), namespace)  # noqa: S102  (the doc's own code)
    history = namespace["vae"].history.history
    assert len(history["val_loss"]) == 2 and all(np.isfinite(history["val_loss"]))
    assert history["loss"][1] < history["loss"][0], "it trains"
    assert namespace["reconstructions"].shape == (8, 784)
    assert sorted(os.listdir(tmp_path)) == [], "no mlflow.db, checkpoints/ or outputs"
    assert "vaepipe.tracking.runs" not in sys.modules or not Path("mlflow.db").exists()


def test_fit_gives_the_train_stage_numbers_for_the_same_params(tmp_path):
    """The same params and arrays, twice: the same weights (fit is the stage's own training, seeded)."""
    from vaepipe import fit
    from vaepipe.config import parse_params

    params = parse_params({"train": {"epochs": 1, "batch_size": 32, "seed": 3, "jit_compile": False}})  # (XLA: compile time)
    x = (np.random.default_rng(1).random((256, 784)) < 0.3).astype(np.float32)
    first, second = fit(params, x), fit(params, x)
    for a, b in zip(first.get_weights(), second.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
