"""Which `vaepipe` modules each DVC stage runs: the transitive import closure of its stage script, by
the package's one import walker (vaepipe.imports, which the checkpoint key uses too).

Shared by tests/test_stage_deps.py (dvc.yaml declares exactly these) and tests/e2e/test_dvc_status.py
(an edit reruns exactly these).
"""

from __future__ import annotations

import shlex
from pathlib import Path

import yaml

from vaepipe.imports import import_closure

ROOT = Path(__file__).resolve().parents[1]


def stage_scripts(root: Path = ROOT) -> dict[str, Path]:
    """Stage name -> the Python script its dvc.yaml `cmd` runs (e.g. `exec python stages/train.py`)."""
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    scripts = {}
    for name, stage in stages.items():
        found = [token for token in shlex.split(stage["cmd"]) if token.endswith(".py")]
        assert len(found) == 1, f"stage {name}: expected one .py script in its cmd, got {stage['cmd']!r}"
        scripts[name] = root / found[0]
    return scripts


def stage_closures(root: Path = ROOT) -> dict[str, dict[Path, list[str]]]:
    """Stage name -> {module file relative to root: how the stage reaches it}."""
    src = root / "src"
    return {name: {file.relative_to(root): chain for file, chain in import_closure(script, src).items()}
            for name, script in stage_scripts(root).items()}
