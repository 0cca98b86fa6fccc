"""Opt-in count of the processes that load TensorFlow during a test run, and how long they live.

`VAEPIPE_COUNT_TF=<dir> python -m pytest ...` (tests/conftest.py registers this plugin only then, and only
in the process that runs the session: pytest-xdist's controller, or pytest itself without -n). A thread
looks at /proc every half second for processes of this run that have TensorFlow's shared library mapped,
and writes `<dir>/tf-processes.json` at the end (one entry per process: pid, argv, cwd, the test that
started it, start and last-seen time, CPU seconds; under `all`, every process of the run seen, TensorFlow
or not: its argv's first words, test and CPU seconds) and prints a summary by test file.

Why /proc and not a sitecustomize.py on PYTHONPATH: every DVC stage runs through stages/python.sh, which
sets PYTHONPATH=src, and the e2e helpers build stage environments without the caller's PYTHONPATH, so a
sitecustomize would miss most stage processes. "Of this run": the process's environment names this
directory (clean_env keeps VAEPIPE_* variables, so DVC's detached queue workers carry it too), or it
descends from this session. The test that started a process: PYTEST_CURRENT_TEST in its environment,
else that of the xdist worker it descends from (each worker writes its current test to
`<dir>/current-<pid>` while counting)."""

from __future__ import annotations

import json
import os
import threading
import time
from collections import defaultdict
from pathlib import Path

import pytest

VARIABLE = "VAEPIPE_COUNT_TF"
TF_LIBRARY = b"libtensorflow_framework"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
BOOT_TIME = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                 if line.startswith("btime "))


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError:
        return None


def _stat(pid: int) -> tuple[int, float, float] | None:
    """(parent pid, start time as a Unix time, CPU seconds) from /proc/<pid>/stat."""
    raw = _read(f"/proc/{pid}/stat")
    if raw is None:
        return None
    fields = raw[raw.rindex(b")") + 2:].split()
    ppid, utime, stime, start = int(fields[1]), int(fields[11]), int(fields[12]), int(fields[19])
    return ppid, BOOT_TIME + start / CLOCK_TICKS, (utime + stime) / CLOCK_TICKS


def _argv(pid: int) -> list[str]:
    return [part.decode(errors="replace") for part in (_read(f"/proc/{pid}/cmdline") or b"").split(b"\0") if part]


def _environ(pid: int) -> dict[str, str]:
    raw = _read(f"/proc/{pid}/environ") or b""
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {key.decode(errors="replace"): value.decode(errors="replace") for key, value in pairs}


class Counter:
    def __init__(self, directory: Path, xdist: bool, interval: float = 0.5):
        self.directory = directory
        self.xdist = xdist
        self.interval = interval
        self.root = os.getpid()
        self.marker = f"{VARIABLE}={directory}".encode()
        self.found: dict[tuple[int, float], dict] = {}  # (pid, start) -> record
        self.ours: dict[tuple[int, float], bool] = {}
        self.seen: dict[tuple[int, float], dict] = {}  # every process of this run: argv, test, start, CPU seconds
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, name="tf-count", daemon=True)
        self.started = time.time()

    # ------------------------------------------------------------ pytest hooks (the controller's)

    def pytest_sessionstart(self, session) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.started = time.time()
        self.thread.start()

    def pytest_sessionfinish(self, session) -> None:
        self.stop.set()
        self.thread.join(timeout=10)
        self._poll()  # the controller itself and anything still alive
        self.finished = time.time()
        records = sorted(self.found.values(), key=lambda record: record["start"])
        (self.directory / "tf-processes.json").write_text(json.dumps(
            {"wall": self.finished - self.started, "started": self.started, "cpus": os.cpu_count(),
             "all_processes": len(self.seen), "all_cpu": self._all_cpu(), "processes": records,
             "all": list(self.seen.values())}, indent=1))

    def _all_cpu(self) -> float:
        return sum(record["cpu"] for record in self.seen.values())

    def pytest_terminal_summary(self, terminalreporter) -> None:
        records = list(self.found.values())
        wall = self.finished - self.started
        lived = sum(record["last_seen"] - record["start"] for record in records)
        cpu = sum(record["cpu"] for record in records)
        write = terminalreporter.write_line
        terminalreporter.section("TensorFlow processes (VAEPIPE_COUNT_TF)")
        write(f"{len(records)} processes loaded TensorFlow in {wall:.0f} s of wall time; they lived {lived:.0f} s "
              f"in all and used {cpu:.0f} CPU seconds ({cpu / (wall * (os.cpu_count() or 1)):.0%} of "
              f"{os.cpu_count()} CPUs over the run); details: {self.directory / 'tf-processes.json'}")
        write(f"all {len(self.seen)} processes of the run seen (TensorFlow or not) used {self._all_cpu():.0f} CPU "
              "seconds (as last sampled: a process's last half second, and one shorter than that, are missed)")
        by_file: dict[str, list[dict]] = defaultdict(list)
        for record in records:
            by_file[record["test"].split("::", 1)[0]].append(record)
        write(f"{'processes':>9} {'lived s':>8} {'cpu s':>7}  test file (or who)")
        for name, group in sorted(by_file.items(), key=lambda item: -sum(r["last_seen"] - r["start"] for r in item[1])):
            write(f"{len(group):>9} {sum(r['last_seen'] - r['start'] for r in group):>8.0f} "
                  f"{sum(r['cpu'] for r in group):>7.0f}  {name}")

    # ------------------------------------------------------------ the watcher

    def _watch(self) -> None:
        while not self.stop.wait(self.interval):
            try:
                self._poll()
            except Exception as error:  # never let the counter break the run
                print(f"tf-count: {error!r}")

    def _is_ours(self, pid: int, parents: dict[int, int]) -> bool:
        if self.marker in (_read(f"/proc/{pid}/environ") or b"").split(b"\0"):
            return True
        seen = set()
        while pid > 1 and pid not in seen:
            if pid == self.root:
                return True
            seen.add(pid)
            pid = parents.get(pid, 0)
        return False

    def _test_of(self, pid: int, parents: dict[int, int]) -> str:
        if pid == self.root:
            return "(pytest itself)"
        if self.xdist and parents.get(pid) == self.root:  # under xdist, the controller's children are its workers
            return "(pytest-xdist worker)"
        current = _environ(pid).get("PYTEST_CURRENT_TEST")
        if current:
            return current
        seen = set()
        while pid > 1 and pid not in seen:
            seen.add(pid)
            path = self.directory / f"current-{pid}"
            if path.exists():
                return path.read_text() + " (no PYTEST_CURRENT_TEST: the worker's test)"
            pid = parents.get(pid, 0)
        return "(unknown)"

    def _poll(self) -> None:
        now = time.time()
        stats = {}
        for name in os.listdir("/proc"):
            if name.isdigit():
                stat = _stat(int(name))
                if stat is not None and stat[1] >= self.started - 5 or name == str(self.root):
                    stats[int(name)] = stat
        parents = {pid: stat[0] for pid, stat in stats.items() if stat is not None}
        for pid, stat in stats.items():
            if stat is None:
                continue
            key = (pid, round(stat[1], 2))
            if key in self.found:
                self.found[key]["last_seen"], self.found[key]["cpu"] = now, stat[2]
                self.seen[key]["cpu"] = stat[2]
                continue
            if key not in self.ours:
                self.ours[key] = self._is_ours(pid, parents)
            if not self.ours[key]:
                continue
            if key not in self.seen:  # what each process of the run is, TensorFlow or not: read once, young
                self.seen[key] = {"argv": _argv(pid)[:4], "test": self._test_of(pid, parents), "start": stat[1]}
            self.seen[key]["cpu"] = stat[2]
            maps = _read(f"/proc/{pid}/maps")
            if maps is None or TF_LIBRARY not in maps:
                continue
            argv = _argv(pid)  # again: by now it has loaded TensorFlow, so it runs its own program
            self.found[key] = {"pid": pid, "argv": argv, "cwd": os.path.realpath(f"/proc/{pid}/cwd"),
                               "test": self._test_of(pid, parents), "start": stat[1], "last_seen": now,
                               "cpu": stat[2]}


class WorkerTests:
    """In each xdist worker while counting: its current test in `<dir>/current-<pid>`, for the processes
    it starts with an environment of their own (no PYTEST_CURRENT_TEST); and its timeline, one line per
    test in `<dir>/timeline-<worker>.jsonl` (start and end, setup and teardown included): how busy each
    worker was, and until when."""

    def __init__(self, directory: Path):
        self.path = directory / f"current-{os.getpid()}"
        self.timeline = directory / f"timeline-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}.jsonl"
        self.started = 0.0

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logstart(self, nodeid, location) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(nodeid)
        self.started = time.time()

    def pytest_runtest_logfinish(self, nodeid, location) -> None:
        with self.timeline.open("a") as handle:
            handle.write(json.dumps({"test": nodeid, "start": self.started, "end": time.time()}) + "\n")


def register(config: pytest.Config) -> None:
    directory = os.environ.get(VARIABLE)
    if not directory:
        return
    directory = Path(directory).resolve()
    os.environ[VARIABLE] = str(directory)  # the exact text the watcher looks for in children's environments
    if hasattr(config, "workerinput") or not getattr(config.option, "numprocesses", None):
        config.pluginmanager.register(WorkerTests(directory), "tf-count-worker")
    if not hasattr(config, "workerinput"):
        xdist = bool(getattr(config.option, "numprocesses", None))
        config.pluginmanager.register(Counter(directory, xdist), "tf-count")
