"""A trial never outlives its `make tune`: killed outright (SIGKILL, which it cannot pass on), the driver's
trial processes (their own process group, under `vaepipe.tune.dvc_one`) notice within a second and stop as
Ctrl-C stops them, so a new `make tune` never meets a trial still training for a study that is gone."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pipeline_repo import PROJECT, VENV_BIN, stage_env, tiny_dvc_repo, wait_for

from vaepipe.tune.trials import group_members

pytestmark = pytest.mark.e2e

STAGE = """import os, signal, sys, time
from pathlib import Path

MAIN = Path(os.environ["DVC_ROOT"])  # the stage runs in DVC's temporary copy; the test looks in the main repo

def stop(signum, frame):
    (MAIN / "stopped").write_text(signal.Signals(signum).name)
    sys.exit(130)

signal.signal(signal.SIGINT, stop)
(MAIN / "stage.pid").write_text(str(os.getpid()))
time.sleep(300)
Path("out.txt").write_text("finished")
"""

ARGV = '["exp", "run", "--temp", "-n", "mine", "-S", "x=2"]'
DRIVERS = {  # the launcher (make tune's way) and a spawned dvc_one (VAEPIPE_TRIAL_SPAWN=1)
    "forked by the launcher": f"""import os, time
from pathlib import Path
from vaepipe.tune.launcher import launch
Path("trial.log").write_text("")
trial = launch({ARGV}, Path.cwd(), dict(os.environ), Path("trial.log"))
print(trial.pid, flush=True)
time.sleep(600)
""",
    "spawned": f"""import subprocess, sys, time
trial = subprocess.Popen([sys.executable, "-m", "vaepipe.tune.dvc_one", *{ARGV}], start_new_session=True)
print(trial.pid, flush=True)
time.sleep(600)
"""}


@pytest.mark.parametrize("how", DRIVERS)
def test_a_trial_stops_itself_when_its_driver_is_killed(tmp_path, how):
    env = stage_env(PYTHONPATH=str(PROJECT / "src"))
    repo = tiny_dvc_repo(tmp_path / "repo", env, {
        "params.yaml": "x: 1\n", "stage.py": STAGE, ".gitignore": "/out.txt\n/stage.pid\n/stopped\n/trial.log\n",
        "dvc.yaml": f"stages:\n  slow:\n    cmd: {VENV_BIN / 'python'} stage.py\n    deps: [stage.py]\n"
                    "    params: [x]\n    outs: [out.txt]\n"})
    driver = subprocess.Popen([sys.executable, "-c", DRIVERS[how]], cwd=repo, env=env, stdout=subprocess.PIPE, text=True)
    try:
        group = int(driver.stdout.readline())
        wait_for(lambda: (repo / "stage.pid").exists(), timeout=120, what="the trial's stage")
        assert group_members(group), "the trial runs in its own process group"
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
        started = time.monotonic()
        wait_for(lambda: not group_members(group), timeout=60, what="the trial's processes to stop")
        seconds = time.monotonic() - started
    finally:
        if driver.poll() is None:
            driver.kill()
    assert (repo / "stopped").read_text() == "SIGINT", "stopped as Ctrl-C stops it (the stage cleans up)"
    assert seconds < 30, f"the trial took {seconds:.0f} s to notice"
    refs = subprocess.run(["git", "for-each-ref", "refs/exps"], cwd=repo, capture_output=True, text=True).stdout
    assert "/mine" not in refs, "a stopped trial commits no experiment"
    assert not Path(repo / "out.txt").exists()
