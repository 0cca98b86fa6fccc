"""One exception type for every user-facing failure (each with its exit code), and the signal handling
that makes SIGTERM stop a stage the way Ctrl-C does. vaepipe.process turns both into a stage's exit.

Every exit code a vaepipe command ends with is defined here (EXIT_CODES); docs/reliability.md's
"Exit codes" table lists exactly these (tests/test_errors.py checks it).
"""

from __future__ import annotations

import errno
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

E = TypeVar("E", bound=BaseException)

EXIT_OK = 0
EXIT_FAILURE = 1  # VaepipeError: a user-facing failure of no more specific kind
EXIT_CONFIG = 2  # ConfigError: a wrong param, setting or command-line value
EXIT_DATA = 3  # DataError, DiskFull: a file missing, corrupt, unreadable or unwritable
EXIT_TRACKING = 4  # TrackingError: the MLflow store cannot be reached or used
EXIT_NON_FINITE_LOSS = 5  # NonFiniteLossError: the training loss became NaN or infinite
EXIT_SEARCH_FAILED = 6  # SearchFailed: `make tune` gave up, or a chosen trial's final run failed
EXIT_SIGINT = 128 + signal.SIGINT  # 130: stopped by Ctrl-C (process.run_stage: 128 + the signal's number)
EXIT_SIGTERM = 128 + signal.SIGTERM  # 143: stopped by SIGTERM

EXIT_CODES: dict[int, str] = {
    EXIT_OK: "success",
    EXIT_FAILURE: "another user-facing failure",
    EXIT_CONFIG: "a wrong param or setting",
    EXIT_DATA: "a missing, corrupt or unwritable file; a full disk",
    EXIT_TRACKING: "the MLflow store cannot be reached or used",
    EXIT_NON_FINITE_LOSS: "the training loss became NaN or infinite",
    EXIT_SEARCH_FAILED: "a search gave up, or a final run failed",
    EXIT_SIGINT: "interrupted by SIGINT",
    EXIT_SIGTERM: "stopped by SIGTERM",
}


class VaepipeError(Exception):
    """A failure caused by the user's input (params, data files, tracking server), not by a bug.

    The message is printed as-is: it names the bad value and what is expected.
    """

    exit_code = EXIT_FAILURE


class ConfigError(VaepipeError):
    """A value in params.yaml is wrong. Exit code 2, like a command-line usage error."""

    exit_code = EXIT_CONFIG


class DataError(VaepipeError):
    """A data file is missing, corrupt or not what it claims to be."""

    exit_code = EXIT_DATA


class DiskFull(DataError):
    """No space left (ENOSPC, or EDQUOT: over quota) on the filesystem an output is written to.

    Exit code 3, as for the other files that cannot be read or written; the message names the path, the
    space needed if known and the space free (paths.disk_full_error builds it).
    """


def cause_of_type(error: BaseException | None, kind: type[E] | tuple[type[E], ...],
                  where: Callable[[E], bool] = lambda _: True) -> E | None:
    """`error` itself or the first exception up its chain of causes (`__cause__`, else `__context__`) that
    is a `kind` and satisfies `where`; None if none is.

    Libraries re-raise a failure as their own exception (h5py, zipfile, Keras's saving code, SQLAlchemy,
    MLflow's HTTP client); the chain still holds the one that says why.
    """
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, kind) and where(error):
            return error
        error = error.__cause__ or error.__context__
    return None


def disk_full_cause(error: BaseException) -> OSError | None:
    """The ENOSPC/EDQUOT OSError behind `error` (itself, or up its chain of causes), if any."""
    return cause_of_type(error, OSError, lambda cause: cause.errno in (errno.ENOSPC, errno.EDQUOT))


def permission_cause(error: BaseException) -> OSError | None:
    """The EACCES/EPERM/EROFS OSError behind `error` (a read-only directory or file system), if any."""
    return cause_of_type(error, OSError, lambda cause: cause.errno in (errno.EACCES, errno.EPERM, errno.EROFS))


class TrackingError(VaepipeError):
    """The MLflow tracking store cannot be reached or used."""

    exit_code = EXIT_TRACKING


class NonFiniteLossError(VaepipeError):
    """The training loss became NaN or infinite (train/callbacks.check_finite; the last good checkpoint is kept)."""

    exit_code = EXIT_NON_FINITE_LOSS


class SearchFailed(VaepipeError):
    """`make tune` gave up after too many failed trials, or a chosen trial's final run failed."""

    exit_code = EXIT_SEARCH_FAILED


class CheckpointBusy(VaepipeError):
    """Another live train process holds this run's checkpoint (e.g. one orphaned by a killed `dvc`)."""

    exit_code = EXIT_FAILURE


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
