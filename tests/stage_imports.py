"""Which `vaepipe` modules each DVC stage runs: the transitive import closure of its stage script.

Read with `ast` only (nothing is imported, so no TensorFlow). Shared by tests/test_stage_deps.py
(dvc.yaml declares exactly these) and tests/e2e/test_dvc_status.py (an edit reruns exactly these).
"""

from __future__ import annotations

import ast
import shlex
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "vaepipe"


def stage_scripts(root: Path = ROOT) -> dict[str, Path]:
    """Stage name -> the Python script its dvc.yaml `cmd` runs (e.g. `exec python stages/train.py`)."""
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    scripts = {}
    for name, stage in stages.items():
        found = [token for token in shlex.split(stage["cmd"]) if token.endswith(".py")]
        assert len(found) == 1, f"stage {name}: expected one .py script in its cmd, got {stage['cmd']!r}"
        scripts[name] = root / found[0]
    return scripts


def module_file(module: str, src: Path) -> Path | None:
    """The file that defines dotted `module` under src/, or None if it is not a module there."""
    base = src.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _own_package(path: Path, src: Path) -> str | None:
    """The dotted package a file under src/ belongs to (for relative imports)."""
    try:
        parts = path.relative_to(src).with_suffix("").parts
    except ValueError:
        return None
    return ".".join(parts if path.name == "__init__.py" else parts[:-1])


def _with_parents(module: str) -> list[str]:
    """Importing a.b.c runs a/__init__, a/b/__init__ and a/b/c."""
    parts = module.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def imported_modules(path: Path, src: Path) -> set[str]:
    """Dotted names of the `vaepipe` modules that `path` imports anywhere: top level, inside functions
    (lazy imports), relative imports, and files of the package named by file name (e.g. serving.py,
    which tracking.log_model hands to MLflow to run)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package_dir = src / PACKAGE
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = (_own_package(path, src) or "").split(".")
                base = base[: len(base) - (node.level - 1)]
                parent = ".".join(base + ([node.module] if node.module else []))
            else:
                parent = node.module or ""
            found.add(parent)
            # `from vaepipe import paths`: paths is a submodule; `from vaepipe import __version__` is not.
            found.update(f"{parent}.{alias.name}" for alias in node.names
                         if module_file(f"{parent}.{alias.name}", src))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.endswith(".py"):
            named = package_dir / node.value
            if "/" not in node.value and named.is_file():
                found.add(f"{PACKAGE}.{named.stem}")
    return {parent for module in found if module.split(".")[0] == PACKAGE
            for parent in _with_parents(module) if module_file(parent, src)}


def import_closure(script: Path, src: Path) -> dict[Path, list[str]]:
    """Every `vaepipe` module file the script runs, transitively -> the import chain that reaches it."""
    chains: dict[Path, list[str]] = {}
    todo = [(script, [script.name])]
    while todo:
        path, chain = todo.pop()
        for module in sorted(imported_modules(path, src)):
            file = module_file(module, src)
            if file not in chains:
                chains[file] = chain + [module]
                todo.append((file, chains[file]))
    return chains


def stage_closures(root: Path = ROOT) -> dict[str, dict[Path, list[str]]]:
    """Stage name -> {module file relative to root: how the stage reaches it}."""
    src = root / "src"
    return {name: {file.relative_to(root): chain for file, chain in import_closure(script, src).items()}
            for name, script in stage_scripts(root).items()}
