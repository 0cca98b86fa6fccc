"""One trial as one DVC experiment: `dvc exp run --temp -n <study>-t<number> -S ... train`, read back from
the commit DVC made for it.

Why `--temp` and not the queue (`dvc exp run --queue` + `dvc queue start -j N`): a temp-dir experiment
runs in a process this driver starts and owns, so it inherits the environment (the storage URL reaches the
train stage without ever being written into params), its exit is the trial's end (no polling of
`dvc queue status`, no detached Celery workers whose idle monitor can die under load), and Ctrl-C stops
exactly the trials this driver runs. `jobs` trials run at once as `jobs` such processes.

DVC's temp-dir runs take their stash entry with `first(stash)` (dvc/repo/experiments/queue/tempdir.py):
two `dvc exp run --temp` started at the same moment in one repository can swap, or one can run both.
So a launch holds a lock file (.optuna/launch.lock, also across `make tune` processes of one repository)
from before DVC stashes its experiment until DVC has taken that entry (or has ended). And DVC's process goes
on taking entries after its own until the stash is empty, so it runs through `vaepipe.tune.dvc_one`, DVC's
CLI with that loop cut to its first turn, which also holds the lock over exactly that span: no DVC-internal
file is read, and the launches' DVC start-ups run side by side.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vaepipe import paths
from vaepipe.experiments import RUN_ID_PATH, experiment_refs, read_files_from_experiment
from vaepipe.presets import set_options
from vaepipe.tune import launcher
from vaepipe.tune.storage import STORAGE_ENV

STOP_GRACE_S = 90  # after SIGINT, how long a trial has to end its MLflow run and exit before SIGKILL


def trial_experiment(study: str, number: int) -> str:
    return f"{study}-t{number}"


def final_experiment(study: str, number: int) -> str:
    return f"{study}-final-t{number}"


def log_file(name: str) -> Path:
    return paths.optuna_dir() / "logs" / f"{name}.log"


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=paths.ROOT, capture_output=True, text=True)


def baseline_rev() -> str:
    return _git("rev-parse", "HEAD").stdout.strip()


def experiment_ref(name: str, baseline: str | None = None) -> str | None:
    """The git ref of DVC experiment `name`, if DVC committed one: on `baseline`, the commit its launch
    recorded; without one, the only experiment of that name on any baseline (a study's names are its own:
    `<study>-t<n>`, `<study>-final-t<n>`). Never the HEAD of the moment: a commit or a checkout during a
    long study changes nothing about which experiment a trial is."""
    if baseline:
        ref = f"refs/exps/{baseline[:2]}/{baseline[2:]}/{name}"
        return ref if _git("rev-parse", "--verify", "-q", ref).returncode == 0 else None
    refs = experiment_refs(name, paths.ROOT)
    return refs[0] if len(refs) == 1 else None


def read_experiment(ref: str, *filenames: str) -> dict[str, str | None]:
    """Files as the experiment's commit holds them (None for one it lacks), read in one go."""
    return read_files_from_experiment(ref, list(filenames), paths.ROOT)


def parse_json(text: str | None) -> dict[str, Any] | None:
    """A JSON file's text (val_metrics.json, metrics.json) as a dict, None if absent or not JSON."""
    try:
        return json.loads(text) if text is not None else None
    except json.JSONDecodeError:
        return None


def trial_outcome(ref: str) -> tuple[dict[str, Any] | None, str | None]:
    """What a trial's train stage wrote in its experiment: val_metrics.json and the MLflow run id
    (models/mlflow_run_id); (None, None) without a validation summary."""
    files = read_experiment(ref, "val_metrics.json", RUN_ID_PATH)
    summary = parse_json(files["val_metrics.json"])
    if summary is None:
        return None, None
    return summary, (files[RUN_ID_PATH] or "").strip() or None


@dataclass
class Experiment:
    """A running `dvc exp run --temp` of one trial (or of a final run), in its own process group."""

    name: str
    overrides: dict[str, Any]
    target: str | None  # "train" for a trial: the search never runs evaluate
    storage: str
    process: subprocess.Popen | launcher.LaunchedProcess | None = None
    baseline: str | None = None  # the commit DVC runs it on, recorded at launch (its ref lives under it)
    interrupted: bool = False
    started: float = field(default_factory=time.monotonic)

    def command(self) -> list[str]:
        return ["dvc", "exp", "run", "--temp", "-n", self.name, *set_options(self.overrides),
                *([self.target] if self.target else [])]

    def start(self) -> None:
        """Launch DVC (through dvc_one, which takes the launch lock before stashing and releases it once
        DVC has taken this experiment's stash entry); return at once."""
        log = log_file(self.name)
        log.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, STORAGE_ENV: self.storage}
        self.baseline = baseline_rev()
        argv = [launcher.LAUNCH_LOCK_OPTION, str(launch_lock()), "--wait-for-lock", *self.command()[1:]]
        with log.open("w") as out:
            if launcher.use_launcher():  # a fork of the process that has DVC loaded (tune/launcher.py)
                self.process = launcher.launch(argv, paths.ROOT, env, log)
            else:
                self.process = subprocess.Popen([sys.executable, "-m", "vaepipe.tune.dvc_one", *argv],
                                                cwd=paths.ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                                stderr=subprocess.STDOUT, start_new_session=True)

    def wait(self) -> int:
        assert self.process is not None
        code = self.process.wait()
        _wait_group_gone(self.process.pid, STOP_GRACE_S)
        return code

    def stop(self) -> None:
        """Ctrl-C for this experiment's whole process group (DVC and the stage): the stage marks its MLflow
        run KILLED and leaves nothing half-written; DVC commits nothing."""
        self.interrupted = True
        if self.process is not None and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGINT)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        if self.process is not None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def error_line(self) -> str:
        """The first line saying what went wrong: the stage's `error: ...`, a traceback's exception, else DVC's
        ERROR, else the last line."""
        try:
            raw = [line.rstrip() for line in log_file(self.name).read_text(errors="replace").splitlines() if line.strip()]
        except OSError:
            return "no log"
        lines = [line.strip() for line in raw]
        for prefix in ("error:", "interrupted by"):
            for line in lines:
                if line.startswith(prefix):
                    return line
        if "Traceback (most recent call last):" in lines:  # a bug: the exception's own line ends the traceback
            start = len(lines) - 1 - lines[::-1].index("Traceback (most recent call last):")
            for line in raw[start + 1:]:
                if not line.startswith((" ", "\t")) and not line.startswith("ERROR:"):
                    return line.strip()
        for line in lines:
            if line.startswith("ERROR:"):
                return line
        return lines[-1] if lines else f"dvc exp run exited with {self.process.returncode if self.process else '?'}"


def launch_lock() -> Path:
    """The lock file that orders the launches of one repository's trials (dvc_one holds it)."""
    paths.optuna_dir().mkdir(parents=True, exist_ok=True)
    return paths.optuna_dir() / "launch.lock"


def group_members(pgid: int) -> list:
    """The live (not zombie) processes of process group `pgid`."""
    import psutil

    members = []
    for process in psutil.process_iter(["status"]):
        try:
            if os.getpgid(process.pid) == pgid and process.info["status"] != psutil.STATUS_ZOMBIE:
                members.append(process)
        except (ProcessLookupError, psutil.Error, OSError):
            continue
    return members


def _wait_group_gone(pgid: int, timeout: float) -> None:
    """Until no live process of the group is left (the stage may outlive DVC by a moment); SIGKILL after
    `timeout`. Zombies do not count: a container's init may never reap them."""
    deadline = time.monotonic() + timeout
    while members := group_members(pgid):
        if time.monotonic() > deadline:
            for process in members:
                try:
                    process.kill()
                except Exception:  # noqa: BLE001  (gone meanwhile)
                    pass
            return
        time.sleep(0.3)
