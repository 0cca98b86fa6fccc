"""DVC experiments by name: the MLflow run id an experiment recorded, and any file of it.

DVC keeps each experiment as a commit under refs/exps/<baseline[:2]>/<baseline[2:]>/<name>, also one
fetched by `dvc exp pull`. Train's outputs (models/mlflow_run_id, val_metrics.json) are DVC-cached, so
they are read through `dvc.api.read` at that commit (DVC's cache holds them once the experiment ran here).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from vaepipe.errors import ConfigError

RUN_ID_PATH = "models/mlflow_run_id"  # in the experiment's commit, relative to the repository root


def _git(root: Path, *args: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    except OSError as error:
        raise ConfigError(f"git is needed to look up DVC experiments: {error}") from None


def experiment_refs(name: str, root: Path) -> list[str]:
    """The git refs of the DVC experiments called `name` (one per baseline commit that has one)."""
    listed = _git(root, "for-each-ref", "--format=%(refname)", "refs/exps/")
    refs = []
    for ref in listed.stdout.split():
        parts = ref.split("/")  # refs, exps, ab, cdef..., name (celery/exec/... namespaces have other shapes)
        if len(parts) == 5 and len(parts[2]) == 2 and len(parts[3]) == 38 and parts[4] == name:
            refs.append(ref)
    return refs


def experiment_run_id(name: str, root: Path) -> str | None:
    """The MLflow run id of DVC experiment `name`, None if no experiment has that name here."""
    refs = experiment_refs(name, root)
    if not refs:
        return None
    if len(refs) > 1:
        baselines = ", ".join(ref.split("/")[2] + ref.split("/")[3][:5] for ref in refs)
        raise ConfigError(f"RUN={name}: DVC experiments of that name exist on several baselines ({baselines}); "
                          "pass the MLflow run id instead")
    run_id = (read_from_experiment(refs[0], RUN_ID_PATH, root) or "").strip()
    if not run_id:
        raise ConfigError(f"RUN={name}: DVC experiment {refs[0]} has no {RUN_ID_PATH} (did its train stage run?)")
    return run_id


def read_from_experiment(rev: str, path: str, root: Path) -> str | None:
    """File `path` (relative to the repository root) as commit `rev` has it, git-tracked or DVC-cached
    (DVC's public API); None if that commit has no such file or DVC's cache lacks it."""
    return read_files_from_experiment(rev, [path], root)[path]


def read_files_from_experiment(rev: str, files: list[str], root: Path) -> dict[str, str | None]:
    """Each of `files` as commit `rev` has it (read_from_experiment's None where it cannot be read), through
    one dvc.api.DVCFileSystem: DVC loads the commit's pipeline once for all of them, not once per file as a
    dvc.api.read each does (about 0.3 s of CPU per load here)."""
    from dvc.api import DVCFileSystem

    texts: dict[str, str | None] = dict.fromkeys(files)
    try:
        fs = DVCFileSystem(str(root), rev=rev)
    except Exception:  # noqa: BLE001  (dvc.api documents no exception types: a missing rev, not a DVC repo)
        return texts
    try:
        for path in files:
            try:
                texts[path] = fs.read_text(path)
            except Exception:  # noqa: BLE001  (a missing path, a cache miss)
                texts[path] = None
    finally:
        fs.close()
    return texts
