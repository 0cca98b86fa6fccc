"""Start trials' DVC processes as forks of one launcher that has DVC loaded, not as new Pythons.

Each trial's `dvc exp run --temp` imports DVC and what it reaches (hydra, networkx, dulwich's porcelain,
ruamel.yaml, ...): about 1 s of CPU per trial, paid again for every trial (bench/NOTES.md run 49). `make tune`
starts `python -m vaepipe.tune.dvc_one --serve` once (in its own session, so Ctrl-C reaches the driver
first, as for the trials); it imports all that and forks one process per trial, which then runs exactly as
a spawned `python -m vaepipe.tune.dvc_one ...` would: its own process group, cwd, environment and log.

Kill-safety is the spawned path's: the launcher exits when its input ends (the driver gone, however it
ended), and each fork's watchdog then sees its parent go and stops its trial. A launcher that dies on its
own ends its trials the same way; the next launch starts a new one.
"""

from __future__ import annotations

import atexit
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

LAUNCH_LOCK_OPTION = "--launch-lock"  # dvc_one's options: the launch lock it holds (trials.py), launcher mode
SERVE_OPTION = "--serve"
# A fork that was never answered for: the launcher died before reporting its end.
LAUNCHER_GONE = -1


class LaunchedProcess:
    """A trial's DVC process forked by the launcher: the part of `subprocess.Popen` the driver uses."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._ended = threading.Event()

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int | None:
        if not self._ended.wait(timeout):
            raise subprocess.TimeoutExpired(f"trial process {self.pid}", timeout)
        return self.returncode

    def ended(self, code: int) -> None:
        self.returncode = code
        self._ended.set()


class Launcher:
    """The driver's side: one launcher process, started at the first launch and again if it died."""

    def __init__(self) -> None:
        self.process: subprocess.Popen | None = None
        self.lock = threading.Lock()  # one request at a time: ids, the pipe, and waiting for its answer
        self.next_id = 0
        self.started: dict[int, LaunchedProcess | dict] = {}  # request id -> its fork, or the error
        self.answered = threading.Condition()
        self.running: dict[int, LaunchedProcess] = {}

    def _ensure_started(self) -> subprocess.Popen:
        if self.process is None or self.process.poll() is not None:
            self.process = subprocess.Popen([sys.executable, "-m", "vaepipe.tune.dvc_one", SERVE_OPTION],
                                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                            start_new_session=True)
            threading.Thread(target=self._read_answers, args=(self.process,), name="tune-launcher",
                             daemon=True).start()
            atexit.register(self.close)
        return self.process

    def start(self) -> None:
        """Start the launcher now, so that its imports overlap the driver's own start (Optuna, the study)."""
        with self.lock:
            self._ensure_started()

    def close(self, timeout: float = 10) -> None:
        """End the launcher (the end of its input; at once if no trial of its runs, even mid-import) and wait
        for it, so that its CPU time and its forks' count as this process's children's (bench part f)."""
        process, self.process = self.process, None
        if process is None:
            return
        try:
            assert process.stdin is not None
            process.stdin.close()
            if not self.running:
                process.terminate()
            process.wait(timeout=timeout)
        except (OSError, subprocess.TimeoutExpired):
            process.kill()
            process.wait()

    def _read_answers(self, process: subprocess.Popen) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            answer = json.loads(line)
            with self.answered:
                if "code" in answer:
                    launched = self.running.pop(answer["id"], None)
                    if launched is not None:
                        launched.ended(answer["code"])
                elif "pid" in answer:  # registered here, before its end can be read
                    self.running[answer["id"]] = self.started[answer["id"]] = LaunchedProcess(answer["pid"])
                else:
                    self.started[answer["id"]] = answer
                self.answered.notify_all()
        with self.answered:  # the launcher is gone: nobody will report its forks' ends
            for launched in self.running.values():
                launched.ended(LAUNCHER_GONE)
            self.running.clear()
            self.answered.notify_all()

    def launch(self, argv: list[str], cwd: Path, env: dict[str, str], log: Path) -> LaunchedProcess:
        """Fork `python -m vaepipe.tune.dvc_one *argv` from the launcher; return once it leads its own
        process group (so the driver may signal it). `log` must exist: stdout and stderr are appended to it."""
        with self.lock:
            process = self._ensure_started()
            request_id = self.next_id
            self.next_id += 1
            request = {"id": request_id, "argv": argv, "cwd": str(cwd), "env": env, "log": str(log)}
            assert process.stdin is not None
            try:
                process.stdin.write(json.dumps(request) + "\n")
                process.stdin.flush()
            except (BrokenPipeError, OSError) as error:
                raise OSError(f"the trial launcher (process {process.pid}) is gone: {error}") from None
            with self.answered:
                while request_id not in self.started and process.poll() is None:
                    self.answered.wait(timeout=1.0)
                answer = self.started.pop(request_id, None)
                if answer is None:
                    raise OSError(f"the trial launcher (process {process.pid}) ended with {process.returncode}")
                if isinstance(answer, dict):
                    raise OSError(answer["error"])
                return answer


_LAUNCHER = Launcher()


def launch(argv: list[str], cwd: Path, env: dict[str, str], log: Path) -> LaunchedProcess:
    """This process's launcher's `launch` (one launcher per `make tune`, shared by its worker threads)."""
    return _LAUNCHER.launch(argv, cwd, env, log)


def start() -> None:
    """Start this process's launcher ahead of its first launch."""
    _LAUNCHER.start()


def use_launcher() -> bool:
    """VAEPIPE_TRIAL_SPAWN=1 starts each trial as its own Python (the path before the launcher; for comparing
    the two in bench part f and for debugging a trial alone)."""
    return os.environ.get("VAEPIPE_TRIAL_SPAWN", "") != "1"
