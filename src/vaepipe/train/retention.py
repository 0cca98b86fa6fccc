"""Which checkpoints of other keys a training run keeps beside its own, and removing them all.

A run of one key (params, code, data: provenance.py) leaves the unfinished checkpoints of other keys
in place, so the interrupted run of another setting resumes when that setting runs again, and says
in one line what it keeps and which command removes them. At most MAX_KEPT are kept: beyond that the
oldest (by the time its state.json records it was last written) is removed, and its MLflow run, if
still RUNNING, is closed as KILLED with the tag tracking.KILLED_REASON_TAG saying why, since no run
can continue it any more. A store that cannot be reached leaves that checkpoint in place (one warning
line): removing it would leave its run RUNNING for ever; the next train tries again.

A directory of another key without a finished epoch (the run died before its first checkpoint) or with
an unreadable state.json holds nothing to resume: it is removed, its run closed the same way.
Checkpoints moved aside as unreadable (<key>.corrupt-<time>) are the user's to inspect: only
`make clean-checkpoints` (`python -m vaepipe.train.retention clean`) removes them, with everything else.

A directory a live train holds (its flock on train.lock, session.hold_exclusively) is never touched, by
either: trains of other keys run at the same time (a queue with -j 2, a search's jobs, a repro beside
them) and all share checkpoints/, so one still in its first epoch is starting, not dead.

No TensorFlow here: `make clean-checkpoints` starts in a second or two.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from vaepipe import paths, tracking
from vaepipe.errors import TrackingError

MAX_KEPT = 3  # unfinished checkpoints of other keys kept beside the running one's
STATE = "state.json"  # as checkpoint.Checkpoint.STATE
RUN_ID = "mlflow_run_id"  # as paths.checkpoint_run_id_file
CORRUPT = ".corrupt-"  # as checkpoint.CORRUPT: a directory moved aside as unreadable
LOCK_FILE = "train.lock"  # session.hold_exclusively's: a live train's flock, its pid inside
CLEAN_COMMAND = "make clean-checkpoints"


@dataclass
class Stored:
    """One checkpoint directory as retention sees it."""

    directory: Path
    epochs: int  # finished epochs it holds (0: none, or an unreadable state.json)
    written: float  # Unix time it was last written (state.json's record; its mtime for older ones)
    run_id: str | None
    provenance: dict[str, str] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return sum(file.stat().st_size for file in self.directory.rglob("*") if file.is_file())


def read(directory: Path) -> Stored:
    """What a checkpoint directory holds; never raises for a damaged one (epochs 0)."""
    try:
        run_id = (directory / RUN_ID).read_text().strip() or None
    except OSError:
        run_id = None
    try:
        state = json.loads((directory / STATE).read_text())
    except (OSError, ValueError):
        state = None
    if not isinstance(state, dict):
        state = {}
    epochs = state.get("epoch") if type(state.get("epoch")) is int and state["epoch"] > 0 else 0
    written = state.get("written")
    if not isinstance(written, (int, float)) or isinstance(written, bool):
        try:
            written = (directory / STATE).stat().st_mtime
        except OSError:
            written = directory.stat().st_mtime
    provenance = state.get("provenance") if isinstance(state.get("provenance"), dict) else {}
    return Stored(directory, epochs, float(written), run_id, provenance)


def holder(directory: Path) -> str | None:
    """The pid of the live train holding `directory` (as its lock file says), or None if none holds it.
    Probed without waiting; a probe that gets the lock releases it at once."""
    try:
        with (directory / LOCK_FILE).open() as handle:  # read-only: creates nothing
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free: released as the file closes
            except BlockingIOError:
                return handle.read().strip() or "unknown"
    except OSError:  # no lock file: no train has held it since it was written
        pass
    return None


def keep_other_checkpoints(current: Path, provenance: dict[str, str]) -> None:
    """Before a run of the key whose checkpoint directory is `current`: keep the newest MAX_KEPT
    resumable checkpoints of other keys, remove the rest (oldest first), say in one line what is kept."""
    if not paths.CHECKPOINTS_DIR.exists():
        return
    others = [read(other) for other in sorted(paths.CHECKPOINTS_DIR.iterdir())
              if other != current and other.is_dir() and CORRUPT not in other.name and holder(other) is None]
    resumable = sorted((other for other in others if other.epochs), key=lambda other: other.written, reverse=True)
    for other in others:
        if not other.epochs:
            _remove(other, "checkpoint removed: no finished epoch to resume", say=False)
    for other in resumable:
        changed = [part for part, value in provenance.items() if other.provenance.get(part) != value]
        if other.provenance and "params" not in changed and changed:  # same params: a resume was likely expected
            print(f"train: not resuming the checkpoint of {other.epochs} epochs in {_shown(other.directory)}: "
                  f"it was written with other {' and '.join(changed)}; training from scratch", flush=True)
    kept = resumable[:MAX_KEPT]
    for other in reversed(resumable[MAX_KEPT:]):  # the oldest first
        if not _remove(other, f"checkpoint removed: more than {MAX_KEPT} unfinished checkpoints kept"):
            kept.append(other)
    if kept:
        listed = ", ".join(f"{_shown(other.directory)}: {other.epochs} epoch{'s' * (other.epochs != 1)}"
                           for other in kept)
        count = f"{len(kept)} unfinished checkpoint{'s' * (len(kept) != 1)}"
        print(f"train: keeping {count} of other settings ({listed}; {_megabytes(sum(o.size for o in kept))}); "
              f"`{CLEAN_COMMAND}` removes them", flush=True)


def _remove(stored: Stored, reason: str, say: bool = True, force: bool = False) -> bool:
    """Close the checkpoint's RUNNING MLflow run as KILLED (tagged `reason`), then delete the directory.
    If the store cannot be reached the directory stays (unless `force`: the user asked for it)."""
    outcome = ""
    if stored.run_id:
        try:
            status = tracking.kill_run_if_running(stored.run_id, reason)
        except TrackingError as error:
            kept = "removed it anyway" if force else f"kept it; the next train or `{CLEAN_COMMAND}` tries again"
            print(f"warning: could not close MLflow run {stored.run_id} of checkpoint {_shown(stored.directory)} "
                  f"as KILLED ({error}); {kept}", file=sys.stderr, flush=True)
            if not force:
                return False
        else:
            outcome = f"; its MLflow run {stored.run_id} marked KILLED" if status == "KILLED" else ""
    shutil.rmtree(stored.directory, ignore_errors=True)
    if say:
        epochs = f"{stored.epochs} epoch{'s' * (stored.epochs != 1)}" if stored.epochs else "no finished epoch"
        written = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(stored.written))
        prefix = "clean-checkpoints" if force else "train"
        why = "" if force else f": more than {MAX_KEPT} unfinished checkpoints of other settings"
        print(f"{prefix}: removed checkpoint {_shown(stored.directory)} ({epochs}, last written {written}){why}"
              f"{outcome}", flush=True)
    return True


def clean() -> int:
    """Remove every checkpoint (those moved aside as unreadable too), closing their RUNNING MLflow runs
    as KILLED (best effort); return how many were removed."""
    if not paths.CHECKPOINTS_DIR.exists() or not any(paths.CHECKPOINTS_DIR.iterdir()):
        print(f"clean-checkpoints: no checkpoints in {_shown(paths.CHECKPOINTS_DIR)}", flush=True)
        return 0
    removed = 0
    total = 0
    left = False
    for directory in sorted(paths.CHECKPOINTS_DIR.iterdir()):
        if not directory.is_dir():
            directory.unlink(missing_ok=True)
            continue
        if (pid := holder(directory)) is not None:
            print(f"clean-checkpoints: left {_shown(directory)}: in use by train process {pid}; stop it first to "
                  "remove it", flush=True)
            left = True
            continue
        stored = read(directory)
        total += stored.size
        _remove(stored, f"checkpoint removed by `{CLEAN_COMMAND}`", force=True)
        removed += 1
    if not left:
        shutil.rmtree(paths.CHECKPOINTS_DIR, ignore_errors=True)
    print(f"clean-checkpoints: removed {removed} checkpoint{'s' * (removed != 1)} ({_megabytes(total)})", flush=True)
    return removed


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def _shown(path: Path) -> Path:
    """A path as the stage's messages show it: relative to the repository when inside it."""
    try:
        return path.relative_to(paths.ROOT)
    except ValueError:
        return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vaepipe.train.retention",
                                     description="Training checkpoints kept for resuming.")
    parser.add_argument("command", choices=["clean"], help="clean: remove every checkpoint (make clean-checkpoints)")
    parser.parse_args(argv)
    clean()
    return 0


if __name__ == "__main__":
    sys.exit(main())
