"""Prepared arrays: what prepare writes to data/prepared and the one loader every later stage uses.

No TensorFlow here (prepare must start fast). Splits: `train`, `validation` (held out of the training
images, absent when data.val_size = 0) and `test`, each an uncompressed .npz of uint8 images and
int64 labels; meta.json records each split's sha256, checked on every load. Train fits on `train` and
validates on `validation`; only evaluate reads `test`. Each stage reads its arrays here before it
imports TensorFlow, so a missing or damaged file stops it in a second, not after TensorFlow has loaded.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vaepipe import paths
from vaepipe.config import DataParams
from vaepipe.data import IMAGE_PIXELS, Dataset, Split, sha256_bytes
from vaepipe.errors import DataError


def subset(dataset: Dataset, limit: int | None) -> Dataset:
    """The first `limit` training and test images (all of them when limit is None)."""
    if limit is None:
        return dataset
    cut = lambda s: Split(s.images[:limit], s.labels[:limit])  # noqa: E731
    return Dataset(cut(dataset.train), cut(dataset.test), dataset.source)


def split_off_validation(train: Split, size: int, seed: int) -> tuple[Split, Split | None]:
    """Hold `size` training images out for validation: (the rest, the held-out ones), both in file order.

    The held-out images are the first `size` of a permutation drawn by numpy's default_rng(seed), so
    they are a uniformly random subset (MNIST-style files are not shuffled by class, but nothing here
    assumes it), the same on every machine for the same seed; labels are kept.
    """
    if size == 0:
        return train, None
    held_out = np.zeros(len(train.labels), dtype=bool)
    held_out[np.random.default_rng(seed).permutation(len(train.labels))[:size]] = True
    pick = lambda mask: Split(np.ascontiguousarray(train.images[mask]), train.labels[mask])  # noqa: E731
    return pick(~held_out), pick(held_out)


def arrays_sha256(split: Split) -> str:
    return sha256_bytes(split.images.tobytes() + split.labels.tobytes())


def save_split(split: Split, path: Path) -> None:
    """Write a split as an uncompressed .npz (fast to load, no pickles)."""
    with path.open("wb") as handle:
        np.savez(handle, images=split.images, labels=split.labels)


def load_split(path: Path) -> Split:
    """Read a prepared split, refusing a missing, truncated or malformed file with a clear error."""
    if not path.exists():
        raise DataError(f"{path}: prepared data not found; run `dvc repro prepare`")
    try:
        with np.load(path, allow_pickle=False) as arrays:
            images, labels = arrays["images"], arrays["labels"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as error:
        raise DataError(f"{path}: not a readable prepared split ({error}); rerun `dvc repro prepare`") from None
    if images.ndim != 2 or images.shape[1] != IMAGE_PIXELS or images.dtype != np.uint8:
        raise DataError(f"{path}: images have shape {images.shape} dtype {images.dtype}, expected (N, 784) uint8")
    if labels.shape != (images.shape[0],):
        raise DataError(f"{path}: {labels.shape[0]} labels for {images.shape[0]} images")
    return Split(images, labels)


def verify_prepared(split: Split, path: Path, meta: dict) -> None:
    """Check a loaded split against the checksum prepare recorded in meta.json (`read_meta()`)."""
    expected = meta.get("sha256", {}).get(path.stem)
    if expected is None:
        raise DataError(f"{paths.PREPARED_META} records no sha256 for {path.stem}; rerun `dvc repro prepare`")
    if arrays_sha256(split) != expected:
        raise DataError(f"{path}: contents do not match the sha256 in meta.json (changed since prepare)")


def to_unit_interval(images: np.ndarray) -> np.ndarray:
    """uint8 pixels to float32 in [0, 1], as the tutorial scales them (x / 255)."""
    return images.astype(np.float32) / 255.0


def binarize(x: np.ndarray, mode: str, seed: int) -> np.ndarray:
    """Fixed binarization of [0,1] images: 'static' thresholds at 0.5, 'dynamic' draws Bernoulli(x) once.

    Training with 'dynamic' redraws every batch inside the model; this function fixes the test set.
    """
    if mode == "none":
        return x
    if mode == "static":
        return (x > 0.5).astype(np.float32)
    if mode == "dynamic":
        return (np.random.default_rng(seed).random(x.shape, dtype=np.float32) < x).astype(np.float32)
    raise ValueError(f"unknown binarization {mode!r}")


TEST_BINARIZATION_SEED = 0  # the fixed draw that turns the test set into binary images (dynamic mode)


def model_inputs(split: Split, mode: str, training: bool) -> np.ndarray:
    """The float32 array a model sees for a split under a binarization mode.

    Dynamic training data stays continuous: the model redraws Bernoulli(pixel) for every batch.
    The test set is binarized once, so every evaluation scores the same binary images.
    """
    x = to_unit_interval(split.images)
    if mode == "dynamic" and training:
        return x
    return binarize(x, mode, seed=TEST_BINARIZATION_SEED)


def load_verified(name: str) -> Split:
    """Prepared split `name` ('train', 'validation' or 'test'), checked against the sha256 prepare recorded."""
    path = paths.prepared_split(name)
    split = load_split(path)
    verify_prepared(split, path, read_meta())
    return split


def write_splits(dataset: Dataset, params: DataParams) -> dict:
    """Split off the validation images and write data/prepared: each split's .npz, then meta.json (the
    one writer), every file renamed into place only when complete. Returns what meta.json records."""
    train, validation = split_off_validation(dataset.train, params.val_size, params.split_seed)
    splits = {"train": train, "validation": validation, "test": dataset.test}
    paths.PREPARED_DIR.mkdir(parents=True, exist_ok=True)
    meta = {
        "dataset": params.dataset,
        "source": dataset.source,
        **{f"n_{name}": 0 if split is None else len(split.labels) for name, split in splits.items()},
        "validation": {"val_size": params.val_size, "split_seed": params.split_seed,
                       "chosen": "first val_size of numpy default_rng(split_seed).permutation(training images)"},
        "sha256": {name: arrays_sha256(split) for name, split in splits.items() if split is not None},
    }
    with paths.replaced_together() as outputs:  # a failure (a full disk) replaces none of them
        for name, split in splits.items():
            if split is not None:
                with outputs.write(paths.prepared_split(name)) as tmp:
                    save_split(split, tmp)
        with outputs.write(paths.PREPARED_META) as tmp:
            tmp.write_text(json.dumps(meta, indent=2) + "\n")
    for name, split in splits.items():
        if split is None:  # data.val_size = 0: no validation split, and no stale one left behind
            paths.prepared_split(name).unlink(missing_ok=True)
    return meta


def read_meta(meta_file: Path | None = None) -> dict:
    """data/prepared/meta.json: the dataset, its source and each split's size and sha256 (the one reader)."""
    meta_file = meta_file or paths.PREPARED_META
    try:
        meta = json.loads(meta_file.read_text())
        if not isinstance(meta, dict):
            raise ValueError(f"holds a {type(meta).__name__}, not an object")
        return meta
    except (OSError, ValueError) as error:
        raise DataError(f"{meta_file}: missing or unreadable ({error}); rerun `dvc repro prepare`") from None


@dataclass(frozen=True)
class TrainingInputs:
    """What the train stage reads: never the test split."""

    x_train: np.ndarray
    x_val: np.ndarray | None  # None when data.val_size = 0
    train_sha256: str  # the training images' sha256 (the run's data tag)


def has_validation() -> bool:
    return read_meta().get("n_validation", 0) > 0


def held_out_split() -> str:
    """The split of held-out images outside evaluate (figures, the logged model's example): validation,
    or train when data.val_size = 0; never test, which only evaluate reads."""
    return "validation" if has_validation() else "train"


def training_inputs(binarize: str) -> TrainingInputs:
    """Training and validation arrays as the model sees them in training, with their checksums."""
    train = load_verified("train")
    validation = load_verified("validation") if has_validation() else None
    return TrainingInputs(
        x_train=model_inputs(train, binarize, training=True),
        x_val=None if validation is None else model_inputs(validation, binarize, training=False),
        train_sha256=read_meta()["sha256"]["train"],
    )


@dataclass(frozen=True)
class EvaluationData:
    """What the evaluate stage reads: the test split, and the training split for the kNN probe (its
    deterministic view), both as the model sees them."""

    x_test: np.ndarray
    test_labels: np.ndarray
    x_train: np.ndarray
    train_labels: np.ndarray


def evaluation_data(binarize: str) -> EvaluationData:
    test, train = load_verified("test"), load_verified("train")
    return EvaluationData(model_inputs(test, binarize, training=False), test.labels,
                          model_inputs(train, binarize, training=False), train.labels)


@dataclass(frozen=True)
class FigureData:
    """What the plot stage draws from: held-out images (validation's; the training split's when
    data.val_size = 0, never test's) and their model inputs."""

    split: str
    images: Split
    x: np.ndarray


def figure_data(binarize: str) -> FigureData:
    split = held_out_split()
    images = load_verified(split)
    return FigureData(split, images, model_inputs(images, binarize, training=False))


def training_data_sha256() -> str:
    """One hash of every split training reads (train, validation: never test), from meta.json."""
    hashes = {name: digest for name, digest in read_meta()["sha256"].items() if name != "test"}
    return sha256_bytes(json.dumps(hashes, sort_keys=True).encode())
