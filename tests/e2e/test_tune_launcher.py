"""`make tune`'s trials are forks of one launcher that has DVC loaded (tune/launcher.py): each runs as a
spawned `python -m vaepipe.tune.dvc_one` would (its own process group, the environment and log it was
given, its own experiment), two at once from one launcher, and a launcher that dies ends its trials."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from pipeline_repo import VENV_BIN, stage_env, tiny_dvc_repo, wait_for

from vaepipe.tune.launcher import LAUNCH_LOCK_OPTION, LAUNCHER_GONE, Launcher
from vaepipe.tune.trials import group_members

pytestmark = pytest.mark.e2e

STAGE = """import json, os, signal, sys, time
from pathlib import Path

MAIN = Path(os.environ["DVC_ROOT"])  # the stage runs in DVC's temporary copy; the test looks in the main repo
x = float(Path("params.yaml").read_text().split(":")[1])

def stop(signum, frame):
    (MAIN / "stopped").write_text(signal.Signals(signum).name)
    sys.exit(130)

signal.signal(signal.SIGINT, stop)
if x < 0:
    print("error: x is negative", flush=True)
    sys.exit(3)
if x > 100:
    time.sleep(300)
Path("m.json").write_text(json.dumps({"mark": os.environ["MARK"], "x": x, "pgid": os.getpgrp()}))
"""


def tiny_repo(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    env = stage_env()
    repo = tiny_dvc_repo(tmp_path / "repo", env, {
        "params.yaml": "x: 1\n", "stage.py": STAGE, ".gitignore": "/logs\n/stopped\n",
        "dvc.yaml": f"stages:\n  fast:\n    cmd: {VENV_BIN / 'python'} stage.py\n    deps: [stage.py]\n"
                    "    params: [x]\n    metrics:\n      - m.json:\n          cache: false\n"})
    (repo / "logs").mkdir()
    return repo, env


def launch(launcher: Launcher, repo: Path, env: dict[str, str], name: str, x: float, mark: str):
    log = repo / "logs" / f"{name}.log"
    log.write_text("")
    argv = [LAUNCH_LOCK_OPTION, str(repo / "logs" / "launch.lock"), "exp", "run", "--temp", "-n", name, "-S", f"x={x}"]
    return launcher.launch(argv, repo, {**env, "MARK": mark}, log), log


def test_two_trials_forked_at_once_each_run_as_their_own_process(tmp_path):
    repo, env = tiny_repo(tmp_path)
    launcher = Launcher()
    (one, one_log), (two, two_log) = (launch(launcher, repo, env, "one", 2, "first"),
                                      launch(launcher, repo, env, "two", 3, "second"))
    (bad, bad_log) = launch(launcher, repo, env, "bad", -1, "third")
    assert [one.wait(timeout=120), two.wait(timeout=120), bad.wait(timeout=120)][:2] == [0, 0], \
        one_log.read_text() + two_log.read_text()
    assert bad.returncode not in (0, None, LAUNCHER_GONE)
    assert "error: x is negative" in bad_log.read_text(), "the fork's stdout and stderr go to its own log"
    assert len({one.pid, two.pid, bad.pid, os.getpgrp()}) == 4
    for handle, name, mark, x in ((one, "one", "first", 2.0), (two, "two", "second", 3.0)):
        ref = subprocess.run(["git", "for-each-ref", "--format=%(refname)", f"refs/exps/*/*/{name}"], cwd=repo,
                             capture_output=True, text=True).stdout.split()
        assert len(ref) == 1, f"experiment {name}: {ref}"
        metrics = json.loads(subprocess.run(["git", "show", f"{ref[0]}:m.json"], cwd=repo, capture_output=True,
                                            text=True, check=True).stdout)
        # Its own params and environment; its stage in its own process group, led by the fork.
        assert metrics == {"mark": mark, "x": x, "pgid": handle.pid}
    process = launcher.process
    assert process is not None and process.poll() is None, "one launcher serves every launch"
    process.stdin.close()  # the end of its input, as when the driver is gone: the launcher exits by itself
    assert process.wait(timeout=10) == 0


def test_a_launcher_that_dies_ends_its_trials(tmp_path):
    repo, env = tiny_repo(tmp_path)
    launcher = Launcher()
    trial, _ = launch(launcher, repo, env, "slow", 1000, "slow")
    try:
        wait_for(lambda: any("stage.py" in " ".join(p.cmdline()) for p in group_members(trial.pid)), timeout=120,
                 what="the trial's stage")
        os.kill(launcher.process.pid, signal.SIGKILL)
        assert trial.wait(timeout=30) == LAUNCHER_GONE
        started = time.monotonic()
        wait_for(lambda: not group_members(trial.pid), timeout=60, what="the trial's processes to stop")
        assert time.monotonic() - started < 30
    finally:
        if group_members(trial.pid):
            os.killpg(trial.pid, signal.SIGKILL)
    assert (repo / "stopped").read_text() == "SIGINT", "stopped as Ctrl-C stops it (the stage cleans up)"
    refs = subprocess.run(["git", "for-each-ref", "refs/exps"], cwd=repo, capture_output=True, text=True).stdout
    assert "/slow" not in refs, "a stopped trial commits no experiment"
