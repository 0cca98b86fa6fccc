"""One exception type for every user-facing failure, the wrapper that turns it into an exit code,
and the signal handling that makes SIGTERM stop a stage the way Ctrl-C does."""

from __future__ import annotations

import atexit
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn


class VaepipeError(Exception):
    """A failure caused by the user's input (params, data files, tracking server), not by a bug.

    The message is printed as-is: it names the bad value and what is expected.
    """

    exit_code = 1


class ConfigError(VaepipeError):
    """A value in params.yaml is wrong. Exit code 2, like a command-line usage error."""

    exit_code = 2


class DataError(VaepipeError):
    """A data file is missing, corrupt or not what it claims to be."""

    exit_code = 3


class TrackingError(VaepipeError):
    """The MLflow tracking store cannot be reached or used."""

    exit_code = 4


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived. A KeyboardInterrupt, so everything that cleans up after Ctrl-C
    (the MLflow run is marked KILLED, atomic outputs are not renamed into place) does so for both."""

    def __init__(self, signum: int, swallowed: bool = False):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.swallowed = swallowed  # raised again by stop_if_signalled: the handler's exception was lost


_deferring = 0
_pending: int | None = None  # held by deferred_signals, raised when its block ends
_received: int | None = None  # the SIGINT/SIGTERM that arrived within interruptible(), if any


def _on_signal(signum: int, _frame) -> None:
    global _pending, _received
    _received = signum
    if _deferring:
        _pending = signum  # raised when the critical section ends
        return
    raise Interrupted(signum)


def received_signal() -> int | None:
    """The SIGINT/SIGTERM that arrived since interruptible() began, even if its exception got lost."""
    return _received


def stop_if_signalled() -> None:
    """Raise Interrupted if a SIGINT/SIGTERM arrived: for long loops to call between steps.

    The handler raises in whatever Python code the main thread runs when the signal lands, and
    library code there may catch it (a bare `except:`, as in Keras's pythonify_logs, catches
    KeyboardInterrupt too) or turn it into another error. Under load, a train stage once ran on to
    its last epoch after a SIGTERM. A loop that calls this between steps stops at the next step.
    """
    if _received is not None:
        raise Interrupted(_received, swallowed=True)


@contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold SIGINT/SIGTERM until the block is done (e.g. while a checkpoint is written), then raise."""
    global _deferring, _pending
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
        if not _deferring and _pending is not None:
            signum, _pending = _pending, None
            raise Interrupted(signum)


@contextmanager
def interruptible() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM both raise Interrupted (in the main thread)."""
    global _received
    _received = None
    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_stage(main: Callable[[], None], on_rerun: str | None = None) -> None:
    """Run a stage's main function; print user errors as one line and exit non-zero.

    Ctrl-C (SIGINT) and SIGTERM end the stage with 128 + the signal number (130, 143), after the
    stage's own cleanup ran (outputs left as they were, MLflow run marked KILLED). The message names
    the stage (its script's name) and says what the next `dvc repro` does: `on_rerun`, or by default
    that it runs the stage again. That holds too when library code turned the signal's exception into
    another error or lost it (see stop_if_signalled).
    """
    stage = Path(getattr(getattr(main, "__code__", None), "co_filename", sys.argv[0])).stem
    use_xla_cache()
    rerun = on_rerun or f"the next `dvc repro` runs {stage} again"
    try:
        with interruptible():
            main()
    except KeyboardInterrupt as error:
        swallowed = getattr(error, "swallowed", False)
        _stopped(stage, getattr(error, "signum", received_signal() or signal.SIGINT), rerun,
                 "at the next step: library code had swallowed the signal's exception" if swallowed else "")
    except Exception as error:
        if received_signal() is not None:  # a signal that library code turned into this error
            _stopped(stage, received_signal(), rerun, f"it surfaced as {type(error).__name__}: {error}")
        if not isinstance(error, VaepipeError):
            raise  # a bug: its traceback, the ordinary way
        print(f"error: {error}", file=sys.stderr)
        _leave(error.exit_code)
    if received_signal() is not None:  # its exception was lost on the way, and the stage ran to the end
        print(f"interrupted by {signal.Signals(received_signal()).name} while stage {stage} finished: its outputs "
              f"are written, and `dvc repro` stops here", file=sys.stderr)
        _leave(128 + received_signal())
    _leave(0)


def _stopped(stage: str, signum: int, rerun: str, how: str) -> NoReturn:
    """End a stage stopped by a signal: one line, exit code 128 + the signal's number."""
    print(f"interrupted by {signal.Signals(signum).name}: stage {stage} stopped and its outputs are unchanged "
          f"({rerun})" + (f" ({how})" if how else ""), file=sys.stderr)
    _leave(128 + signum)


def use_xla_cache() -> None:
    """Before TensorFlow is imported: keep XLA's compiled programs in paths.xla_cache_dir(), so a rerun
    with the same shapes (an edited param, a queued experiment, a resumed run) loads them instead of
    compiling them again, about 1 s each (bench/NOTES.md run 36). Same programs, same numbers."""
    from vaepipe import paths

    flags = os.environ.get("TF_XLA_FLAGS", "")
    if "tf_xla_persistent_cache_directory" not in flags:
        directory = paths.xla_cache_dir()
        directory.mkdir(parents=True, exist_ok=True)
        os.environ["TF_XLA_FLAGS"] = f"{flags} --tf_xla_persistent_cache_directory={directory}".strip()


def _leave(code: int) -> NoReturn:
    """End the stage's process now: run the atexit handlers (logging, MLflow), flush, and skip the
    interpreter's teardown, which after importing TensorFlow took 2.4 s of every stage here
    (bench/NOTES.md run 35) and has nothing left to do: outputs are written and closed, the MLflow
    run is ended. A bug's traceback (any other exception) still exits the ordinary way."""
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
