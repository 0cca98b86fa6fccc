"""`python -m vaepipe.tune.dvc_one exp run --temp ...`: DVC's own CLI, except that the process runs the
one experiment it stashed and no other.

Why: `dvc exp run --temp` stashes its experiment, then reproduces in a loop until the temp-dir stash is
empty (dvc/repo/experiments/queue/workspace.py, `reproduce`), and each turn reads the first stash entry
before dropping it under DVC's lock (queue/tempdir.py `get`, queue/base.py `get_stash_entry`, which runs a
dropped entry anyway). So a process that finishes its own trial just as another trial's launch has stashed
its entry runs that entry too, alongside the launching process: one trial, two train stages, two MLflow
runs (seen once in CI with two `make tune` processes on one study). Here a process's second look at the
stash finds it empty, and trials.py's launch lock makes its first look see only its own entry.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from dvc.cli import main
from dvc.repo.experiments.exceptions import ExpQueueEmptyError
from dvc.repo.experiments.queue.tempdir import TempDirQueue


def first_entry_only(get: Callable) -> Callable:
    """`get` for one call; every later call finds the queue empty (ends DVC's reproduce loop)."""
    taken: list[bool] = []

    def get_once(queue: TempDirQueue):
        if taken:
            raise ExpQueueEmptyError("vaepipe: one experiment per `dvc exp run --temp` process")
        taken.append(True)
        return get(queue)

    return get_once


if __name__ == "__main__":
    TempDirQueue.get = first_entry_only(TempDirQueue.get)
    sys.exit(main(sys.argv[1:]))
