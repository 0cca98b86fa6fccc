"""What train and evaluate print into a log that is not a terminal (CI, `dvc queue` logs): plain lines,
no `\\r` and no escape codes; one line per epoch counting batches (not the stacks Keras counts); one
line per ~10 % of each evaluation part with the elapsed time and the time left; no long-part warning
when every part is short. The stages run as real subprocesses with stdout piped."""

from __future__ import annotations

import re
import subprocess

import pytest
from pipeline_repo import VENV_BIN, prepared_copy, read_metrics, stage_env

pytestmark = pytest.mark.e2e

# Over the baseline's prepared data (1800 training images): 57 batches of 32 per epoch (56 full, one of
# 8), which the default fast path runs as 2 stacks (56 batches in one compiled call, then the last).
# (jit_compile off: the same stacks, without XLA's compile time.)
FAST_PATH = {"train": {"epochs": 2, "batch_size": 32, "steps_per_execution": 100, "jit_compile": False}}
BATCHES = 57
PARTS = ("ELBO terms", "IW NLL", "kNN probe")


def run_piped(repo, stage: str) -> subprocess.CompletedProcess:
    """The stage as `dvc repro` runs it, stdout a pipe, without VAEPIPE_QUIET: not a terminal alone must do."""
    env = stage_env(PYTHONPATH="src")
    env.pop("VAEPIPE_QUIET")
    return subprocess.run([str(VENV_BIN / "python"), f"stages/{stage}.py"], cwd=repo, env=env, capture_output=True,
                          text=True, timeout=300)


def test_train_and_evaluate_print_plain_lines_in_batches_and_tenths(baseline, tmp_path):
    repo = prepared_copy(baseline.repo, tmp_path / "repo", FAST_PATH)

    train = run_piped(repo, "train")
    assert train.returncode == 0, train.stdout[-3000:] + train.stderr[-3000:]
    assert "\r" not in train.stdout and "\x1b" not in train.stdout, train.stdout[-2000:]
    epochs = [line for line in train.stdout.splitlines() if line.startswith("epoch ")]
    assert len(epochs) == 2, train.stdout[-3000:]
    for number, line in enumerate(epochs, start=1):
        assert line.startswith(f"epoch {number}/2: {BATCHES}/{BATCHES} batches in "), line
        assert "val_loss=" in line, line
    # The first epoch includes compiling: the estimate waits for the next one; the last has nothing left.
    assert "time left estimated after the next epoch (this one included compiling); " in epochs[0], epochs[0]
    assert ", done; " in epochs[1], epochs[1]
    stacks = [line for line in train.stdout.splitlines() if re.search(r"\b2/2\b", line) and line not in epochs[1:]]
    assert not stacks, "a count of stacks"

    evaluate = run_piped(repo, "evaluate")
    assert evaluate.returncode == 0, evaluate.stdout[-3000:] + evaluate.stderr[-3000:]
    assert "\r" not in evaluate.stdout and "\x1b" not in evaluate.stdout, evaluate.stdout[-2000:]
    assert "will take about" not in evaluate.stdout, "every part here takes seconds"
    n_test = read_metrics(repo)["protocol"]["n_test"]
    for part in PARTS:
        lines = [line for line in evaluate.stdout.splitlines() if line.startswith(f"evaluate: {part} ")]
        percents = [int(re.search(r"\((\d+)%\)", line).group(1)) for line in lines]
        assert 1 <= len(lines) <= 10 and percents == sorted(set(percents)), lines
        assert all(", about " in line and " left" in line and " elapsed" in line for line in lines[:-1]), lines
        assert lines[-1].startswith(f"evaluate: {part} {n_test}/{n_test} images (100%) in "), lines
    iw_lines = [line for line in evaluate.stdout.splitlines() if line.startswith("evaluate: IW NLL ")]
    assert len(iw_lines) == 10, "2000 images in 100 batches of 20: a line per 10 %"
