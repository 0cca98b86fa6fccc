"""Test-only, copied into a test repo as src/sitecustomize.py by tests/e2e/test_faults.py (so every stage
process imports it at start-up, with dvc's PYTHONPATH=src). Inert unless VAEPIPE_TEST_SIGNAL_GATE is set;
then it names a file, and train's last epoch does not begin before the SIGINT or SIGTERM the test sends
has arrived (the file holds "waiting" meanwhile): however loaded the machine, training cannot finish
before the signal lands. A SIGKILL needs no gate; after GATE_TIMEOUT_S training goes on (the test fails).
With VAEPIPE_TEST_RELEASE_FILE set as well, the last epoch also begins once that file exists: a test
holds a short training open for as long as it needs it running (tests/e2e/test_kill_safety.py).

vaepipe is not imported here (TensorFlow must load after process.use_xla_cache): StopOnSignal is patched
when its module is first imported."""

import importlib.abc
import importlib.machinery
import os
import sys
import time
from pathlib import Path

GATE = os.environ.get("VAEPIPE_TEST_SIGNAL_GATE")
RELEASE = os.environ.get("VAEPIPE_TEST_RELEASE_FILE")
GATE_TIMEOUT_S = 600.0
MODULE = "vaepipe.train.callbacks"


def gate(module) -> None:
    from vaepipe import errors

    original = module.StopOnSignal.on_epoch_begin

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        if epoch == self.params["epochs"] - 1:
            Path(GATE).write_text("waiting")
            deadline = time.monotonic() + GATE_TIMEOUT_S
            while errors.received_signal() is None and time.monotonic() < deadline and not (
                    RELEASE and Path(RELEASE).exists()):
                time.sleep(0.01)  # the signal's handler raises in here, or stop_if_signalled below
        original(self, epoch, logs)

    module.StopOnSignal.on_epoch_begin = on_epoch_begin


class _PatchOnImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != MODULE:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        exec_module = spec.loader.exec_module

        def exec_and_patch(module) -> None:
            exec_module(module)
            gate(module)

        spec.loader.exec_module = exec_and_patch
        return spec


if GATE:
    sys.meta_path.insert(0, _PatchOnImport())
