"""A full disk (ENOSPC) in a stage: one line naming the path being written, the space it needs if known
and the space free, exit code 3 (as for other files that cannot be read or written), the previous outputs
unchanged and no temporary file left.

The disk really fills: each test mounts a small tmpfs (so it needs root: it skips naming why without,
and fails under CI=true) and runs the stage in a root on it whose only real entries are the outputs
under test, copied from the `quick` repo; every other entry (code, prepared data, checkpoints, the
MLflow store) is a symlink back to a copy on the ordinary disk. The tmpfs is then filled to the last
byte, so the stage's first write of an output under test is the one that meets ENOSPC.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pipeline_repo import PROJECT, copy_repo, mlflow_runs, run_stage, write_params

from vaepipe.errors import DiskFull

pytestmark = pytest.mark.e2e


@pytest.fixture
def small_fs(tmp_path) -> Path:
    """A 16 MB tmpfs mounted for this test (unmounted after it)."""
    mount = tmp_path / "small"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)],
                            capture_output=True, text=True)
    if result.returncode:
        reason = f"cannot mount a small tmpfs to fill ({result.stderr.strip() or 'mount failed'}; needs root)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"missing prerequisite (CI=true, so this fails rather than skips): {reason}", pytrace=False)
        pytest.skip(reason)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def root_on(small: Path, repo: Path, real: list[str]) -> Path:
    """A repository root on `small`: the paths in `real` copied from `repo` as real files and directories,
    every other top-level entry of `repo` a symlink to it."""
    root = small / "repo"
    root.mkdir()
    tops = {Path(name).parts[0] for name in real}
    for entry in repo.iterdir():
        if entry.name not in tops:
            (root / entry.name).symlink_to(entry)
    for name in real:
        source, dest = repo / name, root / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, dest)
        else:
            shutil.copy2(source, dest)
    return root


def fill(small: Path) -> None:
    """Write a filler file until the filesystem refuses with ENOSPC: nothing is left free."""
    with (small / "filler").open("wb", buffering=0) as handle:
        chunk = b"\0" * 65536
        while True:
            try:
                handle.write(chunk)
            except OSError:  # ENOSPC; then single pages until none is left
                if len(chunk) == 1:
                    break
                chunk = chunk[: len(chunk) // 16 or 1]
    assert os.statvfs(small).f_bavail == 0


def files(root: Path, names: list[str]) -> dict[str, bytes]:
    """Every file under the given paths of root, with its bytes."""
    found = {}
    for name in names:
        path = root / name
        for file in ([path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())):
            found[str(file.relative_to(root))] = file.read_bytes()
    return found


def assert_disk_full(result: subprocess.CompletedProcess, written: str, small: Path) -> str:
    """The stage failed with exit code 3 and one line naming `written` and the free space, no traceback."""
    assert result.returncode == DiskFull.exit_code == 3, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: no space left on device writing {written}: "), result.stderr[-3000:]
    assert f"free on {small}" in last, last
    assert [line for line in result.stderr.splitlines() if line.startswith("error:")] == [last]
    print(f"\n{last}")
    return last


@pytest.fixture
def repo(quick, tmp_path) -> Path:
    """A copy of the `quick` repo on the ordinary disk (the stage's code, data, checkpoints, MLflow store)."""
    return copy_repo(quick, tmp_path / "repo")


def stage_on_full_disk(repo: Path, small: Path, stage: str, real: list[str]) -> tuple[subprocess.CompletedProcess, Path]:
    root = root_on(small, repo, real)
    fill(small)
    # No bytecode: written beside the (symlinked) sources, it would not fill this disk, but stay out of it.
    return run_stage(root, stage, PYTHONDONTWRITEBYTECODE="1"), root


def test_train_on_a_full_disk_keeps_the_previous_model_and_log(repo, small_fs):
    """models/ on the full disk: writing the new model fails; the old model and train_log.csv stay."""
    params = (repo / "params.yaml").read_text().replace("epochs: 2", "epochs: 3")  # a new training run
    (repo / "params.yaml").write_text(params)
    outputs = ["models", "train_log.csv"]
    before = files(repo, outputs)
    result, root = stage_on_full_disk(repo, small_fs, "train", outputs)
    last = assert_disk_full(result, "models/vae.keras", small_fs)
    assert "it needs about" in last and "the size of the version it replaces" in last, last
    assert last.endswith("; the previous vae.keras is unchanged"), last
    assert files(root, outputs) == before, "a previous output changed, or a temporary file was left"
    checkpoint = list((repo / "checkpoints").glob("*/state.json"))
    assert checkpoint, "the trained epochs' checkpoint must be kept for the next run to resume"
    assert sorted(status for _, status in mlflow_runs(repo)) == ["FAILED", "FINISHED"], "the new run is FAILED"


def test_train_log_on_a_full_disk_replaces_neither_log_nor_model(repo, small_fs):
    """train_log.csv on the full disk, models/ on the ordinary one: the new model is complete but must not
    replace the old one while the log that goes with it cannot be written (nothing misleading)."""
    params = (repo / "params.yaml").read_text().replace("epochs: 2", "epochs: 3")
    (repo / "params.yaml").write_text(params)
    before = files(repo, ["models", "train_log.csv"])
    result, root = stage_on_full_disk(repo, small_fs, "train", ["train_log.csv"])
    last = assert_disk_full(result, "train_log.csv", small_fs)
    assert "it needs " in last and "it needs about" not in last, f"the log's size is known: {last}"
    assert files(repo, ["models"]) | files(root, ["train_log.csv"]) == before
    assert sorted(p.name for p in root.iterdir() if p.name.startswith(".train_log")) == []


def test_evaluate_on_a_full_disk_keeps_the_previous_metrics(repo, small_fs):
    before = files(repo, ["metrics.json"])
    result, root = stage_on_full_disk(repo, small_fs, "evaluate", ["metrics.json"])
    assert_disk_full(result, "metrics.json", small_fs)
    assert files(root, ["metrics.json"]) == before
    assert not [p for p in root.iterdir() if p.name.startswith(".metrics")], "a temporary file was left"


def test_prepare_on_a_full_disk_keeps_the_previous_prepared_data(repo, small_fs):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["data"]["limit"] -= 16  # other prepared data than the previous
    write_params(repo, params)
    before = files(repo, ["data/prepared"])
    result, root = stage_on_full_disk(repo, small_fs, "prepare", ["data"])
    assert_disk_full(result, "data/prepared/train.npz", small_fs)
    assert files(root, ["data/prepared"]) == before, "a prepared file changed, or a temporary file was left"


COPYING = """
import os, shutil, sys
from vaepipe.process import run_stage

def main():  # library code writing in place, not through paths.atomic_path
    if sys.argv[1] == "copy":
        shutil.copyfile(sys.argv[2], sys.argv[3])  # its OSError names both files: (source, destination)
    else:
        fd = os.open(sys.argv[3], os.O_WRONLY | os.O_APPEND)  # os.write's OSError names no file
        while True:
            os.write(fd, b"x" * 65536)

run_stage(main)
"""


def test_a_full_disk_outside_the_atomic_writer_is_one_line_too(small_fs, tmp_path):
    """process.run_stage's own net: any ENOSPC that reaches it becomes one line and exit code 3, not a
    traceback; it names the destination when the error does, and never claims the file is unchanged."""
    source, log = tmp_path / "source.bin", small_fs / "copied.bin"
    source.write_bytes(b"y" * 2_000_000)
    log.write_text("row 1\n")
    fill(small_fs)
    program = tmp_path / "copying_stage.py"
    program.write_text(COPYING)
    for how in ("copy", "append"):
        result = subprocess.run([sys.executable, str(program), how, str(source), str(log)], cwd=tmp_path,
                                capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(PROJECT / "src")},
                                timeout=60)
        assert result.returncode == 3 and "Traceback" not in result.stderr, result.stderr[-3000:]
        last = result.stderr.strip().splitlines()[-1]
        if how == "copy":
            assert last.startswith("error: no space left on device writing small/copied.bin: "), last
            assert "the size it needs is not known" in last and f"free on {small_fs}" in last, last
        else:
            assert last == "error: no space left on device writing a file the error does not name", last
        assert "unchanged" not in last
