"""The package's shape: no import cycles, modules a newcomer can read, no reaching into private names."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "vaepipe"
MAX_LINES = 260  # "about 250"


def _name(path: Path) -> str:
    """src/vaepipe/tracking/runs.py -> tracking.runs; a package's __init__ is the package."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts) or "__init__"


def _modules() -> dict[str, ast.Module]:
    return {_name(path): ast.parse(path.read_text(), filename=str(path)) for path in PACKAGE.rglob("*.py")}


def _vaepipe_imports(tree: ast.Module) -> list[tuple[str, list[str]]]:
    """(module, imported names) for every `vaepipe` import anywhere in the file (lazy ones included)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "vaepipe":
            if node.module == "vaepipe":  # from vaepipe import data, paths
                found += [(alias.name, []) for alias in node.names]
            else:
                found.append((node.module.split(".", 1)[1], [alias.name for alias in node.names]))
        elif isinstance(node, ast.Import):
            found += [(alias.name.split(".", 1)[1], []) for alias in node.names
                      if alias.name.startswith("vaepipe.")]
    return found


def test_no_import_cycles():
    graph = {name: {module for module, _ in _vaepipe_imports(tree)} for name, tree in _modules().items()}
    state: dict[str, str] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for child in sorted(graph.get(node, ())):
            assert state.get(child) != "open", "import cycle: " + " -> ".join(stack + [node, child])
            if child not in state:
                visit(child, stack + [node])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [])


def test_no_module_is_too_long_to_read():
    long = {_name(path): n for path in PACKAGE.rglob("*.py") if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_no_private_name_is_imported_from_another_module():
    offenders = []
    modules = _modules()
    for name, tree in modules.items():
        for module, names in _vaepipe_imports(tree):
            offenders += [f"{name} imports {module}.{item}" for item in names if item.startswith("_")]
        for node in ast.walk(tree):  # module._name attribute access, e.g. training._drop_other_checkpoints
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                    and isinstance(node.value, ast.Name) and node.value.id in modules and node.value.id != name):
                offenders.append(f"{name} uses {node.value.id}.{node.attr}")
    assert not offenders, offenders


def test_training_and_distributed_do_not_import_each_other():
    imports = {name: {module for module, _ in _vaepipe_imports(tree)} for name, tree in _modules().items()}
    assert "distributed" not in imports["training"]
    assert "training" not in imports["distributed"]
