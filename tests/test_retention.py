"""Checkpoints of other keys (reliability: nothing lost, nothing misleading): kept beside the running
key's, listed in one line, at most MAX_KEPT of them, the oldest removed first with its RUNNING MLflow run
closed as KILLED and tagged why; an unreachable store loses neither the checkpoint nor the run;
`make clean-checkpoints` removes them all. Real checkpoint directories, a real SQLite MLflow store, the
real entry point in a subprocess. (The resume across a run of another setting, through real stage
runs: tests/e2e/test_other_checkpoints.py.)"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from vaepipe import paths, tracking
from vaepipe.train import retention
from vaepipe.train.retention import MAX_KEPT, keep_other_checkpoints

SRC = Path(__file__).resolve().parents[1] / "src"
PROJECT = SRC.parent
PROVENANCE = {"params": "p-current", "code": "c", "data": "d"}
REASON = f"checkpoint removed: more than {MAX_KEPT} unfinished checkpoints kept"


@pytest.fixture
def repo(tmp_path, monkeypatch, new_mlflow_db) -> Path:
    """A repository root with checkpoints/ and a SQLite store, as the train stage sees them."""
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    new_mlflow_db(tmp_path / "mlflow.db")
    monkeypatch.setattr(paths, "ROOT", tmp_path)
    monkeypatch.setattr(paths, "CHECKPOINTS_DIR", tmp_path / "checkpoints")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    (tmp_path / "checkpoints").mkdir()
    return tmp_path


def running_run() -> str:
    """A run left RUNNING, as a SIGKILLed train leaves it."""
    client = mlflow.MlflowClient(tracking.tracking_uri())
    experiment = client.get_experiment_by_name("retention") or client.get_experiment(client.create_experiment("retention"))
    return client.create_run(experiment.experiment_id).info.run_id


def run_of(run_id: str):
    return mlflow.MlflowClient(tracking.tracking_uri()).get_run(run_id)


def checkpoint(repo: Path, key: str, epochs: int, age_s: float, run_id: str | None = None,
               provenance: dict | None = None) -> Path:
    """A checkpoint directory of `key` as Checkpoint.write leaves it, last written `age_s` seconds ago."""
    directory = repo / "checkpoints" / key
    directory.mkdir()
    if epochs:
        (directory / f"epoch-{epochs:05d}.npz").write_bytes(b"\0" * 1000)
        (directory / "state.json").write_text(json.dumps({
            "epoch": epochs, "weights": f"epoch-{epochs:05d}.npz", "key": key, "logged": epochs,
            "provenance": provenance or {"params": f"p-{key}", "code": "c", "data": "d"},
            "written": time.time() - age_s}))
    if run_id:
        (directory / "mlflow_run_id").write_text(run_id)
    return directory


def kept(repo: Path) -> list[str]:
    return sorted(path.name for path in (repo / "checkpoints").iterdir())


def test_other_keys_checkpoints_are_kept_and_said_in_one_line(repo, capsys):
    current = repo / "checkpoints" / "current"
    checkpoint(repo, "aaaa", 7, age_s=100)
    checkpoint(repo, "bbbb", 1, age_s=10)

    keep_other_checkpoints(current, PROVENANCE)

    assert kept(repo) == ["aaaa", "bbbb"]
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1, out
    assert out[0].startswith("train: keeping 2 unfinished checkpoints of other settings "
                             "(checkpoints/bbbb: 1 epoch, checkpoints/aaaa: 7 epochs; 0.0 MB); ")
    assert out[0].endswith("`make clean-checkpoints` removes them")


def test_beyond_the_bound_the_oldest_go_first_and_a_running_run_is_killed_with_the_reason(repo, capsys):
    oldest_run, finished_run, newer_run = running_run(), running_run(), running_run()
    mlflow.MlflowClient(tracking.tracking_uri()).set_terminated(finished_run, "FINISHED")
    checkpoint(repo, "oldest", 5, age_s=1000, run_id=oldest_run)
    checkpoint(repo, "second", 3, age_s=900, run_id=finished_run)
    newer = [checkpoint(repo, f"newer{n}", 2, age_s=100 - n, run_id=newer_run).name for n in range(MAX_KEPT)]

    keep_other_checkpoints(repo / "checkpoints" / "current", PROVENANCE)

    assert kept(repo) == sorted(newer)
    killed = run_of(oldest_run)
    assert killed.info.status == "KILLED"
    assert killed.data.tags[tracking.KILLED_REASON_TAG] == REASON
    # A run that had ended keeps its status and gets no tag; the kept checkpoints' run is untouched.
    assert run_of(finished_run).info.status == "FINISHED"
    assert tracking.KILLED_REASON_TAG not in run_of(finished_run).data.tags
    assert run_of(newer_run).info.status == "RUNNING"
    out = capsys.readouterr().out.splitlines()
    assert [line.split(" (")[0] for line in out[:2]] == ["train: removed checkpoint checkpoints/oldest",
                                                          "train: removed checkpoint checkpoints/second"]
    assert out[0].endswith(f"more than {MAX_KEPT} unfinished checkpoints of other settings; "
                           f"its MLflow run {oldest_run} marked KILLED")
    assert out[2].startswith(f"train: keeping {MAX_KEPT} unfinished checkpoints of other settings")
    assert len(out) == 3


def test_a_checkpoint_without_a_finished_epoch_is_removed_and_its_run_killed(repo, capsys):
    run_id = running_run()  # train died before its first checkpoint
    checkpoint(repo, "empty", 0, age_s=0, run_id=run_id)

    keep_other_checkpoints(repo / "checkpoints" / "current", PROVENANCE)

    assert kept(repo) == []
    assert run_of(run_id).info.status == "KILLED"
    assert run_of(run_id).data.tags[tracking.KILLED_REASON_TAG] == "checkpoint removed: no finished epoch to resume"
    assert capsys.readouterr().out == ""


def test_a_checkpoint_of_the_same_params_and_other_code_says_why_it_is_not_resumed(repo, capsys):
    checkpoint(repo, "old-code", 2, age_s=5, provenance={**PROVENANCE, "code": "old"})

    keep_other_checkpoints(repo / "checkpoints" / "current", PROVENANCE)

    out = capsys.readouterr().out.splitlines()
    assert out[0] == ("train: not resuming the checkpoint of 2 epochs in checkpoints/old-code: it was written "
                      "with other code; training from scratch")
    assert out[1].startswith("train: keeping 1 unfinished checkpoint of other settings (checkpoints/old-code: 2 epochs;")
    assert kept(repo) == ["old-code"]


def test_a_checkpoint_a_live_train_holds_is_neither_removed_nor_its_run_killed(repo, capsys):
    """Trains of other keys run at the same time (`dvc queue start -j 2`, make tune's jobs, a repro beside
    them) and share checkpoints/: one still in its first epoch, or the oldest beyond the bound, is in use,
    not abandoned. Held as a live train holds it (session.hold_exclusively: its flock)."""
    from vaepipe.train.session import hold_exclusively

    starting_run, oldest_run = running_run(), running_run()
    starting = checkpoint(repo, "starting", 0, age_s=0, run_id=starting_run)  # no finished epoch yet
    oldest = checkpoint(repo, "oldest", 5, age_s=1000, run_id=oldest_run)  # a long run still going
    newer = [checkpoint(repo, f"newer{n}", 2, age_s=100 - n).name for n in range(MAX_KEPT)]
    held = [hold_exclusively(starting), hold_exclusively(oldest)]
    try:
        keep_other_checkpoints(repo / "checkpoints" / "current", PROVENANCE)

        assert kept(repo) == sorted(["oldest", "starting", *newer])
        assert run_of(starting_run).info.status == "RUNNING"
        assert run_of(oldest_run).info.status == "RUNNING"
        out = capsys.readouterr().out.splitlines()
        assert len(out) == 1 and out[0].startswith(f"train: keeping {MAX_KEPT} unfinished checkpoints of other "
                                                   "settings (checkpoints/newer"), out
        assert "oldest" not in out[0] and "starting" not in out[0]  # theirs, not retention's, to keep

        assert retention.clean() == MAX_KEPT  # make clean-checkpoints leaves them too, saying why
        assert kept(repo) == ["oldest", "starting"]
        lines = capsys.readouterr().out.splitlines()
        for name in ("oldest", "starting"):
            assert (f"clean-checkpoints: left checkpoints/{name}: in use by train process {os.getpid()}; "
                    "stop it first to remove it") in lines, lines
        assert run_of(oldest_run).info.status == "RUNNING"
    finally:
        for handle in held:
            handle.close()

    # Their trains gone (the locks released), the usual rules apply again.
    keep_other_checkpoints(repo / "checkpoints" / "current", PROVENANCE)
    assert kept(repo) == ["oldest"]
    assert run_of(starting_run).info.status == "KILLED"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_unreachable_store_keeps_the_checkpoint_and_does_not_fail(repo, monkeypatch, capsys):
    for n in range(MAX_KEPT + 1):
        checkpoint(repo, f"k{n}", 2, age_s=100 - n, run_id=f"{n:032x}")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")  # nothing listens there

    keep_other_checkpoints(repo / "checkpoints" / "current", PROVENANCE)

    assert kept(repo) == [f"k{n}" for n in range(MAX_KEPT + 1)]  # nothing lost: the run stays closable
    captured = capsys.readouterr()
    warnings = captured.err.splitlines()
    assert len(warnings) == 1 and warnings[0].startswith(f"warning: could not close MLflow run {0:032x} of "
                                                         "checkpoint checkpoints/k0 as KILLED (MLflow tracking server")
    assert warnings[0].endswith("kept it; the next train or `make clean-checkpoints` tries again")
    assert captured.out.startswith(f"train: keeping {MAX_KEPT + 1} unfinished checkpoints")


def test_clean_checkpoints_removes_every_checkpoint_and_kills_their_running_runs(repo):
    killed, finished = running_run(), running_run()
    mlflow.MlflowClient(tracking.tracking_uri()).set_terminated(finished, "FINISHED")
    checkpoint(repo, "aaaa", 7, age_s=50, run_id=killed)
    checkpoint(repo, "bbbb", 2, age_s=40, run_id=finished)
    checkpoint(repo, f"cccc{retention.CORRUPT}20261202T000000Z", 1, age_s=30)  # moved aside as unreadable

    env = {**os.environ, "PYTHONPATH": str(SRC)}
    result = subprocess.run([sys.executable, "-m", "vaepipe.train.retention", "clean"], cwd=repo, env=env,
                            capture_output=True, text=True, timeout=120)

    assert result.returncode == 0, result.stderr
    assert not (repo / "checkpoints").exists()
    lines = result.stdout.splitlines()
    assert [line.split(" (")[0] for line in lines] == [
        "clean-checkpoints: removed checkpoint checkpoints/aaaa", "clean-checkpoints: removed checkpoint checkpoints/bbbb",
        f"clean-checkpoints: removed checkpoint checkpoints/cccc{retention.CORRUPT}20261202T000000Z",
        "clean-checkpoints: removed 3 checkpoints"]
    assert lines[0].endswith(f"; its MLflow run {killed} marked KILLED")
    assert run_of(killed).info.status == "KILLED"
    assert run_of(killed).data.tags[tracking.KILLED_REASON_TAG] == "checkpoint removed by `make clean-checkpoints`"
    assert run_of(finished).info.status == "FINISHED"

    again = subprocess.run([sys.executable, "-m", "vaepipe.train.retention", "clean"], cwd=repo, env=env,
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and again.stdout == "clean-checkpoints: no checkpoints in checkpoints\n"


def test_make_clean_checkpoints_runs_the_entry_point():
    result = subprocess.run(["make", "-n", "clean-checkpoints"], cwd=PROJECT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "python -m vaepipe.train.retention clean" in result.stdout.splitlines()
    phony = next(line for line in (PROJECT / "Makefile").read_text().splitlines() if line.startswith(".PHONY:"))
    assert "clean-checkpoints" in phony.split()
