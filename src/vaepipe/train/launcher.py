"""Start N training workers on this machine for `train.distribute: multi_worker`, and watch them.

Each worker is `python stages/train.py` with its own TF_CONFIG (a cluster of N workers on free
localhost ports; task 0 is the chief, which writes every output). The launcher waits for all of them
and exits with the chief's exit code. A worker that dies takes the run down at once: the launcher
stops the others and exits non-zero, naming the dead worker, instead of leaving the survivors
blocked in a collective that will never complete.

Used two ways: `stages/train.py` calls `launch()` itself when params say multi_worker and no
TF_CONFIG is set (so `dvc repro` just works), and `scripts/launch_workers.py` is the same as a script.

Network exposure: TF_CONFIG names `localhost`, but TensorFlow's gRPC server binds every worker's port
on all interfaces whatever host TF_CONFIG gives (grpc_server_lib.cc builds its listening address as
"0.0.0.0:" + port, and ServerDef has a port field but no host field), and it serves unauthenticated
gRPC. So the launcher starts no worker unless VAEPIPE_WORKERS_LISTEN_ANYWHERE=1 says the user accepts
that (on a private network, or behind a firewall that closes those ports to others).

Workers die with their launcher: on Linux each worker starts through a few lines of Python that ask the
kernel to SIGKILL it when the launcher dies (prctl PR_SET_PDEATHSIG), then exec the worker's command
(same pid). A launcher killed with SIGKILL (it cannot stop anyone then) leaves no worker running, and
no chief that writes outputs after DVC has reported the stage failed.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

from vaepipe.errors import ConfigError, VaepipeError

WORKERS_ENV = "VAEPIPE_WORKERS"
LISTEN_ANYWHERE_ENV = "VAEPIPE_WORKERS_LISTEN_ANYWHERE"
DEFAULT_WORKERS = 2
POLL_S = 0.2
GRACE_S = 5.0  # how long a stopped worker gets to exit on SIGTERM before SIGKILL
LINGER_S = 60.0  # how long the others may run on after the chief finished cleanly


class WorkerFailed(VaepipeError):
    """A worker exited non-zero or was killed; the message names it (index, pid, exit code)."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def worker_count() -> int:
    value = os.environ.get(WORKERS_ENV, str(DEFAULT_WORKERS))
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        raise ConfigError(f"{WORKERS_ENV} = {value!r}: must be a whole number of workers, at least 1")
    return count


def require_listen_anywhere() -> None:
    """Refuse (ConfigError, one line) unless VAEPIPE_WORKERS_LISTEN_ANYWHERE=1: the workers' ports would
    listen on every network interface with unauthenticated gRPC, and nothing can bind them to localhost."""
    value = os.environ.get(LISTEN_ANYWHERE_ENV, "")
    if value != "1":
        now = f" (it is {value!r})" if value else ""
        raise ConfigError(f"not starting multi_worker workers: their gRPC ports would listen on all network "
                          f"interfaces, unauthenticated (TensorFlow binds 0.0.0.0 whatever TF_CONFIG says; "
                          f"docs/scaling.md); set {LISTEN_ANYWHERE_ENV}=1 to start them anyway{now}")


# Run as `python -c DIE_WITH_PARENT <launcher pid> <command...>`: set the parent-death signal (Linux
# prctl PR_SET_PDEATHSIG = 1, SIGKILL), exit if the launcher already died (the worker was orphaned before
# the prctl), then become the command. A separate exec rather than Popen's preexec_fn, which is unsafe
# in a process with threads (the train stage has imported MLflow). The signal survives the exec.
DIE_WITH_PARENT = ("import ctypes, os, sys\n"
                   f"if ctypes.CDLL(None, use_errno=True).prctl(1, {int(signal.SIGKILL)}, 0, 0, 0) != 0:\n"
                   "    sys.exit(f'launch: cannot set the parent-death signal: {os.strerror(ctypes.get_errno())}')\n"
                   "if os.getppid() != int(sys.argv[1]):\n"
                   "    sys.exit('launch: the launcher died before this worker started')\n"
                   "os.execvp(sys.argv[2], sys.argv[2:])\n")


def dying_with_this_process(command: list[str]) -> list[str]:
    """`command`, started so that the kernel kills it when this process dies (Linux; as is elsewhere)."""
    if not sys.platform.startswith("linux"):
        return command
    return [sys.executable, "-c", DIE_WITH_PARENT, str(os.getpid()), *command]


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Ports the OS reports free now (all sockets held until every port is chosen, so no repeats)."""
    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind((host, 0))
        return [sock.getsockname()[1] for sock in sockets]


def tf_config(ports: list[int], index: int) -> str:
    return json.dumps({"cluster": {"worker": [f"localhost:{port}" for port in ports]},
                       "task": {"type": "worker", "index": index}})


def _describe(index: int, process: subprocess.Popen) -> str:
    code = process.returncode
    how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
    return f"worker {index} (pid {process.pid}) died with {how}"


def _stop(processes: list[subprocess.Popen]) -> None:
    """SIGTERM whatever still runs, then SIGKILL what has not exited after GRACE_S."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + GRACE_S
    for process in processes:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def launch(workers: int, command: list[str], cwd: Path | None = None) -> int:
    """Run `command` as `workers` TF workers; return the chief's exit code (raise WorkerFailed on a death).

    Refuses unless VAEPIPE_WORKERS_LISTEN_ANYWHERE=1 (require_listen_anywhere)."""
    require_listen_anywhere()
    ports = free_ports(workers)
    print(f"launch: {LISTEN_ANYWHERE_ENV}=1: the workers' gRPC ports {', '.join(map(str, ports))} listen on all "
          f"network interfaces, unauthenticated", file=sys.stderr, flush=True)
    if not sys.platform.startswith("linux"):
        print(f"launch: on {sys.platform} the workers do not die with the launcher if it is killed (no "
              f"parent-death signal): stop them yourself then", file=sys.stderr, flush=True)
    processes: list[subprocess.Popen] = []
    try:
        for index in range(workers):
            env = {**os.environ, "TF_CONFIG": tf_config(ports, index)}
            processes.append(subprocess.Popen(dying_with_this_process(command), cwd=cwd, env=env))
            print(f"launch: worker {index} pid {processes[-1].pid} on port {ports[index]} (all interfaces)"
                  f"{' (chief)' if index == 0 else ''}", file=sys.stderr, flush=True)
        return _watch(processes)
    finally:
        _stop(processes)  # on any exit, Ctrl-C included: no orphaned workers


def _watch(processes: list[subprocess.Popen]) -> int:
    chief = processes[0]
    chief_done_at: float | None = None
    while True:
        for index, process in enumerate(processes):
            code = process.poll()
            if code is not None and code != 0:
                message = _describe(index, process)
                if index == 0:
                    raise WorkerFailed(f"{message}; the other workers were stopped", code)
                raise WorkerFailed(f"{message}; the other workers were stopped", 1)
        if chief.returncode == 0:
            chief_done_at = chief_done_at or time.monotonic()
            if all(process.returncode is not None for process in processes):
                return 0
            if time.monotonic() - chief_done_at > LINGER_S:
                late = [str(i) for i, p in enumerate(processes) if p.returncode is None]
                print(f"launch: the chief finished; worker(s) {', '.join(late)} still running after "
                      f"{LINGER_S:.0f} s were stopped", file=sys.stderr, flush=True)
                return 0
        time.sleep(POLL_S)


def run_local_workers(run_id_file: Path) -> None:
    """What stages/train.py does for multi_worker without TF_CONFIG: this script on N local workers.

    If the run ends early (a worker died, Ctrl-C, SIGTERM), the chief's MLflow run (its id in
    `run_id_file`) is closed here, FAILED or KILLED, since a chief stopped mid-collective cannot.
    """
    from vaepipe import tracking

    try:
        code = launch(worker_count(), [sys.executable, *sys.argv])
    except WorkerFailed as error:
        tracking.close_abandoned_run(run_id_file, "FAILED", str(error))
        raise
    except (KeyboardInterrupt, SystemExit) as error:
        tracking.close_abandoned_run(run_id_file, "KILLED", f"launcher interrupted ({type(error).__name__})")
        raise
    if code:
        raise WorkerFailed(f"the chief exited with code {code}", code)


def main(argv: list[str] | None = None) -> int:
    """`scripts/launch_workers.py [-n N] [-- command ...]`: default command `python stages/train.py`."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--workers", type=int, default=None,
                        help=f"number of worker processes (default: ${WORKERS_ENV} or {DEFAULT_WORKERS})")
    parser.add_argument("command", nargs="*", help="what each worker runs (default: python stages/train.py)")
    args = parser.parse_args(argv)
    if args.workers is not None:
        os.environ[WORKERS_ENV] = str(args.workers)
    command = args.command or [sys.executable, "stages/train.py"]
    try:
        workers = worker_count()
        if not args.command:
            _require_multi_worker_params()
        os.environ.setdefault("PYTHONPATH", "src")
        return launch(workers, command)
    except WorkerFailed as error:
        print(f"launch: error: {error}", file=sys.stderr, flush=True)
        return error.exit_code
    except KeyboardInterrupt:
        print("launch: interrupted; every worker was stopped", file=sys.stderr, flush=True)
        return 130
    except VaepipeError as error:  # bad params or worker count
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code


def _require_multi_worker_params() -> None:
    from vaepipe.config import load_params

    params = load_params()
    if params.train.distribute != "multi_worker":
        raise ConfigError(f"params.yaml: train.distribute = {params.train.distribute!r}; the launcher runs "
                          "multi_worker training: set it (e.g. `dvc exp run -S train.distribute=multi_worker`)")
