"""Corrupt files (reliability item 4): an unreadable checkpoint is moved aside and training starts from
scratch; an unreadable .keras file is one line naming it and the fix; a torn epoch-log row never breaks
a resume. Real Keras models and real files, damaged the ways a disk or a kill damages them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import keras
import numpy as np
import pytest
from test_errors import run_script

from vaepipe import paths
from vaepipe.config import ModelParams, TrainParams
from vaepipe.errors import DataError
from vaepipe.model import build_vae, load_vae
from vaepipe.train.checkpoint import Checkpoint
from vaepipe.train.epoch_end import EpochEnd, keep_epochs_before, read_log
from vaepipe.train.retention import keep_other_checkpoints

KEY = "0123456789abcdef"


def compiled_vae(latent_dim: int = 2, seed: int = 1):
    """A compiled VAE whose variables have the paths of a stage's only model (Keras numbers repeated
    names per session: seed_generator_2 for the second model's)."""
    keras.backend.clear_session()
    vae = build_vae(ModelParams(latent_dim=latent_dim), TrainParams(beta=0.5, seed=seed), binarize="none")
    vae.compile(optimizer=keras.optimizers.Adam(1e-3, name="adam"))  # one name: its variables' paths
    return vae


def weights(model) -> list[np.ndarray]:
    return [keras.ops.convert_to_numpy(v).copy() for v in model.variables]


@pytest.fixture
def checkpoint_dir(tmp_path) -> Path:
    """A real checkpoint of 3 epochs (with its run id and epoch log), of a model with non-initial weights."""
    directory = tmp_path / "checkpoints" / KEY
    directory.mkdir(parents=True)
    vae = compiled_vae()
    checkpoint = Checkpoint(directory, KEY)
    checkpoint.restore(vae)
    vae.optimizer.build(vae.trainable_variables)  # as training does
    for weight in vae.weights:
        weight.assign(np.full(weight.shape, 0.25, dtype=weight.dtype))
    checkpoint.write(3, logged=3)
    (directory / "mlflow_run_id").write_text("run-of-the-lost-epochs")
    (directory / "train_log.csv").write_text("epoch,loss\n0,3.0\n1,2.0\n2,1.0\n")
    return directory


def test_an_intact_checkpoint_restores_its_weights(checkpoint_dir):
    vae = compiled_vae(seed=2)
    assert Checkpoint(checkpoint_dir, KEY).restore(vae) == 3
    assert all(np.all(w == 0.25) for w in (keras.ops.convert_to_numpy(v) for v in vae.weights))


def _npz(directory: Path) -> Path:
    return directory / json.loads((directory / "state.json").read_text())["weights"]


def _flip_middle_byte(file: Path) -> None:
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    file.write_bytes(bytes(data))


DAMAGE = {  # how, and what the one line gives as the reason
    "npz empty": (lambda d: _npz(d).write_bytes(b""), "No data left in file|empty|not a zip"),
    "npz truncated": (lambda d: _npz(d).write_bytes(_npz(d).read_bytes()[: _npz(d).stat().st_size // 2]),
                      "zip|truncated|EOF"),
    "npz bad CRC": (lambda d: _flip_middle_byte(_npz(d)), "CRC"),
    "npz missing": (lambda d: _npz(d).unlink(), "No such file"),
    "npz of another model": (lambda d: _write_other_model(_npz(d)), "has shape"),
    "state.json empty": (lambda d: (d / "state.json").write_text(""), "state.json: Expecting value"),
    "state.json truncated": (lambda d: (d / "state.json").write_text((d / "state.json").read_text()[:20]),
                             "state.json: Unterminated string|state.json: Expecting"),
    "state.json a list": (lambda d: (d / "state.json").write_text("[1, 2]"), "holds a list, not an object"),
    "state.json without weights": (lambda d: _edit_state(d, weights=None), "weights None is not"),
    "state.json epoch as text": (lambda d: _edit_state(d, epoch="3"), "epoch '3'"),
    "state.json weights outside": (lambda d: _edit_state(d, weights="../../elsewhere.npz"), "weights '../../"),
}


def _edit_state(directory: Path, **changes) -> None:
    state = json.loads((directory / "state.json").read_text())
    state.update(changes)
    (directory / "state.json").write_text(json.dumps({k: v for k, v in state.items() if v is not None}))


def _write_other_model(npz: Path) -> None:
    """The same variable paths with other shapes (latent_dim 3): only the last ones fail to fit."""
    other = compiled_vae(latent_dim=3)
    other_dir = npz.parent.parent / "other"
    other_dir.mkdir()
    checkpoint = Checkpoint(other_dir, KEY)
    checkpoint.restore(other)
    other.optimizer.build(other.trainable_variables)
    checkpoint.write(3, logged=3)
    npz.write_bytes(_npz(other_dir).read_bytes())


@pytest.mark.parametrize("damage", DAMAGE)
def test_an_unreadable_checkpoint_is_moved_aside_and_training_starts_from_scratch(checkpoint_dir, damage, capsys):
    damage_files, reason = DAMAGE[damage]
    damage_files(checkpoint_dir)
    before = {f.name: f.read_bytes() for f in checkpoint_dir.iterdir()}
    vae = compiled_vae(seed=2)
    initial = weights(vae)

    assert Checkpoint(checkpoint_dir, KEY).restore(vae) == 0  # no exception: from scratch

    assert all(np.array_equal(a, b) for a, b in zip(weights(vae), initial, strict=True))  # nothing half-loaded
    assert checkpoint_dir.is_dir() and not any(checkpoint_dir.iterdir())  # a fresh, empty checkpoint
    moved = [p for p in checkpoint_dir.parent.iterdir() if p.name.startswith(f"{KEY}.corrupt-")]
    assert len(moved) == 1
    # Moved, not deleted: every file as it was, the run id of the lost epochs included (so the fresh
    # start, which finds no run id beside its checkpoint, opens a new MLflow run).
    assert {f.name: f.read_bytes() for f in moved[0].iterdir()} == before
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1, lines
    line = re.fullmatch(rf"train: checkpoint {re.escape(str(checkpoint_dir))} is unreadable \((.+)\); "
                        rf"moved it to {re.escape(str(moved[0]))}; training from scratch", lines[0])
    assert line and re.search(reason, line.group(1)), lines[0]


def test_a_second_corrupt_checkpoint_in_the_same_second_gets_its_own_name(checkpoint_dir):
    for _ in range(2):
        (checkpoint_dir / "state.json").write_text("{")
        Checkpoint(checkpoint_dir, KEY).restore(compiled_vae())
    assert len(list(checkpoint_dir.parent.glob(f"{KEY}.corrupt-*"))) == 2


def test_moved_aside_checkpoints_are_not_removed_with_the_stale_ones(checkpoint_dir, monkeypatch, capsys):
    monkeypatch.setattr(paths, "CHECKPOINTS_DIR", checkpoint_dir.parent)
    monkeypatch.setattr(paths, "ROOT", checkpoint_dir.parent.parent)
    (checkpoint_dir / "state.json").write_text("[]")
    Checkpoint(checkpoint_dir, KEY).restore(compiled_vae())
    stale = checkpoint_dir.parent / "stale-key"
    stale.mkdir()
    (stale / "state.json").write_text("[]")  # another key's, unreadable too: nothing to resume, removed
    capsys.readouterr()

    keep_other_checkpoints(current=checkpoint_dir.parent / "new-key", provenance={"params": "x"})

    left = [p.name for p in checkpoint_dir.parent.iterdir()]  # the (empty) KEY dir is another key's now
    assert len(left) == 1 and left[0].startswith(f"{KEY}.corrupt-"), left
    assert capsys.readouterr().out == ""


# The epoch log: rows appended in place, so a kill can tear the last one.

def _log_with_rows(path: Path, epochs: int) -> bytes:
    end = EpochEnd(path, checkpoint=None, final_epoch=epochs)
    for epoch in range(epochs):
        end._append_row(epoch, {"loss": 100.0 / (epoch + 1), "val_loss": 1.0 / 3 + epoch, "kl": 2.5})
    return path.read_bytes()


TORN = {
    "epoch digits torn": b"1",                     # from "11,...": an epoch that exists already
    "row torn mid-value": b"11,9.0909",
    "garbage bytes": b"\x00\x9f\xff#,,\n\x00",
    "blank and text": b"\n\nnot,a,row\n",
}


@pytest.mark.parametrize("tail", TORN)
def test_a_torn_or_garbage_row_never_breaks_a_resume(tmp_path, tail, capsys):
    log = tmp_path / "train_log.csv"
    intact = _log_with_rows(log, 11)
    log.write_bytes(intact + TORN[tail])

    keep_epochs_before(log, 11)  # the resume after the checkpoint of 11 epochs

    assert log.read_bytes() == intact  # exactly the rows the killed run wrote, nothing else
    assert "dropped" in capsys.readouterr().out
    header, rows = read_log(log)
    assert [row[0] for row in rows] == list(range(11)) and header == ["epoch", "kl", "loss", "val_loss"]
    # The run goes on appending, and the finished log is one the plot stage reads.
    EpochEnd(log, checkpoint=None, final_epoch=12)._append_row(11, {"loss": 1.0, "val_loss": 2.0, "kl": 3.0})
    table = np.genfromtxt(log, delimiter=",", names=True)
    assert list(table["epoch"]) == list(range(12))


def test_an_epoch_log_without_a_valid_header_is_started_anew(tmp_path, capsys):
    log = tmp_path / "train_log.csv"
    log.write_bytes(b"ep")  # the kill came during the first row
    keep_epochs_before(log, 1)
    assert not log.exists()  # so the next row writes the header again
    assert "no valid header" in capsys.readouterr().out


# The saved model.

@pytest.fixture(scope="module")
def saved_model(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("model") / "vae.keras"
    build_vae(ModelParams(), TrainParams(beta=0.5, seed=1), binarize="none").save(path)
    return path.read_bytes()


@pytest.mark.parametrize("damage", ["empty", "truncated", "bad CRC", "text"])
def test_an_unreadable_keras_file_is_one_line_naming_it_and_the_fix(tmp_path, saved_model, damage):
    path = tmp_path / "vae.keras"
    middle = len(saved_model) // 2
    path.write_bytes({"empty": b"", "truncated": saved_model[:middle], "text": b"version https://git-lfs\n",
                      "bad CRC": saved_model[:middle] + bytes([saved_model[middle] ^ 0xFF]) + saved_model[middle + 1:]}
                     [damage])
    with pytest.raises(DataError) as error:
        load_vae(path)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: cannot read the model file (")
    assert f"`dvc checkout {path}`" in message and "`dvc repro -f -s train`" in message


def test_the_evaluate_and_plot_stages_report_a_corrupt_model_in_one_line(tmp_path, saved_model):
    (tmp_path / "vae.keras").write_bytes(saved_model[: len(saved_model) // 3])
    result = run_script("""
        from vaepipe.model import load_vae
        from vaepipe.process import run_stage

        run_stage(lambda: load_vae("vae.keras"))
    """, tmp_path)
    assert result.returncode == 3, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [line for line in result.stderr.splitlines() if "Traceback" in line or line.startswith("error:")]
    assert len(errors) == 1 and "vae.keras: cannot read the model file" in errors[0] and "dvc checkout" in errors[0]
