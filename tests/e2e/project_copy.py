"""The project's working tree copied elsewhere, and the environment its stage processes run with there:
one implementation for the end-to-end tests (pipeline_repo.make_repo, stage_env) and the benchmark
(bench/run.py puts this folder on sys.path)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path


def clean_env(venv_bin: Path, **extra: str) -> dict[str, str]:
    """This process's environment without what would point a stage elsewhere (MLflow and DVC settings,
    PYTHONPATH, VAEPIPE_EXPERIMENT), with venv_bin first on PATH, quiet stages, and `extra`."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MLFLOW_", "DVC_")) and k not in ("PYTHONPATH", "VAEPIPE_EXPERIMENT")}
    env["PATH"] = f"{venv_bin}{os.pathsep}{env.get('PATH', '')}"
    env["VAEPIPE_QUIET"] = "1"
    env.update(extra)
    return env


def copy_working_tree(source: Path, dest: Path, pathspecs: Sequence[str]) -> None:
    """Copy into dest the files of source that git lists under pathspecs (tracked, and untracked but not
    ignored), as they are in the working tree: uncommitted edits included."""
    listed = subprocess.run(["git", "-C", str(source), "ls-files", "-z", "--cached", "--others", "--exclude-standard",
                             "--", *pathspecs], capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        if (source / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / name, dest / name)
