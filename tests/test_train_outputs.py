"""Train's outputs change together: the model, its epoch log, its validation summary and its MLflow run id
are one set. A kill at any step of writing them leaves each file either the previous run's or the new
run's, and a run id only beside the model it belongs to; evaluate refuses a model without one."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vaepipe import paths, tracking
from vaepipe.config import ModelParams, Params, TrainParams
from vaepipe.errors import CheckpointBusy, TrackingError
from vaepipe.model import build_vae
from vaepipe.train import session

OLD_RUN, NEW_RUN = "a" * 32, "b" * 32
OUTPUTS = ("MODEL_FILE", "TRAIN_LOG", "VAL_METRICS_FILE", "RUN_ID_FILE")


class Killed(BaseException):
    """Stands in for a SIGKILL between two renames: nothing after it runs."""


@pytest.fixture
def workspace(tmp_path, monkeypatch) -> Path:
    monkeypatch.setattr(paths, "ROOT", tmp_path)
    for name, relative in zip(OUTPUTS, ("models/vae.keras", "train_log.csv", "val_metrics.json", "models/mlflow_run_id"),
                              strict=True):
        monkeypatch.setattr(paths, name, tmp_path / relative)
    (tmp_path / "models").mkdir()
    for name, content in zip(OUTPUTS, (b"old model", b"epoch,loss\n0,1.0\n", b'{"val_loss": 1.0}\n',
                                       (OLD_RUN + "\n").encode()), strict=True):
        getattr(paths, name).write_bytes(content)
    return tmp_path


def previous() -> dict[str, bytes]:
    return {name: getattr(paths, name).read_bytes() for name in OUTPUTS if getattr(paths, name).exists()}


@pytest.mark.parametrize("killed_at", range(len(OUTPUTS) + 1))
def test_a_kill_at_any_rename_leaves_no_run_id_beside_another_runs_model(workspace, tmp_path, monkeypatch, killed_at):
    old = previous()
    epoch_log = tmp_path / "epochs.csv"
    epoch_log.write_text("epoch,loss,val_loss,val_recon,val_kl\n0,2.0,2.5,2.0,0.5\n1,1.5,2.0,1.6,0.4\n")
    vae = build_vae(ModelParams(latent_dim=2), TrainParams(beta=0.5, seed=0), binarize="none")
    real_replace, renames = os.replace, []

    def replace(source, destination):
        if len(renames) == killed_at:
            raise Killed
        renames.append(Path(destination))
        real_replace(source, destination)

    monkeypatch.setattr(paths.os, "replace", replace)
    params = Params.model_validate({"train": {"epochs": 2}})
    try:
        session.write_outputs(vae, epoch_log, NEW_RUN, params)
    except Killed:
        pass
    monkeypatch.setattr(paths.os, "replace", real_replace)
    now = previous()
    new = {name for name in OUTPUTS if name in now and now[name] != old[name]}
    assert new == {name for name in OUTPUTS if getattr(paths, name) in renames}  # each file old or new, not torn
    if paths.RUN_ID_FILE.exists():
        assert tracking.read_run_id(paths.RUN_ID_FILE) in (OLD_RUN, NEW_RUN)
        same_run = tracking.read_run_id(paths.RUN_ID_FILE) == NEW_RUN
        assert new == (set(OUTPUTS) if same_run else set()), "a run id names exactly its own set"
    else:
        with pytest.raises(TrackingError, match="no MLflow run id .train has not finished writing its outputs"):
            tracking.read_run_id(paths.RUN_ID_FILE)
    if killed_at == len(OUTPUTS):
        assert json.loads(paths.VAL_METRICS_FILE.read_text()) == {
            "val_loss": 2.0, "best_val_loss": 2.0, "val_recon": 1.6, "val_kl": 0.4, "epochs": 2, "pruned": False}


@pytest.mark.parametrize("content", ["", "\n", "not-a-run", "a" * 31])
def test_an_empty_or_malformed_run_id_is_an_error_not_a_new_run(tmp_path, content):
    (tmp_path / "mlflow_run_id").write_text(content)
    with pytest.raises(TrackingError, match="is not an MLflow run id"):
        tracking.read_run_id(tmp_path / "mlflow_run_id")


def test_a_second_train_on_a_held_checkpoint_stops_in_one_line_naming_the_holder(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "ROOT", tmp_path)
    directory = tmp_path / "checkpoints" / "key"
    directory.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time\n"
        f"handle = open({str(directory / session.LOCK_FILE)!r}, 'a+')\n"
        "fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
        "handle.write(str(os.getpid())); handle.flush(); print('held', flush=True); time.sleep(60)\n")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(CheckpointBusy) as error:
            session.hold_exclusively(directory)
        message = str(error.value)
        assert f"in use by train process {holder.pid}" in message and "checkpoints/key" in message
        assert "\n" not in message
    finally:
        holder.kill()
        holder.wait()
    handle = session.hold_exclusively(directory)  # the holder is gone: the kernel released its lock
    assert (directory / session.LOCK_FILE).read_text() == str(os.getpid())
    with pytest.raises(BlockingIOError):  # and this process now holds it
        fcntl.flock(open(directory / session.LOCK_FILE), fcntl.LOCK_EX | fcntl.LOCK_NB)
    handle.close()
