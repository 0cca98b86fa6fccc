"""Fault injection with real processes and real signals: train is interrupted by SIGINT (Ctrl-C to the
whole `dvc repro` process group), SIGTERM or SIGKILL (to the train process) at a random point after
epoch 2; a second `dvc repro` must resume and end exactly where an uninterrupted run of the same params
ends: the same saved model, weights and optimizer state bit for bit, and the same per-epoch numbers.
Each way of training is stopped: per-step without XLA, the default fast path and the cosine schedule.
A stopped stage says which stage stopped and what the next `dvc repro` does."""

from __future__ import annotations

import csv
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import yaml
from pipeline_repo import (
    SIGNAL_GATE,
    SMALL_PARAMS,
    copy_repo,
    dvc_repro,
    epoch_rows,
    make_repo,
    merge,
    metric_history,
    mlflow_runs,
    model_weights,
    prepared_copy,
    run_stage,
    stage_env,
    wait_for,
    write_params,
)

from vaepipe import paths

pytestmark = pytest.mark.e2e

# Overrides of the small params. per-step: the small params themselves (one batch per call, no XLA, 6
# epochs), so its reference is the session's baseline run. fast-path: the default speed settings (stacks
# of 100 batches in one XLA-compiled call), so resuming must restore the state the stacked loop draws
# from. cosine: the learning rate depends on the step count, which the resumed optimizer must restore.
# The signal lands in the first half of the epochs (see below), and the gate holds the last epoch until
# it has: per-step epochs of these 2000 images take about 0.3 s, fast-path ones about 0.03 s (one input
# iterator for the whole run, bench/NOTES.md run 34).
VARIANTS = {
    "per-step": {},
    "fast-path": {"train": {"steps_per_execution": 100, "jit_compile": True, "epochs": 40}},
    "cosine": {"train": {"lr_schedule": "cosine", "epochs": 10}},
}
# Every variant and every signal, each signal handled by the stage (SIGINT to dvc's group, SIGTERM to train)
# and SIGKILL, not the whole 3 x 3 product (about 50 s a case): what resume restores (the random state, the
# schedule's step, the optimizer) does not depend on the signal, and a handled one and SIGKILL both resume
# from the last epoch's checkpoint. The fast path (the defaults' XLA, stacked steps) under both kinds.
INTERRUPTIONS = [("fast-path", signal.SIGINT), ("fast-path", signal.SIGKILL), ("per-step", signal.SIGKILL),
                 ("cosine", signal.SIGTERM)]


def train_process(repo: Path) -> psutil.Process | None:
    for proc in psutil.process_iter(["cmdline", "cwd"]):
        try:
            if proc.info["cwd"] == str(repo) and "stages/train.py" in (proc.info["cmdline"] or []):
                return proc
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return None


def checkpointed_epochs(repo: Path) -> int:
    """The epoch count in the checkpoint's state.json (0 before the first; it is renamed into place whole)."""
    for state in (repo / "checkpoints").glob("*/state.json"):
        try:
            return json.loads(state.read_text())["epoch"]
        except (OSError, ValueError, KeyError):
            return 0
    return 0


def checkpoint_log(repo: Path) -> Path | None:
    logs = list((repo / "checkpoints").glob("*/train_log.csv"))
    return logs[0] if logs else None


@pytest.mark.parametrize("variant,signum", INTERRUPTIONS, ids=[f"{v}-{s.name}" for v, s in INTERRUPTIONS])
def test_interrupted_training_resumes_to_the_same_result(baseline, reference_run, tmp_path, variant, signum):
    overrides = VARIANTS[variant]
    reference = reference_run(variant, overrides)  # the same params, never interrupted
    epochs = merge(SMALL_PARAMS, overrides)["train"]["epochs"]
    # As the reference started: the baseline's prepared data, up to date, so `dvc repro` starts at train.
    repo = prepared_copy(baseline.repo, tmp_path / "repo", overrides)
    # The gate (programs/signal_gate.py, this repo's sitecustomize): the last epoch waits for the signal,
    # so however loaded the machine, training is still going when the signal lands. Inert in the rerun.
    shutil.copy2(SIGNAL_GATE, repo / "src" / "sitecustomize.py")
    gate = tmp_path / "gate"
    rng = random.Random()
    # A random point in the first half of training, after epoch 2: a random number of checkpointed
    # epochs, then a random part of an epoch (at most 0.1 s: fast-path epochs take about 0.03 s). Counted
    # in epochs, not seconds, so it lands mid-training however fast the machine trains. (Waiting for the
    # log's rows instead raced the checkpoint written just after them: under load a kill could land first.)
    kill_after, delay = rng.randint(2, epochs // 2), rng.uniform(0.0, 0.1)
    log_file = (tmp_path / "first.log").open("w")
    dvc = subprocess.Popen(["dvc", "repro", "train"], cwd=repo, env=stage_env(VAEPIPE_TEST_SIGNAL_GATE=str(gate)),
                           stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        trainer = wait_for(lambda: train_process(repo), timeout=300, what="the train process")
        wait_for(lambda: checkpointed_epochs(repo) >= kill_after, timeout=300, what=f"epoch {kill_after} of train")
        time.sleep(delay)
        epochs_before = epoch_rows(checkpoint_log(repo))
        if signum == signal.SIGINT:
            os.killpg(dvc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        else:
            trainer.send_signal(signum)
        trainer.wait(timeout=120)  # (not our child: psutil cannot tell its exit code)
        dvc.wait(timeout=120)
    finally:
        if dvc.poll() is None:
            os.killpg(dvc.pid, signal.SIGKILL)
            dvc.wait()
        log_file.close()
    first_output = (tmp_path / "first.log").read_text()
    where = "at the gate before the last epoch" if gate.exists() else "mid-training"
    context = (f"{variant}: signal {signum.name} {delay:.2f}s past epoch {kill_after} ({epochs_before} epochs logged, "
               f"landed {where})\n{first_output[-3000:]}")
    assert epochs_before < epochs, "training ended before the signal: " + context
    assert dvc.returncode != 0, context
    # dvc reports the stage's exit code: 128 + signal for the handled ones, -9 for SIGKILL.
    codes = re.findall(r"stages/train.py, exited with (-?\d+)", first_output)
    expected_code = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGKILL: -9}[signum]
    assert codes == [str(expected_code)], context
    assert not (repo / "models" / "vae.keras").exists(), "a model was written by an interrupted train"

    runs = mlflow_runs(repo)
    assert len(runs) == 1, runs
    assert runs[0][1] == ("RUNNING" if signum == signal.SIGKILL else "KILLED"), runs
    state = json.loads(next((repo / "checkpoints").glob("*/state.json")).read_text())
    assert state["epoch"] >= 2, state

    second = dvc_repro(repo, "train")  # (as far as the reference run went: train, whose outputs are compared)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert f"resuming after epoch {state['epoch']} of {epochs}" in second.stdout + second.stderr

    # The same result as the uninterrupted run: the random state is restored, so exactly. (A resumed
    # XLA-compiled run loads its programs from the persistent cache the earlier runs filled.)
    if merge(SMALL_PARAMS, overrides)["train"]["jit_compile"] is True:
        assert list(paths.xla_cache_dir().glob("xla_compile_cache__*.pb"))
    # Every array of the saved model, the optimizer's slots and step count among them, bit for bit.
    weights, expected = model_weights(repo / "models" / "vae.keras"), model_weights(reference.repo / "models" / "vae.keras")
    assert weights.keys() == expected.keys() and any(name.startswith("optimizer/") for name in weights), weights.keys()
    unequal = [name for name in expected if not np.array_equal(weights[name], expected[name])]
    assert not unequal, f"{len(unequal)} of {len(expected)} saved arrays differ from the uninterrupted run's: {unequal}"

    # One FINISHED run, the one that was interrupted, continued; nothing left RUNNING.
    runs = mlflow_runs(repo)
    assert runs == [(runs[0][0], "FINISHED")], runs
    assert runs[0][0] == (repo / "models" / "mlflow_run_id").read_text().strip()

    # No epoch logged twice with different values, every epoch logged, values as uninterrupted.
    history = metric_history(repo, runs[0][0])
    # (A kill between an epoch's logging and its checkpoint makes the epoch run again: its values
    # come out identical, only its wall-clock epoch_time differs, so that one is not compared.)
    for key, steps in history.items():
        if key == "epoch_time":
            continue
        for step, values in steps.items():
            assert len(values) == 1, f"{key} step {step} logged with different values {values}"
    assert sorted(history["loss"]) == list(range(1, epochs + 1))
    for key in ("loss", "kl", "val_loss"):
        assert history[key] == reference.history[key], key

    # train_log.csv: one row per epoch, equal to the uninterrupted run's (apart from timings).
    with (repo / "train_log.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    strip = lambda rows: [{k: v for k, v in row.items() if k != "epoch_time"} for row in rows]  # noqa: E731
    assert strip(rows) == strip(reference.train_log)
    # A finished run leaves no checkpoint that could be mistaken for a resumable one.
    assert not any((repo / "checkpoints").iterdir())



def test_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint(baseline, poisoned, tmp_path):
    repo = make_repo(tmp_path / "repo")
    shutil.copytree(baseline.repo / "data" / "prepared", repo / "data" / "prepared")

    # A real overflow: a KL weight beyond float32 makes the first epoch's loss infinite.
    params = yaml.safe_load((repo / "params.yaml").read_text())
    good_params = (repo / "params.yaml").read_text()
    params["train"]["beta"] = 1e39
    write_params(repo, params)
    result = run_stage(repo, "train")
    assert result.returncode == 5, result.stderr[-3000:]
    assert re.search(r"error: training loss became (nan|inf) in epoch 1", result.stderr), result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert not list((repo / "checkpoints").glob("*/state.json")), "a non-finite epoch was checkpointed"
    assert [status for _, status in mlflow_runs(repo)] == ["FAILED"]
    assert not (repo / "models" / "vae.keras").exists()

    # NaN in epoch 3 of the good params: stop, keep the checkpoint of epoch 2, and resume from it. (The
    # poisoned fixture ran it, in a repo of its own like this one, once for this test and test_stale_checkpoint.)
    repo = copy_repo(poisoned.repo, tmp_path / "poisoned")
    assert (repo / "params.yaml").read_text() == good_params
    result = poisoned.result
    assert result.returncode == 5, result.stderr[-3000:]
    assert "training loss became nan in epoch 3" in result.stderr, result.stderr[-3000:]
    state = json.loads(next((repo / "checkpoints").glob("*/state.json")).read_text())
    assert state["epoch"] == 2, state
    run_id = (next((repo / "checkpoints").glob("*/mlflow_run_id"))).read_text().strip()
    assert dict(mlflow_runs(repo))[run_id] == "FAILED"
    assert sorted(metric_history(repo, run_id)["loss"]) == [1, 2]  # the NaN epoch was not logged
    assert not (repo / "models" / "vae.keras").exists()

    result = run_stage(repo, "train")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming after epoch 2" in result.stdout + result.stderr
    assert dict(mlflow_runs(repo))[run_id] == "FINISHED"
    assert metric_history(repo, run_id)["loss"] == baseline.history["loss"]


def handles_sigterm(pid: int) -> bool:
    """True once the process catches SIGTERM: run_stage has installed its handler (Python does not)."""
    status = Path(f"/proc/{pid}/status").read_text()
    caught = int(re.search(r"^SigCgt:\s*([0-9a-f]+)$", status, re.M).group(1), 16)
    return bool(caught >> (signal.SIGTERM - 1) & 1)


@pytest.mark.parametrize("stage,next_run", [
    ("evaluate", "the next `dvc repro` runs evaluate again"),
    ("plot", "the next `dvc repro` runs plot again"),
    ("train", "train resumes from its last completed epoch"),
])
def test_a_stopped_stage_speaks_of_itself(baseline, tmp_path, stage, next_run):
    repo = tmp_path / "repo"
    copy_repo(baseline.repo, repo)  # a copy: SIGTERM marks the reopened run KILLED
    process = subprocess.Popen([sys.executable, f"stages/{stage}.py"], cwd=repo, env=stage_env(PYTHONPATH="src"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: handles_sigterm(process.pid), timeout=60, what=f"{stage} to handle SIGTERM")
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 143, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith("interrupted by SIGTERM")]
    assert len(lines) == 1, stderr[-3000:]
    assert f"stage {stage} stopped" in lines[0] and next_run in lines[0], lines
    others = {"prepare", "train", "evaluate", "plot"} - {stage}
    assert not [name for name in others if re.search(rf"\b{name}\b", lines[0])], lines  # no other stage
