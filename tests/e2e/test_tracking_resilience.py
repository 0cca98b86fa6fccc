"""Tracking that outlives its store: a real `mlflow server` SIGKILLed mid-training and restarted (the run
loses nothing), one that stays down past MLflow's retries (one error line, then `dvc repro` resumes
the same run), and a second clone whose store lacks the train run (evaluate and plot log to a run
linked to it)."""

from __future__ import annotations

import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from pipeline_repo import (
    MlflowServer,
    copy_repo,
    dvc_repro,
    mlflow_runs,
    prepared_copy,
    read_metrics,
    stage_env,
    wait_for,
)

pytestmark = pytest.mark.e2e

EPOCHS = 10  # ~0.5 s each with the small params: the kill lands with epochs still to go
TRAIN_METRICS = ("loss", "recon", "kl", "val_loss", "val_recon", "val_kl", "epoch_time")


def first_epoch_logged(server: MlflowServer) -> str | None:
    """The run id once the run has its first epoch's validation loss, else None."""
    try:
        runs = server.runs()
        if runs and server.history(runs[0]["info"]["run_id"], "val_loss"):
            return runs[0]["info"]["run_id"]
    except OSError:
        pass
    return None


def start_repro(repo: Path, logs: Path, *targets: str, **env: str) -> tuple[subprocess.Popen, Path, Path]:
    out, err = logs / "stdout.txt", logs / "stderr.txt"
    process = subprocess.Popen(["dvc", "repro", *targets], cwd=repo, env=stage_env(**env),
                               stdout=out.open("w"), stderr=err.open("w"))
    return process, out, err


def assert_every_epoch_logged_once(server: MlflowServer, run_id: str) -> None:
    for key in TRAIN_METRICS:
        steps: dict[int, set[float]] = {}
        for metric in server.history(run_id, key):
            steps.setdefault(int(metric["step"]), set()).add(metric["value"])
        assert sorted(steps) == list(range(1, EPOCHS + 1)), (key, sorted(steps))
        if key != "epoch_time":  # a redone epoch computes bit for bit the same losses
            assert all(len(values) == 1 for values in steps.values()), (key, steps)


def test_a_server_killed_mid_training_and_restarted_loses_nothing(baseline, tmp_path):
    server = MlflowServer(tmp_path)
    server.start()
    try:
        repo = prepared_copy(baseline.repo, tmp_path / "repo", {"train": {"epochs": EPOCHS}})  # from train on
        server.wait_healthy()
        process, _, err = start_repro(repo, tmp_path, "train", MLFLOW_TRACKING_URI=server.base)
        try:
            run_id = wait_for(lambda: first_epoch_logged(server) or process.poll() is not None and "exited",
                              timeout=300, interval=0.2, what="the first epoch in the server")
            assert run_id != "exited", err.read_text()[-3000:]
            server.kill()
            killed_at = time.time()
            time.sleep(2.0)  # back within 10 s: the same port and the same store
            server.start()
            assert process.wait(timeout=400) == 0, err.read_text()[-3000:]
        finally:
            if process.poll() is None:
                process.kill()
        server.wait_healthy()
        runs = server.runs()
        assert [(r["info"]["run_id"], r["info"]["status"]) for r in runs] == [(run_id, "FINISHED")]
        assert_every_epoch_logged_once(server, run_id)
        # The kill did land mid-training: some epochs reached the server only after it came back.
        before_kill = [m for m in server.history(run_id, "val_loss") if m["timestamp"] < killed_at * 1000]
        assert 1 <= len(before_kill) < EPOCHS, len(before_kill)
        # Every artifact of the stage: the model summary and the logged, registered model.
        names = {Path(f["path"]).name for f in server.rest("artifacts/list", run_id=run_id).get("files", [])}
        assert "model_summary.txt" in names, names
        versions = server.rest("model-versions/search", filter="name='vaepipe-vae'")["model_versions"]
        assert [v["run_id"] for v in versions] == [run_id]
        assert (repo / "models/mlflow_run_id").read_text().strip() == run_id
    finally:
        server.stop()


def test_a_server_down_past_the_retries_fails_in_one_line_and_repro_resumes_the_same_run(baseline, tmp_path):
    # MLflow's own knob: backoff factor 0 makes its 5 retries immediate, so "past the budget" is now.
    quick_retries = {"MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0"}
    server = MlflowServer(tmp_path)
    server.start()
    try:
        repo = prepared_copy(baseline.repo, tmp_path / "repo", {"train": {"epochs": EPOCHS}})  # from train on
        server.wait_healthy()
        process, _, err = start_repro(repo, tmp_path, "train", MLFLOW_TRACKING_URI=server.base, **quick_retries)
        try:
            run_id = wait_for(lambda: first_epoch_logged(server) or process.poll() is not None and "exited",
                              timeout=300, interval=0.2, what="the first epoch in the server")
            assert run_id != "exited", err.read_text()[-3000:]
            server.kill()
            code = process.wait(timeout=120)
        finally:
            if process.poll() is None:
                process.kill()
        stderr = err.read_text()
        assert code != 0
        errors = [line for line in stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and server.base in errors[0] and run_id in errors[0], stderr[-3000:]
        assert "Traceback" not in stderr, stderr[-3000:]
        assert not (repo / "models/vae.keras").exists()
        assert list((repo / "checkpoints").glob("*/*")), "the checkpoint to resume from is gone"

        server.start()
        server.wait_healthy()
        resumed = subprocess.run(["dvc", "repro", "train"], cwd=repo, capture_output=True, text=True, timeout=400,
                                 env=stage_env(MLFLOW_TRACKING_URI=server.base, **quick_retries))
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert "resuming after epoch" in resumed.stdout + resumed.stderr
        assert (repo / "models/mlflow_run_id").read_text().strip() == run_id
        assert [(r["info"]["run_id"], r["info"]["status"]) for r in server.runs()] == [(run_id, "FINISHED")]
        assert_every_epoch_logged_once(server, run_id)
    finally:
        server.stop()


def run_tags(db: Path, run_id: str) -> dict[str, str]:
    with sqlite3.connect(db) as conn:
        return dict(conn.execute("SELECT key, value FROM tags WHERE run_uuid = ?", (run_id,)).fetchall())


def test_a_clone_without_the_store_logs_evaluate_and_plot_to_a_run_linked_to_the_train_run(quick, tmp_path):
    repo = copy_repo(quick, tmp_path / "repo")  # reproduced: outputs, dvc.lock and one FINISHED run
    assert (result := dvc_repro(repo)).returncode == 0 and "Running stage" not in result.stdout, result.stderr[-3000:]
    [(train_run, _)] = mlflow_runs(repo)
    env = stage_env()
    for command in (["dvc", "remote", "add", "-d", "storage", str(tmp_path / "remote")], ["dvc", "push", "-q"],
                    ["git", "add", "-A"], ["git", "commit", "-qm", "trained"]):
        subprocess.run(command, cwd=repo, env=env, check=True, capture_output=True)
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], env=env, check=True, capture_output=True)
    subprocess.run(["dvc", "pull", "-q"], cwd=clone, env=env, check=True, capture_output=True)
    assert not (clone / "mlflow.db").exists()  # the store did not travel: a fresh one

    result = subprocess.run(["dvc", "repro", "--force", "--single-item", "evaluate", "plot"], cwd=clone, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    said = [line for line in result.stderr.splitlines() if f"train run {train_run} is not in" in line]
    assert len(said) == 2, result.stderr[-3000:]  # one line from each stage

    [(linked, status)] = mlflow_runs(clone)  # evaluate opened it, plot continued it
    assert linked != train_run and status == "FINISHED"
    assert all(linked in line for line in said)
    assert run_tags(clone / "mlflow.db", linked)["vaepipe.train_run_id"] == train_run
    metrics = read_metrics(clone)
    assert "mlflow_run_id" not in metrics  # the linked run is found by its tag, as above
    with sqlite3.connect(clone / "mlflow.db") as conn:
        logged = dict(conn.execute("SELECT key, value FROM latest_metrics WHERE run_uuid = ?", (linked,)).fetchall())
    assert logged["test_loss"] == pytest.approx(metrics["test_loss"])
    assert any((clone / "mlartifacts").rglob("reconstructions.png"))
    assert [run for run, _ in mlflow_runs(repo)] == [train_run]  # the first clone's store is untouched
