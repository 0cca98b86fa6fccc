"""The one import walker: which `vaepipe` modules a file imports, and a script's transitive closure.

Read with `ast` only (nothing is imported, so no TensorFlow). It counts top-level and lazy imports
(inside functions), relative imports, and package files named by a string (serving.py, which tracking
hands to MLflow to run). Used by the checkpoint key (train.provenance), the dvc.yaml deps test and the
architecture test, so the three can never disagree about what a stage runs.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "vaepipe"
SRC = Path(__file__).resolve().parents[1]  # the directory that holds the package


def module_file(module: str, src: Path = SRC) -> Path | None:
    """The file that defines dotted `module` under src/, or None if it is not a module there."""
    base = src.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def module_name(path: Path, src: Path = SRC) -> str:
    """src/vaepipe/train/session.py -> vaepipe.train.session; a package's __init__ is the package."""
    parts = path.relative_to(src).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _own_package(path: Path, src: Path) -> str:
    """The dotted package a file under src/ belongs to (for relative imports); '' outside src/."""
    try:
        parts = path.relative_to(src).with_suffix("").parts
    except ValueError:
        return ""
    return ".".join(parts if path.name == "__init__.py" else parts[:-1])


def _with_parents(module: str) -> list[str]:
    """Importing a.b.c runs a/__init__, a/b/__init__ and a/b/c."""
    parts = module.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def imported_names(path: Path, src: Path = SRC) -> list[tuple[str, list[str]]]:
    """(dotted vaepipe module, the names taken from it) for every vaepipe import in the file, anywhere.

    `from vaepipe import paths` gives ("vaepipe.paths", []) when paths is a submodule, and
    ("vaepipe", ["__version__"]) for a name defined in the package itself.
    """
    found: list[tuple[str, list[str]]] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _own_package(path, src).split(".")
                base = base[: len(base) - (node.level - 1)]
                parent = ".".join(base + ([node.module] if node.module else []))
            else:
                parent = node.module or ""
            names = []
            for alias in node.names:
                if module_file(f"{parent}.{alias.name}", src):
                    found.append((f"{parent}.{alias.name}", []))
                else:
                    names.append(alias.name)
            if names or not node.names:
                found.append((parent, names))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.endswith(".py"):
            named = src / PACKAGE / node.value
            if "/" not in node.value and named.is_file():
                found.append((f"{PACKAGE}.{named.stem}", []))
    return [(module, names) for module, names in found if module.split(".")[0] == PACKAGE]


def imported_modules(path: Path, src: Path = SRC) -> set[str]:
    """Dotted names of every vaepipe module that importing `path` runs directly (packages included)."""
    return {parent for module, _ in imported_names(path, src)
            for parent in _with_parents(module) if module_file(parent, src)}


def import_closure(script: Path, src: Path = SRC) -> dict[Path, list[str]]:
    """Every vaepipe module file the script runs, transitively -> the import chain that reaches it."""
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
