"""The train stage is not a hub: training's code (src/vaepipe/train/) imports neither the search (tune/)
nor the served model (serving.py) nor the model logging, which the stage hands it (callbacks, an
after-outputs hook); and the session's constructor touches nothing but its own checkpoint directory, the
key, retention and the tracking check being explicit steps (session.open_session, stages/train.py)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from vaepipe import paths
from vaepipe.config import parse_params
from vaepipe.errors import CheckpointBusy
from vaepipe.imports import SRC, import_closure
from vaepipe.train import session
from vaepipe.train.session import TrainingSession, hold_exclusively, open_session

PACKAGE = SRC / "vaepipe"
STAGE = SRC.parent / "stages" / "train.py"
OUTSIDE_TRAINING = ("tune/", "serving.py", "tracking/model_logging.py")


def outside_training(files) -> set[str]:
    names = {Path(file).relative_to(PACKAGE).as_posix() for file in files}
    return {name for name in names if name.startswith(OUTSIDE_TRAINING)}


def test_training_code_imports_neither_tune_nor_serving_nor_model_logging():
    modules = sorted((PACKAGE / "train").glob("*.py"))
    assert {"single_process.py", "distributed.py", "session.py"} <= {module.name for module in modules}
    for module in modules:  # transitively, lazy imports and files named by string included
        assert not outside_training(import_closure(module)), module.name
    # The stage still runs them (they stay train's dvc.yaml deps: tests/test_stage_deps.py): it builds what it hands in.
    assert {"tune/pruning.py", "serving.py", "tracking/model_logging.py"} <= outside_training(import_closure(STAGE))


class Touches:
    """Every file, directory and socket operation Python's audit hooks report while `recording` is on."""

    EVENTS = ("open", "os.mkdir", "os.remove", "os.rmdir", "os.rename", "os.listdir", "os.scandir",
              "shutil.rmtree", "shutil.copyfile", "os.truncate", "socket.connect", "socket.getaddrinfo",
              "urllib.Request", "subprocess.Popen")

    def __init__(self):
        self.recording = False
        self.seen: list[tuple[str, tuple]] = []
        sys.addaudithook(self._hook)  # cannot be removed: it records only while `recording` is on

    def _hook(self, event: str, args: tuple) -> None:
        if self.recording and event in self.EVENTS:
            self.seen.append((event, args))

    def paths_outside(self, directory: Path) -> list[tuple[str, object]]:
        outside = []
        for event, args in self.seen:
            target = args[0] if args else None
            if isinstance(target, (str, bytes, os.PathLike)):
                path = Path(os.fsdecode(target)).resolve()
                if path == directory or directory in path.parents:
                    continue
            elif event == "open" and isinstance(target, int):
                continue  # a file descriptor already opened (inside the directory: checked when it was)
            outside.append((event, target))
        return outside


_TOUCHES: list[Touches] = []


def touches() -> Touches:
    """One hook per process (audit hooks stay for the interpreter's life)."""
    if not _TOUCHES:
        _TOUCHES.append(Touches())
    return _TOUCHES[0]


def tree(root: Path) -> dict[str, bytes | None]:
    return {path.relative_to(root).as_posix(): path.read_bytes() if path.is_file() else None
            for path in sorted(root.rglob("*"))}


@pytest.fixture
def workspace(tmp_path, monkeypatch) -> Path:
    """A repository with checkpoints of other keys that retention would act on: one without a finished
    epoch (retention removes it) and one whose MLflow run a removal would close through the store."""
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.setattr(paths, "ROOT", tmp_path)
    monkeypatch.setattr(paths, "CHECKPOINTS_DIR", tmp_path / "checkpoints")
    # Any talk to a tracking store would be a connection to this closed port.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    empty = tmp_path / "checkpoints" / "no-epoch-yet"
    empty.mkdir(parents=True)
    (empty / "mlflow_run_id").write_text("c" * 32)
    resumable = tmp_path / "checkpoints" / "other-key"
    resumable.mkdir()
    (resumable / "state.json").write_text(json.dumps({"epoch": 2, "weights": "epoch-00002.npz", "key": "other-key",
                                                      "logged": 2, "provenance": {"params": "p"}, "written": 1.0}))
    (resumable / "epoch-00002.npz").write_bytes(b"\0" * 100)
    return tmp_path


def test_constructing_a_session_touches_nothing_outside_its_directory(workspace, monkeypatch):
    from vaepipe.train import provenance

    def no(what):
        def refuse(*args, **kwargs):
            raise AssertionError(f"the session's constructor {what}")
        return refuse

    monkeypatch.setattr(provenance, "code_sha256", no("hashed the source"))
    monkeypatch.setattr(provenance, "training_data_sha256", no("hashed the data"))
    monkeypatch.setattr(session, "keep_other_checkpoints", no("applied retention"))
    before = tree(workspace)
    directory = (workspace / "checkpoints" / "0123456789abcdef").resolve()

    seen = touches()
    seen.seen.clear()
    seen.recording = True
    try:
        made = TrainingSession(parse_params({}), "0123456789abcdef", {"params": "p", "code": "c", "data": "d"},
                               dataset_sha="e" * 64, on_outputs=[no("logged a model")])
    finally:
        seen.recording = False

    assert seen.seen, "the audit hook saw nothing: the test would pass vacuously"
    assert seen.paths_outside(directory) == []  # no other file, directory, socket or process
    after = tree(workspace)
    created = {name: content for name, content in after.items() if name not in before}
    assert created == {"checkpoints/0123456789abcdef": None,
                       "checkpoints/0123456789abcdef/train.lock": str(os.getpid()).encode()}
    assert {name: after[name] for name in before} == before  # the other checkpoints, byte for byte
    assert made.directory.resolve() == directory and made.run_id_file.parent.resolve() == directory
    made._lock.close()


def test_open_session_locks_the_key_before_retention_touches_other_checkpoints(workspace, monkeypatch, capsys):
    from vaepipe.train import provenance

    parts = {"params": "p", "code": "c", "data": "d"}
    monkeypatch.setattr(session, "key_parts", lambda params: parts)
    key = provenance.key_of(parts)
    inputs = SimpleNamespace(train_sha256="e" * 64)
    (workspace / "checkpoints" / "no-epoch-yet" / "mlflow_run_id").unlink()  # no store to close its run in
    (workspace / "checkpoints" / key).mkdir()
    held = hold_exclusively(workspace / "checkpoints" / key)  # another train of this key
    try:
        with pytest.raises(CheckpointBusy):
            open_session(parse_params({}), inputs)
        assert (workspace / "checkpoints" / "no-epoch-yet").is_dir()  # retention has not run
    finally:
        held.close()
    opened = open_session(parse_params({}), inputs)  # the key, the lock, then retention
    assert opened.directory == paths.checkpoint_dir(key) and opened.checkpoint.key == key
    assert opened.checkpoint.provenance == parts
    assert sorted(path.name for path in (workspace / "checkpoints").iterdir()) == sorted([key, "other-key"])
    assert "train: keeping 1 unfinished checkpoint of other settings (checkpoints/other-key: 2 epochs" in capsys.readouterr().out
    opened._lock.close()


def test_the_distributed_loop_runs_extra_callbacks_after_the_end_of_epoch_path_and_stops_when_asked():
    """The chief's loop (mirrored over this machine's one device): each epoch's end-of-epoch path first, then
    the callbacks the stage handed in; a stop one requests ends the run after that epoch, and the chief's
    request is what every worker would receive (chief_decides)."""
    import keras
    import numpy as np

    from vaepipe.train.distributed import DistributedTrainer, _train_epochs, chief_decides
    from vaepipe.train.inputs import batches_per_epoch
    from vaepipe.train.strategy import make_strategy

    params = parse_params({"model": {"arch": "mlp", "hidden": [8], "latent_dim": 2}, "data": {"binarize": "none"},
                           "train": {"batch_size": 16, "epochs": 4, "distribute": "mirrored"}})
    images = np.random.default_rng(0).random((48, 784)).astype(np.float32)
    strategy = make_strategy("mirrored")
    trainer = DistributedTrainer(params, strategy, batches_per_epoch(len(images), params))
    calls: list[tuple[str, int]] = []

    class EndOfEpoch:  # stands in for the session's EpochEnd
        def on_epoch_end(self, epoch, logs):
            calls.append(("end-of-epoch", epoch))

    class StopAfterSecond(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            calls.append(("extra", epoch))
            assert np.isfinite(logs["loss"])
            if epoch == 1:
                self.model.stop_training = True

    extra = keras.callbacks.CallbackList([StopAfterSecond()], model=trainer.vae)
    _train_epochs(trainer, params, 0, images, None, 0, EndOfEpoch(), extra)
    assert calls == [("end-of-epoch", 0), ("extra", 0), ("end-of-epoch", 1), ("extra", 1)]
    decide = chief_decides(strategy)
    assert decide(True) is True and decide(False) is False
