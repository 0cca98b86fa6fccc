"""Data-parallel training (train.distribute: multi_worker, mirrored), the worker launcher, and a DVC remote
(pushed from a copy of the session's reproduced `quick` repo).

All runs are real processes on CPU: two TF workers on localhost ports, or one process with two logical
CPU devices. Each is compared with a single-process run of the same params (same global batch, seed,
data order and initial weights).

Tolerance: the only difference left is the random draws (z samples). Each replica draws its own noise,
which one device cannot reproduce, so losses agree statistically, not bit for bit. NOISE_STD is the
spread of the single-process path's per-epoch losses when only those draws change (6 noise seeds,
same params as here, measured with the seed-generator states' derivation offset; the data order and
the initial weights fixed). Allowed: 4 x that standard deviation per epoch, i.e. ~2.8 standard
deviations of the difference of two independent runs. Measured: the 2-replica runs differ from the
single-process run by 0.10 and 0.30 (loss) and 0.05 and 0.05 (val_loss) in epochs 1 and 2.
A wrong split would show up as more: e.g. at these settings the loss falls by ~4 nats in epoch 2,
and an epoch with twice or half the steps moves it by several nats more or less.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import psutil
import pytest
from pipeline_repo import PROJECT, VENV_BIN, copy_repo, epoch_rows, make_repo, mlflow_runs, run_stage, stage_env, wait_for

pytestmark = pytest.mark.e2e

# Small: 512 images, 8 global batches of 64 per epoch (32 per replica), 2 epochs.
DIST_PARAMS = {"data": {"limit": 512, "val_size": 128}, "train": {"epochs": 2, "batch_size": 64, "steps_per_execution": 4}}
NOISE_STD = {"loss": [0.046, 0.479], "val_loss": [0.191, 0.779]}  # see the module docstring
LAUNCHER = PROJECT / "scripts" / "launch_workers.py"
# The opt-in without which the launcher starts no worker (their ports listen on all interfaces).
LISTEN_ANYWHERE = {"VAEPIPE_WORKERS_LISTEN_ANYWHERE": "1"}


def read_log(repo: Path) -> list[dict[str, float]]:
    with (repo / "train_log.csv").open() as handle:
        return [{key: float(value) for key, value in row.items()} for row in csv.DictReader(handle)]


def assert_matches_single_process(log: list[dict], reference: list[dict]) -> None:
    assert [row["epoch"] for row in log] == [row["epoch"] for row in reference]
    assert set(log[0]) == set(reference[0]), "the distributed log must have the single-process columns"
    for key, stds in NOISE_STD.items():
        for epoch, std in enumerate(stds):
            diff = abs(log[epoch][key] - reference[epoch][key])
            assert diff <= 4 * std, f"{key} epoch {epoch + 1}: {log[epoch][key]} vs {reference[epoch][key]}"


def dvc(repo: Path, *args: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["dvc", *args], cwd=repo, env=stage_env(**env), capture_output=True, text=True,
                          timeout=timeout)


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, env=stage_env(), capture_output=True, text=True,
                          check=True).stdout


def tree_state(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under root (but .git) with its size and mtime: any write shows up."""
    return {str(path.relative_to(root)): (path.stat().st_size, path.stat().st_mtime_ns)
            for path in root.rglob("*") if path.is_file() and ".git" not in path.relative_to(root).parts}


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> Path:
    """The pipeline up to train, single process (train.distribute: none), by `dvc repro train`: the
    train_log.csv the distributed runs are compared with (evaluate and plot add nothing to it)."""
    repo = make_repo(tmp_path_factory.mktemp("single") / "repo", DIST_PARAMS)
    result = dvc(repo, "repro", "train")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return repo


def test_multi_worker_matches_single_process_and_only_the_chief_writes(single, tmp_path):
    """Two workers through the launcher. The chief runs in repo A; worker 1 in B, a copy of A (as on a
    second host without a shared disk): B must be untouched, A must hold every output and one run."""
    chief_repo = make_repo(tmp_path / "a", {**DIST_PARAMS, "train": {**DIST_PARAMS["train"],
                                                                     "distribute": "multi_worker"}})
    assert run_stage(chief_repo, "prepare").returncode == 0
    worker_repo = tmp_path / "b"
    shutil.copytree(chief_repo, worker_repo)
    before = tree_state(worker_repo)
    # Each worker enters the repo of its TF_CONFIG task index, then runs the train stage there.
    enter = ("import json, os, runpy, sys; index = json.loads(os.environ['TF_CONFIG'])['task']['index']; "
             "os.chdir(sys.argv[1 + index]); sys.path.insert(0, os.path.abspath('src')); sys.argv = ['stages/train.py']; "
             "runpy.run_path('stages/train.py', run_name='__main__')")
    started = time.monotonic()
    result = subprocess.run([str(VENV_BIN / "python"), str(LAUNCHER), "--workers", "2", "--",
                             str(VENV_BIN / "python"), "-c", enter, str(chief_repo), str(worker_repo)],
                            cwd=chief_repo, env=stage_env(PYTHONDONTWRITEBYTECODE="1", **LISTEN_ANYWHERE),
                            capture_output=True, text=True, timeout=300)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "worker 1 pid" in result.stderr

    log = read_log(chief_repo)
    assert_matches_single_process(log, read_log(single))
    print(f"\nmulti_worker: {elapsed:.1f} s for the launcher; epoch_time {[round(r['epoch_time'], 2) for r in log]}"
          f" vs single {[round(r['epoch_time'], 2) for r in read_log(single)]}")
    assert (chief_repo / "models" / "vae.keras").exists() and (chief_repo / "models" / "mlflow_run_id").exists()
    assert [status for _, status in mlflow_runs(chief_repo)] == ["FINISHED"]
    assert not any((chief_repo / "checkpoints").iterdir()), "finished: no checkpoint left"
    assert tree_state(worker_repo) == before, "worker 1 wrote into its repository"
    assert not (worker_repo / "mlflow.db").exists()


def test_mirrored_on_two_logical_cpus_matches_single_process(single, tmp_path):
    repo = make_repo(tmp_path / "repo", {**DIST_PARAMS, "train": {**DIST_PARAMS["train"], "distribute": "mirrored"}})
    result = dvc(repo, "repro", "train", VAEPIPE_LOGICAL_CPUS="2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "mirrored over 2 replicas" in result.stdout + result.stderr
    # Its progress: one plain line per epoch, counting the epoch's 6 global batches.
    assert re.findall(r"^epoch (\d)/2: 6/6 batches in ", result.stdout + result.stderr, re.M) == ["1", "2"]
    assert_matches_single_process(read_log(repo), read_log(single))
    assert [status for _, status in mlflow_runs(repo)] == ["FINISHED"]
    assert "didn't change" in dvc(repo, "repro", "train").stdout


def test_a_killed_worker_fails_the_run_fast_and_the_rerun_resumes(tmp_path):
    """`dvc repro` with multi_worker (the train stage starts the launcher); SIGKILL worker 1 during
    epoch 2: the stage must fail within 60 s naming the worker; the next `dvc repro` resumes."""
    params = {"data": {"limit": 512, "val_size": 128}, "train": {"epochs": 3, "batch_size": 16, "steps_per_execution": 4,
                                                "distribute": "multi_worker"}}
    repo = make_repo(tmp_path / "repo", params)
    process = subprocess.Popen(["dvc", "repro", "train"], cwd=repo, env=stage_env(**LISTEN_ANYWHERE), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(process.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        pid = int(wait_for(lambda: next((m.group(1) for line in list(lines)
                                         if (m := re.search(r"launch: worker 1 pid (\d+)", line))), None),
                           timeout=60, what="worker 1's pid"))
        logs = lambda: list((repo / "checkpoints").glob("*/train_log.csv"))  # noqa: E731
        wait_for(lambda: logs() and epoch_rows(logs()[0]) >= 1, timeout=180, what="epoch 1")
        time.sleep(0.3)  # into epoch 2
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        code = process.wait(timeout=60)
        elapsed = time.monotonic() - killed
    finally:
        if process.poll() is None:
            process.kill()
    reader.join(timeout=5)
    output = "".join(lines)
    assert code != 0, output[-3000:]
    assert f"worker 1 (pid {pid}) died with killed by SIGKILL" in output, output[-3000:]
    assert elapsed < 60
    print(f"\nkilled worker 1: dvc repro exited {code} after {elapsed:.1f} s")
    assert not (repo / "models" / "vae.keras").exists()
    assert epoch_rows(logs()[0]) >= 1, "the checkpoint of the finished epoch is kept"
    assert [status for _, status in mlflow_runs(repo)] == ["FAILED"], "the launcher closes the stopped chief's run"

    result = dvc(repo, "repro", "train", **LISTEN_ANYWHERE)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert re.search(r"resuming after epoch [12] of 3", result.stdout + result.stderr)
    assert [int(row["epoch"]) for row in read_log(repo)] == [0, 1, 2]
    assert [status for _, status in mlflow_runs(repo)] == ["FINISHED"], "the interrupted run is continued"


def test_the_launcher_starts_no_worker_listening_on_all_interfaces_unless_told(tmp_path):
    """Without VAEPIPE_WORKERS_LISTEN_ANYWHERE=1: the train stage and the script refuse in one line naming
    the variable and why, exit code 2, no worker started; with it, one line says what listens where."""
    repo = make_repo(tmp_path / "repo", {"train": {"distribute": "multi_worker"}})
    marker = tmp_path / "worker-ran"
    command = ["--", str(VENV_BIN / "python"), "-c", f"open({str(marker)!r}, 'a').write('ran')"]
    for value in (None, "0", "yes"):
        extra = {} if value is None else {"VAEPIPE_WORKERS_LISTEN_ANYWHERE": value}
        stage = run_stage(repo, "train", **extra)
        script = subprocess.run([str(VENV_BIN / "python"), str(LAUNCHER), "-n", "2", *command], cwd=repo,
                                env=stage_env(PYTHONPATH="src", **extra), capture_output=True, text=True, timeout=60)
        for result in (stage, script):
            assert result.returncode == 2, result.stderr[-3000:]
            lines = result.stderr.strip().splitlines()
            assert lines[-1].startswith("error: not starting multi_worker workers: their gRPC ports would listen "
                                        "on all network interfaces, unauthenticated"), result.stderr[-3000:]
            assert "set VAEPIPE_WORKERS_LISTEN_ANYWHERE=1 to start them anyway" in lines[-1]
            assert (f"(it is {value!r})" in lines[-1]) == (value is not None), lines[-1]
            assert "Traceback" not in result.stderr and "launch: worker" not in result.stderr
        assert not marker.exists(), "a worker was started"
    allowed = subprocess.run([str(VENV_BIN / "python"), str(LAUNCHER), "-n", "2", *command], cwd=repo,
                             env=stage_env(PYTHONPATH="src", **LISTEN_ANYWHERE), capture_output=True, text=True,
                             timeout=60)
    assert allowed.returncode == 0, allowed.stderr[-3000:]
    said = [line for line in allowed.stderr.splitlines() if "listen on all network interfaces" in line]
    assert len(said) == 1 and said[0].startswith("launch: VAEPIPE_WORKERS_LISTEN_ANYWHERE=1: "), allowed.stderr
    assert marker.read_text() == "ranran", "both workers ran"


def gone(pid: int) -> bool:
    """The process has exited (a zombie counts: whoever adopted it has not reaped it yet)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_workers_die_with_a_sigkilled_launcher(tmp_path):
    """The train stage as launcher (as `dvc repro` runs it), SIGKILLed in epoch 2 of 30: both workers must
    be gone within 10 s (the kernel's parent-death signal), and nothing written in the repo afterwards."""
    params = {"data": {"limit": 512, "val_size": 128},
              "train": {"epochs": 30, "batch_size": 16, "steps_per_execution": 4, "distribute": "multi_worker"}}
    repo = make_repo(tmp_path / "repo", params)
    assert run_stage(repo, "prepare").returncode == 0
    launcher = subprocess.Popen([str(VENV_BIN / "python"), "stages/train.py"], cwd=repo,
                                env=stage_env(PYTHONPATH="src", **LISTEN_ANYWHERE), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(launcher.stdout.readline, "")), daemon=True)
    reader.start()
    pids: list[int] = []
    try:
        def started() -> list[int] | None:
            found = [int(pid) for pid in re.findall(r"launch: worker \d pid (\d+)", "".join(lines))]
            return found if len(found) == 2 else None

        pids = wait_for(started, timeout=60, what="both workers' pids")
        logs = lambda: list((repo / "checkpoints").glob("*/train_log.csv"))  # noqa: E731
        wait_for(lambda: logs() and epoch_rows(logs()[0]) >= 1, timeout=180, what="epoch 1")
        assert not any(gone(pid) for pid in pids), "both workers are training"
        launcher.kill()
        killed = time.monotonic()
        launcher.wait(timeout=30)
        wait_for(lambda: all(gone(pid) for pid in pids), timeout=10, interval=0.1,
                 what=f"workers {pids} to die with their launcher")
        print(f"\nworkers gone {time.monotonic() - killed:.2f} s after the launcher's SIGKILL")
        after = tree_state(repo)
        time.sleep(3)  # a chief still running would write the next epoch's checkpoint and log row by then
        assert tree_state(repo) == after, "something wrote into the repo after the launcher died"
        assert not (repo / "models" / "vae.keras").exists()
    finally:
        for pid in pids:  # only if the test failed: the workers this test started
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)
    reader.join(timeout=5)


def test_a_fresh_clone_pulls_from_the_dvc_remote_and_has_nothing_to_rerun(quick, tmp_path):
    repo = copy_repo(quick, tmp_path / "repo")  # the whole pipeline reproduced (the session's quick repo)
    remote = tmp_path / "remote"
    assert dvc(repo, "remote", "add", "-d", "storage", str(remote)).returncode == 0
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "pipeline outputs and the remote")
    pushed = dvc(repo, "push")
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr
    assert any(remote.rglob("*")), "nothing was pushed"

    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], env=stage_env(), check=True)
    assert not (clone / "models" / "vae.keras").exists()
    pulled = dvc(clone, "pull")
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    assert (clone / "models" / "vae.keras").read_bytes() == (repo / "models" / "vae.keras").read_bytes()
    assert (clone / "data" / "prepared" / "train.npz").exists()

    status = dvc(clone, "status")
    assert status.returncode == 0 and "up to date" in status.stdout, status.stdout
    repro = dvc(clone, "repro")
    assert repro.returncode == 0, repro.stdout + repro.stderr
    assert "Running stage" not in repro.stdout, repro.stdout
    assert not mlflow_runs(clone), "nothing trained in the clone"
