"""Prepared arrays: what prepare writes to data/prepared and the one loader every later stage uses.

No TensorFlow here (prepare must start fast). Each split is an uncompressed .npz of uint8 images and
int64 labels; meta.json records each split's sha256, checked on every load.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from vaepipe import paths
from vaepipe.data import IMAGE_PIXELS, Dataset, Split, sha256_bytes
from vaepipe.errors import DataError


def subset(dataset: Dataset, limit: int | None) -> Dataset:
    """The first `limit` training and test images (all of them when limit is None)."""
    if limit is None:
        return dataset
    cut = lambda s: Split(s.images[:limit], s.labels[:limit])  # noqa: E731
    return Dataset(cut(dataset.train), cut(dataset.test), dataset.source)


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


def verify_prepared(split: Split, path: Path, meta_file: Path) -> None:
    """Check a loaded split against the checksum prepare recorded in meta.json."""
    try:
        meta = json.loads(meta_file.read_text())
        expected = meta["sha256"][path.stem]
    except (OSError, ValueError, KeyError) as error:
        raise DataError(f"{meta_file}: missing or unreadable ({error}); rerun `dvc repro prepare`") from None
    if arrays_sha256(split) != expected:
        raise DataError(f"{path}: contents do not match the sha256 in {meta_file.name} (changed since prepare)")


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
    """Prepared split `name` ('train' or 'test'), checked against the sha256 prepare recorded."""
    path = paths.prepared_split(name)
    split = load_split(path)
    verify_prepared(split, path, paths.PREPARED_META)
    return split


def read_meta() -> dict:
    """data/prepared/meta.json: the dataset, its source and each split's size and sha256."""
    try:
        return json.loads(paths.PREPARED_META.read_text())
    except (OSError, ValueError) as error:
        raise DataError(f"{paths.PREPARED_META}: missing or unreadable ({error}); rerun `dvc repro prepare`") from None


def training_inputs(binarize: str) -> tuple[np.ndarray, np.ndarray, str]:
    """Training and test arrays as the model sees them in training, and the training data's sha256."""
    train, test = load_verified("train"), load_verified("test")
    return (model_inputs(train, binarize, training=True), model_inputs(test, binarize, training=False),
            read_meta()["sha256"]["train"])
