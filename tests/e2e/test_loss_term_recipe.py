"""docs/extending.md's loss-term recipe carried out on a copy of the package (three files: objectives.py,
config.py, epoch_metrics.py), then a real `dvc repro` with the term weighted: the term is in the loss, per
epoch in train_log.csv and MLflow, in val_metrics.json and allowed as a `make tune` objective, measured by
evaluate and shown by `make compare`. Reuses the session's `quick` repo (its prepared data)."""

from __future__ import annotations

import csv
import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from pipeline_repo import PROJECT, VENV_BIN, copy_repo, dvc_repro, metric_history, read_metrics, stage_env

pytestmark = pytest.mark.e2e

DOCS = PROJECT / "docs" / "extending.md"
WEIGHT = 0.05


def recipe_blocks() -> list[str]:
    section = DOCS.read_text().split("## A loss term (3 files)", 1)[1].split("\n## ", 1)[0]
    return [re.sub(r"^   ", "", block, flags=re.M) for block in re.findall(r"```python\n(.*?)   ```", section, re.S)]


def changed_files(copy: Path, original: Path) -> list[str]:
    return sorted(path.relative_to(copy).as_posix() for path in copy.rglob("*.py")
                  if path.read_bytes() != (original / path.relative_to(copy)).read_bytes())


def apply_recipe(package: Path) -> None:
    term, weight, metric = recipe_blocks()
    (package / "objectives.py").write_text((package / "objectives.py").read_text() + "\n\n" + term)
    config = (package / "config.py").read_text()
    config, added = re.subn(r"(\n    iw_k: int = Field\([^\n]*\n)", lambda m: m.group(1) + weight, config, count=1)
    assert added == 1, "TrainParams.iw_k, after which the recipe's field goes, was not found"
    (package / "config.py").write_text(config)
    (package / "epoch_metrics.py").write_text((package / "epoch_metrics.py").read_text() + "\n\n" + metric)


def test_the_documented_loss_term_recipe_trains_logs_searches_and_compares_the_new_term(quick, tmp_path):
    repo = copy_repo(quick, tmp_path / "repo")
    apply_recipe(repo / "src" / "vaepipe")
    assert changed_files(repo / "src", PROJECT / "src") == ["vaepipe/config.py", "vaepipe/epoch_metrics.py",
                                                            "vaepipe/objectives.py"]
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["z_l2_weight"] = WEIGHT
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    result = dvc_repro(repo, "evaluate", timeout=600)  # the code and a train param changed: train reruns
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    with (repo / "train_log.csv").open() as handle:
        log = list(csv.DictReader(handle))
    assert {"z_l2", "val_z_l2"} <= set(log[0]), list(log[0])
    beta = params["train"]["beta"]
    for row in log:  # per-example means: the loss's epoch mean is the weighted sum of the terms' means
        expected = float(row["recon"]) + beta * float(row["kl"]) + WEIGHT * float(row["z_l2"])
        assert float(row["loss"]) == pytest.approx(expected, rel=1e-4), row
    validation = json.loads((repo / "val_metrics.json").read_text())
    assert validation["val_z_l2"] == pytest.approx(float(log[-1]["val_z_l2"]))
    tested = read_metrics(repo)
    assert tested["test_z_l2"] > 0
    assert tested["test_loss"] == pytest.approx(tested["test_recon"] + tested["test_kl"] + tested["test_z_l2"])
    run_id = (repo / "models" / "mlflow_run_id").read_text().strip()
    assert {"z_l2", "val_z_l2", "test_z_l2"} <= set(metric_history(repo, run_id))

    # The copy's package, as `make tune` and `make compare` run it: val_z_l2 is an objective, test_z_l2 a column.
    check = ("from pathlib import Path; from vaepipe.tune.search import parse_search; "
             "search = parse_search({'study': 's', 'space': {'train.learning_rate': {'float': [0.0001, 0.01]}}, "
             "'objective': {'val_z_l2': 'minimize'}, 'trials': 2}, Path('search.yaml')); print(search.metrics)")
    searched = subprocess.run([str(VENV_BIN / "python"), "-c", check], cwd=repo, env=stage_env(PYTHONPATH="src"),
                              capture_output=True, text=True, timeout=120)
    assert searched.returncode == 0 and searched.stdout.strip() == "['val_z_l2']", searched.stderr[-2000:]
    compared = subprocess.run([str(VENV_BIN / "python"), "-m", "vaepipe.compare", "--out", "reports",
                               "--sort", "test_z_l2"], cwd=repo, env=stage_env(PYTHONPATH="src"),
                              capture_output=True, text=True, timeout=300)
    assert compared.returncode == 0, compared.stderr[-3000:]
    with (repo / "reports" / "compare.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    (row,) = [row for row in rows if row["test_z_l2"]]  # the quick run, also in the copied store, has none
    assert len(rows) == 2 and float(row["test_z_l2"]) == pytest.approx(tested["test_z_l2"], rel=1e-3)
