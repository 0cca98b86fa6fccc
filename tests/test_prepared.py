"""The validation split (held out of the training images, seeded, labels kept) and the checkpoint's
provenance (the code train runs, the data it reads)."""

from __future__ import annotations

import numpy as np
import pytest

from vaepipe import paths, prepared
from vaepipe.config import parse_params
from vaepipe.data import Split
from vaepipe.errors import ConfigError
from vaepipe.imports import SRC, import_closure
from vaepipe.train import provenance


def numbered_split(n: int) -> Split:
    """Image i (n <= 256) has every pixel = i and label i % 10, so any image says where it came from."""
    index = np.arange(n)
    return Split(np.repeat(index.astype(np.uint8)[:, None], 784, axis=1), index % 10)


def test_validation_is_a_seeded_disjoint_subset_in_file_order_with_labels():
    source = numbered_split(250)
    train, validation = prepared.split_off_validation(source, 50, seed=0)
    assert len(train.labels) == 200 and len(validation.labels) == 50
    # Every image lands in exactly one split, with its own label.
    combined = np.concatenate([train.images[:, 0].astype(int), validation.images[:, 0].astype(int)])
    assert sorted(np.concatenate([train.labels, validation.labels])) == sorted(source.labels)
    assert sorted(combined) == sorted(source.images[:, 0].astype(int))
    assert np.all(validation.labels == (validation.images[:, 0] % 10))
    # Spread over the file (a random subset, not its tail) and the same for the same seed only.
    for split in (train, validation):  # each keeps the file's order
        assert np.all(np.diff(split.images[:, 0].astype(int)) > 0)
    assert validation.images[:, 0].min() < 50 and validation.images[:, 0].max() > 200
    again = prepared.split_off_validation(source, 50, seed=0)[1]
    np.testing.assert_array_equal(again.images, validation.images)
    other = prepared.split_off_validation(source, 50, seed=1)[1]
    assert not np.array_equal(other.images, validation.images)


def test_val_size_zero_keeps_every_training_image():
    source = numbered_split(50)
    train, validation = prepared.split_off_validation(source, 0, seed=0)
    assert validation is None and train is source


@pytest.mark.parametrize("data, message", [
    ({"val_size": 60000}, "data.val_size = 60000: must be at most 59995 of the 60000 training images"),
    ({"limit": 1000}, "data.val_size = 10000: must be at most 995 of the 1000 training images (data.limit = 1000)"),
    ({"val_size": -1}, "data.val_size = -1"),
])
def test_val_size_must_leave_images_to_train_on(data, message):
    with pytest.raises(ConfigError) as error:
        parse_params({"data": data})
    assert message in str(error.value)


def test_default_split_is_50k_10k_10k():
    assert parse_params({}).data.val_size == 10000


def test_train_code_closure_is_what_train_runs():
    package = SRC / "vaepipe"
    closure = {path.relative_to(package).as_posix() for path in import_closure(paths.stage_script("train"))}
    # The training core, both loops, and serving.py (tracking logs it as the model's code).
    assert {"train/single_process.py", "train/distributed.py", "train/session.py", "train/epoch_end.py", "model.py",
            "train/inputs.py", "prepared.py", "serving.py", "tracking/__init__.py", "tracking/runs.py"} <= closure
    # Modules only other stages run are not part of it: editing them keeps a checkpoint resumable.
    assert not {"evaluation.py", "plotting.py", "plots.py"} & closure
    assert not any(name.startswith("compare") for name in closure)


# A log message in what the train stage hands the loops (the pruning hook, the model logging and its
# served code) and in the bookkeeping around them: (file, text before, text after). Real edits of string
# literals the stage prints or raises, not comments.
LOG_MESSAGE_EDITS = (
    ("tune/pruning.py", "pruned after epoch", "was pruned after epoch"),
    ("tune/pruning.py", "training without reporting to it", "training on without reporting to it"),
    ("serving.py", "rows in one request", "rows in a single request"),
    ("tracking/model_logging.py", '"logging the model"', '"logging the trained model"'),
    ("train/session.py", "train: resuming after epoch", "train: resuming after finished epoch"),
    ("train/retention.py", "checkpoint removed: no finished epoch", "checkpoint removed: not one finished epoch"),
    ("progress.py", 'f"epoch {epoch + 1}/', 'f"Epoch {epoch + 1}/'),
)


def test_the_checkpoint_key_hashes_training_code_only(tmp_path, monkeypatch):
    """Editing a log message in tune/ (the pruning hook), serving, the model logging or the session leaves
    the checkpoint key, hence an unfinished checkpoint, as it was (tests/e2e/test_stale_checkpoint.py
    resumes one through the stage after such an edit); an edit to the math (objectives), an architecture,
    the input pipeline or a loop changes it."""
    import shutil

    monkeypatch.setattr(provenance, "training_data_sha256", lambda: "d" * 64)  # the data part: not tested here
    params = parse_params({})
    src = tmp_path / "src"
    shutil.copytree(paths.ROOT / "src" / "vaepipe", src / "vaepipe", ignore=shutil.ignore_patterns("__pycache__"))
    before = provenance.key_of(provenance.key_parts(params, src))
    assert before == provenance.checkpoint_key(params)  # the copy is the package
    hashed = {file.relative_to((src / "vaepipe").resolve()).as_posix() for file in provenance.code_files(src)}
    assert not any(name.startswith("tune/") or name in {"serving.py", "tracking/model_logging.py"} for name in hashed)
    for name, old, new in LOG_MESSAGE_EDITS:
        file = src / "vaepipe" / name
        text = file.read_text()
        assert old in text, f"{name} no longer says {old!r}: pick another message"
        file.write_text(text.replace(old, new, 1))
        assert provenance.key_of(provenance.key_parts(params, src)) == before, name
    for numeric in ("objectives.py", "architectures.py", "train/inputs.py", "train/single_process.py",
                    "train/distributed.py", "model.py"):
        file = src / "vaepipe" / numeric
        original = file.read_text()
        file.write_text(original + "\n# an edit\n")
        assert provenance.key_of(provenance.key_parts(params, src)) != before, numeric
        file.write_text(original)
    assert provenance.key_of(provenance.key_parts(params, src)) == before


def test_the_logged_models_input_example_is_a_held_out_training_image_never_a_test_one(tmp_path, monkeypatch):
    """Train logs the model with an input example: validation's first images (train's when data.val_size = 0).
    The test split is evaluate's alone: removed here, and the example is still there."""
    from vaepipe.data import Dataset
    from vaepipe.tracking import model_logging

    monkeypatch.setattr(paths, "PREPARED_DIR", tmp_path / "prepared")
    monkeypatch.setattr(paths, "PREPARED_META", tmp_path / "prepared" / "meta.json")
    test_images = Split(np.full((20, 784), 250, np.uint8), np.zeros(20, np.int64))  # no training image is 250
    for val_size, split in ((10, "validation"), (0, "train")):
        prepared.write_splits(Dataset(numbered_split(100), test_images, "pypi"),
                              parse_params({"data": {"val_size": val_size}}).data)
        paths.prepared_split("test").unlink()
        example = model_logging.prepared_input_example()
        assert example is not None and example.shape == (2, 784) and example.dtype == np.float32, split
        expected = prepared.load_split(paths.prepared_split(split)).images[:2]
        np.testing.assert_array_equal(example, prepared.to_unit_interval(expected), err_msg=split)
