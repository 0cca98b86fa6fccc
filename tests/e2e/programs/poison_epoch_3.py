"""Test-only stage, run as `python tests/e2e/programs/poison_epoch_3.py` in a test repo (cwd, with
PYTHONPATH=src): stages/train.py, except that epoch 3 reports a NaN loss, so train stops with a checkpoint
of 2 epochs (exit code 5). Used by test_faults and test_stale_checkpoint."""

import math
import runpy
import sys

from vaepipe.train import epoch_end

original = epoch_end.EpochEnd.on_epoch_end  # its first step is the NaN check


def poisoned(self, epoch, logs=None):
    if epoch == 2:
        logs["loss"] = math.nan
    return original(self, epoch, logs)


epoch_end.EpochEnd.on_epoch_end = poisoned
sys.argv = ["stages/train.py"]
runpy.run_path("stages/train.py", run_name="__main__")
