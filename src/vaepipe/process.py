"""A stage's process: set up (XLA's compile cache), run its main function, and exit with the code its
outcome calls for (vaepipe.errors' exit codes, 128 + a signal's number) and one line saying why."""

from __future__ import annotations

import atexit
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from vaepipe.errors import (
    DataError,
    VaepipeError,
    cause_of_type,
    disk_full_cause,
    interruptible,
    permission_cause,
    received_signal,
)


def run_stage(main: Callable[[], None], on_rerun: str | None = None, draws_figures: bool = False) -> None:
    """Run a stage's main function; print user errors as one line and exit non-zero.

    Ctrl-C (SIGINT) and SIGTERM end the stage with 128 + the signal number (130, 143), after the
    stage's own cleanup ran (outputs left as they were, MLflow run marked KILLED). The message names
    the stage (its script's name) and says what the next `dvc repro` does: `on_rerun`, or by default
    that it runs the stage again. That holds too when library code turned the signal's exception into
    another error or lost it (see stop_if_signalled). Only a stage that `draws_figures` loads matplotlib.
    """
    stage = Path(getattr(getattr(main, "__code__", None), "co_filename", sys.argv[0])).stem
    use_xla_cache()
    skip_unused_libraries("sklearn", *(() if draws_figures else ("matplotlib",)))
    quiet_libraries()
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
        error = user_error(error)
        if error is None:
            raise  # a bug: its traceback, the ordinary way
        print(f"error: {error}", file=sys.stderr)
        _say_what_dvc_removed(stage)
        _leave(error.exit_code)
    if received_signal() is not None:  # its exception was lost on the way, and the stage ran to the end
        print(f"interrupted by {signal.Signals(received_signal()).name} while stage {stage} finished: its outputs "
              f"are written, and `dvc repro` stops here", file=sys.stderr)
        _leave(128 + received_signal())
    _leave(0)


def user_error(error: Exception) -> VaepipeError | None:
    """`error` as the one-line failure a user can act on, or None for a bug (shown with its traceback).
    Beside vaepipe's own errors: a full disk, an MLflow SQLite store that is damaged or locked, and a
    read-only directory or file system, whatever library raised them. Stages and the `make` commands
    (compare, serve, promote, tune) report failures through this one mapping."""
    if isinstance(error, VaepipeError):
        return error
    if (full := disk_full_cause(error)) is not None:
        from vaepipe import paths  # a full disk outside paths.atomic_path (e.g. an appended log)

        return paths.disk_full_error(full.filename2 or full.filename, replacing=False)  # (src, dst): dst
    if (broken := _sqlite_cause(error)) is not None:
        return _store_error(broken)
    if (denied := permission_cause(error)) is not None:
        return DataError(f"cannot write {denied.filename2 or denied.filename or 'a file'}: {denied.strerror} "
                         "(a read-only directory or file system?): make it writable, then run `dvc repro` again")
    return None


def _sqlite_cause(error: BaseException) -> BaseException | None:
    """The sqlite3 error behind `error` (MLflow's SQLite store, through SQLAlchemy), if any."""
    import sqlite3

    return cause_of_type(error, sqlite3.Error)


def _store_error(cause: BaseException) -> VaepipeError:
    """One line for an MLflow SQLite store that cannot be used: which store, why, and what to do."""
    from vaepipe.errors import TrackingError

    # The store's URI as vaepipe.tracking shows it, if loaded (it is whenever MLflow's SQLite store failed);
    # not imported here: every stage, prepare too, runs this module, and only tracking/ talks to MLflow.
    store = sys.modules.get("vaepipe.tracking.store")
    uri = store.shown_uri() if store is not None else os.environ.get("MLFLOW_TRACKING_URI", "the MLflow store")

    reason = " ".join(str(cause).split()) or type(cause).__name__
    if "locked" in reason:
        advice = "another process holds it locked (a long write, or a stuck `mlflow ui`): wait for it or stop it"
    else:
        advice = ("the file is damaged (truncated or overwritten): restore it from a backup, or move it aside "
                  "to start a new store (earlier runs are then not in it)")
    return TrackingError(f"MLflow store {uri} cannot be used: {reason}; {advice}")


def _stopped(stage: str, signum: int, rerun: str, how: str) -> NoReturn:
    """End a stage stopped by a signal: one line (two if DVC removed outputs), exit code 128 + the signal's number."""
    unchanged = "" if removed_by_dvc(stage) else " and its outputs are unchanged"
    print(f"interrupted by {signal.Signals(signum).name}: stage {stage} stopped{unchanged} "
          f"({rerun})" + (f" ({how})" if how else ""), file=sys.stderr)
    _say_what_dvc_removed(stage)
    _leave(128 + signum)


def removed_by_dvc(stage: str) -> list[str]:
    """The outputs of `stage` that `dvc repro` deleted before running it and that are still missing.

    DVC removes a stage's outputs before its command unless they are `persist`; none is (so that DVC's
    run-cache holds every stage and going back restores instead of rerunning). Only under DVC (it sets
    DVC_STAGE) and only outputs that dvc.lock records, i.e. a previous run's.
    """
    if os.environ.get("DVC_STAGE") != stage:
        return []
    import yaml

    from vaepipe import paths

    try:
        declared = yaml.safe_load((paths.ROOT / "dvc.yaml").read_text())["stages"][stage]
        locked = yaml.safe_load((paths.ROOT / "dvc.lock").read_text())["stages"][stage]
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return []  # no previous run recorded: nothing of a previous run to bring back
    recorded = {out["path"] for out in locked.get("outs", [])}
    removed = []
    for kind in ("outs", "metrics", "plots"):
        for entry in declared.get(kind, []):
            path, options = (entry, {}) if isinstance(entry, str) else next(iter(entry.items()))
            if path in recorded and not (options or {}).get("persist") and not (paths.ROOT / path).exists():
                removed.append(path)
    return removed


def _say_what_dvc_removed(stage: str) -> None:
    """The stage's last line when `dvc repro` had deleted outputs that the failed run did not replace: the
    one command that brings back the previous version (DVC's cache for cached outputs; git for a
    `cache: false` one, which DVC's checkout skips: metrics.json is committed with dvc.lock)."""
    removed = removed_by_dvc(stage)
    if not removed:
        return
    uncached = set(_uncached_outputs(stage))
    cached = [path for path in removed if path not in uncached]
    command = " && ".join(part for part in (f"dvc checkout {stage}" if cached else "",
                                           "git checkout -- " + " ".join(p for p in removed if p in uncached)
                                           if uncached & set(removed) else "") if part)
    print(f"{stage}: DVC removed {', '.join(removed)} before running this stage; `{command}` brings back the "
          f"previous version", file=sys.stderr)


def _uncached_outputs(stage: str) -> list[str]:
    import yaml

    from vaepipe import paths

    try:
        declared = yaml.safe_load((paths.ROOT / "dvc.yaml").read_text())["stages"][stage]
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return []
    uncached = []
    for kind in ("outs", "metrics", "plots"):
        for entry in declared.get(kind, []):
            if isinstance(entry, dict):
                path, options = next(iter(entry.items()))
                if (options or {}).get("cache") is False:
                    uncached.append(path)
    return uncached


def use_xla_cache() -> None:
    """Before TensorFlow is imported: keep XLA's compiled programs in paths.xla_cache_dir(), so a rerun
    with the same shapes (an edited param, a queued experiment, a resumed run) loads them instead of
    compiling them again (bench/NOTES.md). Same programs, same numbers."""
    from vaepipe import paths

    flags = os.environ.get("TF_XLA_FLAGS", "")
    if "tf_xla_persistent_cache_directory" not in flags:
        directory = paths.xla_cache_dir()
        directory.mkdir(parents=True, exist_ok=True)
        os.environ["TF_XLA_FLAGS"] = f"{flags} --tf_xla_persistent_cache_directory={directory}".strip()


# Loggers whose INFO lines say nothing to the user of a stage: MLflow's system-metrics monitor (started,
# stopping, terminated), its SQLite store's schema set-up (MLflow's and alembic's) and the model
# logger's "Validating input example against model signature".
QUIET_LOGGERS = ("mlflow.system_metrics", "mlflow.store.db.utils", "alembic", "mlflow.pyfunc")


def quiet_libraries() -> None:
    """A stage prints its own lines and errors. Silenced at the source, before the libraries load: the
    loggers above to WARNING; MLflow's artifact download bars and its end-of-run "View run at" lines (the
    stage prints its own link, to MLflow's training view) by MLflow's own switches, environment variables
    it reads. Warnings and errors still show."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def skip_unused_libraries(*names: str) -> None:
    """Before TensorFlow is imported: TensorFlow imports all of Keras, and Keras imports its scikit-learn
    wrappers (MLflow brings scikit-learn) and keras.visualization (matplotlib) whenever they are installed.
    No stage uses the first, only plot the second; they cost about 1.5 s and 1 s of a stage's 10 s start
    (python -X importtime; bench/NOTES.md). Marked absent in this process only, as Keras expects when
    they are not installed."""
    for name in names:
        sys.modules.setdefault(name, None)


def _leave(code: int) -> NoReturn:
    """End the stage's process now: run the atexit handlers (logging, MLflow), flush, and skip the
    interpreter's teardown, which after importing TensorFlow takes seconds (bench/NOTES.md) and has
    nothing left to do: outputs are written and closed, the MLflow run is ended. A bug's traceback
    (any other exception) still exits the ordinary way."""
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
