"""`python -m vaepipe.tune.dvc_one exp run --temp ...`: DVC's own CLI, except that the process runs the
one experiment it stashed and no other.

Why: `dvc exp run --temp` stashes its experiment, then reproduces in a loop until the temp-dir stash is
empty (dvc/repo/experiments/queue/workspace.py, `reproduce`), and each turn reads the first stash entry
before dropping it under DVC's lock (queue/tempdir.py `get`, queue/base.py `get_stash_entry`, which runs a
dropped entry anyway). So a process that finishes its own trial just as another trial's launch has stashed
its entry runs that entry too, alongside the launching process: one trial, two train stages, two MLflow
runs (seen once in CI with two `make tune` processes on one study). Here a process's second look at the
stash finds it empty, and trials.py's launch lock makes its first look see only its own entry.

No public DVC path gives "one `--temp` experiment per process" (`dvc exp run --queue` with its own
workers has the same take-the-first-entry loop), so this is the one patch vaepipe keeps on DVC: private
methods of its temp-dir queue (`get`, and `collect_executor` below) replaced in this process only. It runs
only with the DVC version it was tested against (TESTED_DVC), and any other DVC is refused in one line
before anything is stashed (tests/test_private_api.py checks the patched methods are still there in the
pinned DVC).

It also holds the launch lock (`--launch-lock PATH`, trials.py) from before DVC stashes its experiment until
DVC has taken that entry from the stash (the first `get` returned): DVC's temp-dir runs take the first entry
of the stash, so two launches must not interleave their stash and take. Held here rather than by the
driver, it is released at the earliest moment that is safe (the driver cannot see that moment without
reading DVC's files), and several trials' DVC start-ups (seconds of imports) run side by side, not in turn.

It holds the launch lock again while DVC collects the finished experiment into the main repository (the
queue's `collect_executor`: a git fetch of the experiment's ref from the temporary copy). Two fetches into
one repository at once can fail on libgit2's `.git/shallow.lock` (measured: 5 of 70 simultaneous pairs), and
DVC swallows that failure: the trial exits 0 having trained, with no experiment committed (seen once in CI,
tests/e2e/test_tune_launcher.py). Under the lock, a study's trials collect one at a time, and never while
another launch stashes or takes its entry.

It also stops with its `make tune`: a trial runs in its own process group (so Ctrl-C reaches the driver
first, which stops its trials itself), and a driver killed outright (SIGKILL: nothing it can pass on) would
leave it training for a study that no longer waits for it. A watchdog thread sees the parent go (the
process is re-parented) within a second and stops the whole group as Ctrl-C would: the stage marks its
MLflow run KILLED and DVC commits nothing.
"""

from __future__ import annotations

import fcntl
import importlib
import json
import os
import select
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import IO, Any, NoReturn

from dvc.cli import main
from dvc.repo.experiments.exceptions import ExpQueueEmptyError
from dvc.repo.experiments.queue.tempdir import TempDirQueue

from vaepipe.tune.launcher import LAUNCH_LOCK_OPTION, SERVE_OPTION


def first_entry_only(get: Callable, on_taken: Callable[[], None] = lambda: None) -> Callable:
    """`get` for one call; every later call finds the queue empty (ends DVC's reproduce loop). `on_taken`
    runs once that call has returned or failed: this process's entry is out of the stash."""
    taken: list[bool] = []

    def get_once(queue: TempDirQueue):
        if taken:
            raise ExpQueueEmptyError("vaepipe: one experiment per `dvc exp run --temp` process")
        taken.append(True)
        try:
            return get(queue)
        finally:
            on_taken()

    return get_once


def hold_launch_lock(path: str) -> Callable[[], None]:
    """Wait for the launch lock (flock: released by the kernel however this process ends); return its release."""
    handle: IO[str] | None = open(path, "w")  # noqa: SIM115  (held across DVC's run, closed by the release)
    fcntl.flock(handle, fcntl.LOCK_EX)

    def release() -> None:
        nonlocal handle
        if handle is not None:
            handle.close()  # closing the descriptor releases the flock
            handle = None

    return release


def under_launch_lock(function: Callable, path: str) -> Callable:
    """`function`, run while holding the launch lock (waiting for it first)."""
    def locked(*args: Any, **kwargs: Any) -> Any:
        release = hold_launch_lock(path)
        try:
            return function(*args, **kwargs)
        finally:
            release()

    return locked


def split_launch_lock(argv: list[str]) -> tuple[str | None, list[str]]:
    """(the lock path of a leading `--launch-lock PATH`, or None; DVC's own arguments)."""
    if argv[:1] == [LAUNCH_LOCK_OPTION] and len(argv) > 1:
        return argv[1], argv[2:]
    return None, argv


TESTED_DVC = "3.67.1"  # requirements.txt's pin; a new DVC needs tests/e2e/test_tune.py run against it first
PARENT_POLL_S = 0.5


def refuse_untested_dvc() -> None:
    from importlib.metadata import version

    if (installed := version("dvc")) != TESTED_DVC:
        print(f"error: make tune's trial launcher patches DVC {TESTED_DVC}'s temp-dir queue and DVC is "
              f"{installed}: install dvc=={TESTED_DVC} (requirements.txt) or test the patch against it",
              file=sys.stderr, flush=True)
        sys.exit(2)


def stop_with_parent(parent: int, poll: float = PARENT_POLL_S) -> threading.Thread:
    """Watch for the parent's death; then SIGINT this process group (DVC and the stage)."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll)
        print(f"vaepipe: the `make tune` that started this trial is gone (its process {parent} ended): stopping it",
              flush=True)
        os.killpg(os.getpgrp(), signal.SIGINT)

    thread = threading.Thread(target=watch, name="stop-with-parent", daemon=True)
    thread.start()
    return thread


def run(argv: list[str]) -> int:
    """One trial's `dvc exp run --temp ...` (argv as after `dvc`, maybe led by `--launch-lock PATH`), in
    this process: DVC's CLI with its reproduce loop cut to this process's own stash entry."""
    refuse_untested_dvc()
    stop_with_parent(os.getppid())
    lock, dvc_args = split_launch_lock(argv)
    release = hold_launch_lock(lock) if lock else (lambda: None)
    patch_temp_dir_queue(lock, release)
    return main(dvc_args)


def patch_temp_dir_queue(lock: str | None, release: Callable[[], None]) -> None:
    """DVC's temp-dir queue in this process: its first `get` only (then `release`), and with a launch lock,
    its collection of the finished experiment under that lock."""
    TempDirQueue.get = first_entry_only(TempDirQueue.get, on_taken=release)
    if lock:  # a staticmethod on the class: wrapped, it stays one
        TempDirQueue.collect_executor = staticmethod(under_launch_lock(TempDirQueue.collect_executor, lock))


# What a trial's DVC process imports on its way beyond this module's own imports (`python -X importtime`
# of one trial): loaded once by the launcher, so each trial's fork starts with them. A name missing from
# a later DVC only costs that import per trial (tests/test_private_api.py checks them against the pin).
PRELOAD = ("dvc.cli.parser", "dvc.commands.experiments.run", "dvc.repo.experiments.queue.celery",
           "dvc.repo.experiments.executor.local", "dvc.repo.reproduce", "dvc.repo.plots", "dvc.repo.graph",
           "dvc.repo.index", "dvc.utils.hydra", "dvc.utils.strictyaml", "dvc_data.index.checkout",
           "hydra.core.override_parser.overrides_parser", "networkx", "ruamel.yaml", "dvc_render",
           "dulwich.porcelain", "dulwich.stash", "dulwich.worktree", "dulwich.gc", "dulwich.filters", "pygit2",
           "platformdirs", "flatten_dict", "fsspec.implementations.memory")
REAP_POLL_S = 0.2


def _child(request: dict[str, Any], ready: int) -> NoReturn:
    """In the fork: become the trial's process (own session, cwd, environment, log), run it, exit."""
    code = 1
    try:
        os.setsid()  # its own process group, as `start_new_session=True` gives a spawned one
        os.write(ready, b"x")
        os.close(ready)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        log = os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        code = run(request["argv"])
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
    except BaseException:  # noqa: BLE001  (a bug: its traceback goes to the trial's log)
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)  # never back into the launcher's loop, never its exit handlers


def serve(requests: int = 0, replies: IO[str] = sys.stdout) -> None:
    """The launcher `make tune` starts once (tune/launcher.py): DVC and PRELOAD imported once (about 1 s of
    CPU a trial's own process would spend), then one fork per request line (JSON: id, argv, cwd, env, log),
    answered `{"id", "pid"}` once the fork leads its own process group and `{"id", "code"}` when it ends.
    At the end of its input (the driver gone, however it ended) it exits; each fork then sees its parent go
    and stops its trial (stop_with_parent), as a trial spawned by a killed driver does."""
    for module in PRELOAD:
        try:
            importlib.import_module(module)
        except ImportError:
            pass

    def reply(message: dict[str, Any]) -> None:
        replies.write(json.dumps(message) + "\n")
        replies.flush()

    try:
        _serve_requests(requests, reply)
    except BrokenPipeError:  # the driver is gone: its trials stop by themselves (stop_with_parent)
        os._exit(0)  # quietly: no flush of the broken pipe at exit


def _serve_requests(requests: int, reply: Callable[[dict[str, Any]], None]) -> None:
    ids: dict[int, int] = {}  # fork's pid -> request id
    pending = b""
    while True:
        readable, _, _ = select.select([requests], [], [], REAP_POLL_S)
        while ids:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            reply({"id": ids.pop(pid), "code": os.waitstatus_to_exitcode(status)})
        if not readable:
            continue
        chunk = os.read(requests, 65536)
        if not chunk:
            return
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            request = json.loads(line)
            ready_read, ready_write = os.pipe()
            try:
                pid = os.fork()
            except OSError as error:  # out of memory or processes: this trial fails, the launcher goes on
                os.close(ready_read)
                os.close(ready_write)
                reply({"id": request["id"], "error": f"cannot start DVC: {error}"})
                continue
            if pid == 0:
                os.close(ready_read)
                _child(request, ready_write)
            os.close(ready_write)
            os.read(ready_read, 1)  # the fork has its own session: the driver may signal its group now
            os.close(ready_read)
            ids[pid] = request["id"]
            reply({"id": request["id"], "pid": pid})


if __name__ == "__main__":
    if sys.argv[1:] == [SERVE_OPTION]:
        serve()
    else:
        sys.exit(run(sys.argv[1:]))
