"""What the driver tells the study of a failed trial: the first line that says what went wrong, from the
experiment's log; the experiment's command (a trial runs up to train only); and the launch lock dvc_one holds."""

from __future__ import annotations

from pathlib import Path

import pytest

from vaepipe import paths
from vaepipe.tune import trials

LOGS = [
    ("Running stage 'train':\nerror: params.yaml: train.epochs = 0: Input should be greater than or equal to 1\n"
     "ERROR: failed to reproduce 'train': failed to run: python stages/train.py, exited with 2\n",
     "error: params.yaml: train.epochs = 0: Input should be greater than or equal to 1"),
    ("Epoch 1/2\nTraceback (most recent call last):\n  File \"stages/train.py\", line 31, in <module>\n    main()\n"
     "NotImplementedError: Trial.report is not supported\n"
     "ERROR: failed to reproduce 'train': failed to run: python stages/train.py, exited with 1\n",
     "NotImplementedError: Trial.report is not supported"),
    ("Reproducing experiment 'x'\nERROR: Experiment conflicts with existing experiment 'x'.\n",
     "ERROR: Experiment conflicts with existing experiment 'x'."),
    ("something\nlast words\n", "last words"),
]


@pytest.mark.parametrize("log, line", LOGS, ids=["stage error", "traceback", "dvc error", "last line"])
def test_the_error_told_to_the_study_is_the_line_that_says_why(log, line, tmp_path, monkeypatch):
    monkeypatch.setattr(trials, "log_file", lambda name: tmp_path / f"{name}.log")
    (tmp_path / "x.log").write_text(log)
    assert trials.Experiment("x", {}, None, "").error_line() == line


def test_a_trial_runs_up_to_train_in_a_temporary_copy():
    command = trials.Experiment("s-t3", {"model": {"latent_dim": 4}, "tune": {"study": "s", "trial": 3}},
                                "train", "").command()
    assert command == ["dvc", "exp", "run", "--temp", "-n", "s-t3", "-S", "model.latent_dim=4",
                       "-S", "tune.study=s", "-S", "tune.trial=3", "train"]
    final = trials.Experiment("s-final-t3", {"tune": {"final": True}}, None, "").command()
    assert final[-2:] == ["-S", "tune.final=true"]  # no target: the whole pipeline
    assert trials.trial_experiment("s", 3) == "s-t3" and trials.final_experiment("s", 3) == "s-final-t3"
    assert paths.optuna_dir().name == ".optuna"


def test_a_trials_experiment_is_found_from_its_launch_not_from_head(tmp_path, monkeypatch):
    """A commit (or checkout) during a long study moves HEAD; the trial's experiment, under the baseline
    its launch recorded, is still found, and so is a study's uniquely named experiment on any baseline."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True, text=True,
                              env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x.invalid", "GIT_COMMITTER_NAME": "t",
                                   "GIT_COMMITTER_EMAIL": "t@x.invalid", "PATH": "/usr/bin:/bin"}).stdout.strip()

    git("init", "-q")
    git("commit", "-q", "--allow-empty", "-m", "baseline")
    launched_on = git("rev-parse", "HEAD")
    git("update-ref", f"refs/exps/{launched_on[:2]}/{launched_on[2:]}/six-t0", launched_on)  # what DVC commits
    git("commit", "-q", "--allow-empty", "-m", "a commit made while the study runs")
    monkeypatch.setattr(paths, "ROOT", tmp_path)
    expected = f"refs/exps/{launched_on[:2]}/{launched_on[2:]}/six-t0"
    assert trials.experiment_ref("six-t0", launched_on) == expected
    assert trials.experiment_ref("six-t0") == expected
    assert trials.experiment_ref("six-t0", git("rev-parse", "HEAD")) is None  # where a HEAD lookup would look


def lock_is_free(lock: Path) -> bool:
    """True when no one holds the flock on `lock` (another open file description could take it now)."""
    import fcntl

    with lock.open("a") as other:
        try:
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True


def test_the_launch_lock_is_held_until_dvc_has_taken_the_entry_then_released(tmp_path):
    """dvc_one holds .optuna/launch.lock from before DVC stashes until its first `get` of the stash returned
    (or failed): other launches wait exactly that long; later `get`s find the queue empty."""
    from dvc.repo.experiments.exceptions import ExpQueueEmptyError

    from vaepipe.tune import dvc_one

    lock = tmp_path / "launch.lock"

    assert dvc_one.split_launch_lock(["--launch-lock", str(lock), "--wait-for-lock", "exp", "run"]) == (
        str(lock), ["--wait-for-lock", "exp", "run"])
    assert dvc_one.split_launch_lock(["exp", "run"]) == (None, ["exp", "run"])
    taken = []
    get = dvc_one.first_entry_only(lambda queue: taken.append(queue) or "entry",
                                   on_taken=dvc_one.hold_launch_lock(str(lock)))
    assert not lock_is_free(lock)
    assert get("queue") == "entry" and taken == ["queue"]
    assert lock_is_free(lock)
    with pytest.raises(ExpQueueEmptyError):
        get("queue")
    assert taken == ["queue"]

    def failing(queue):
        raise RuntimeError("stash gone")

    get = dvc_one.first_entry_only(failing, on_taken=dvc_one.hold_launch_lock(str(lock)))
    with pytest.raises(RuntimeError):
        get("queue")
    assert lock_is_free(lock)


def test_dvc_collects_a_finished_experiment_holding_the_launch_lock(tmp_path, monkeypatch):
    """Two trials' collections (a git fetch into the main repository each) at once can lose one experiment
    (libgit2's .git/shallow.lock; DVC swallows the error): dvc_one runs DVC's collection under the launch
    lock, called as DVC calls it (`self.collect_executor(...)` on the queue), and releases it after, also
    when the collection fails. The collection itself stands in for DVC's: the lock is what is checked."""
    from dvc.repo.experiments.queue.tempdir import TempDirQueue

    from vaepipe.tune import dvc_one

    lock = tmp_path / "launch.lock"
    seen = []

    def collect(exp, executor, result):
        seen.append((exp, executor, result, lock_is_free(lock)))
        if result == "bad":
            raise RuntimeError("fetch failed")
        return {"rev": "exp-hash"}

    monkeypatch.setattr(TempDirQueue, "get", TempDirQueue.get)  # both restored after the test
    monkeypatch.setattr(TempDirQueue, "collect_executor", staticmethod(collect))
    dvc_one.patch_temp_dir_queue(str(lock), release=lambda: None)
    queue = object.__new__(TempDirQueue)  # DVC calls it on its queue instance
    assert queue.collect_executor("exp", "executor", "result") == {"rev": "exp-hash"}
    assert seen == [("exp", "executor", "result", False)] and lock_is_free(lock)
    with pytest.raises(RuntimeError):
        queue.collect_executor("exp", "executor", "bad")
    assert seen[-1][3] is False and lock_is_free(lock)
