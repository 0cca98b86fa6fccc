"""The package's shape: no import cycles, no reaching into another module's private names, stage scripts
that only parse params and call the package, and two training loops that do not depend on each other.
Imports are read by the package's one walker (vaepipe.imports)."""

from __future__ import annotations

import ast
from pathlib import Path

from vaepipe.imports import SRC, import_closure, imported_modules, imported_names, module_name

PACKAGE = SRC / "vaepipe"
STAGES = SRC.parent / "stages"
STAGE_MAX_STATEMENTS = 15  # a stage script's main(): read params, call the package, write, log (a screenful)


def _graph() -> dict[str, set[str]]:
    """Module -> the vaepipe modules it imports (packages included), for every module of the package."""
    return {module_name(path): imported_modules(path) - {module_name(path)} for path in PACKAGE.rglob("*.py")}


def test_no_import_cycles():
    graph = _graph()
    # A package's __init__ runs when any of its modules is imported: that edge is not a cycle.
    graph = {name: {child for child in children if not name.startswith(child + ".")} for name, children in graph.items()}
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


def test_no_private_name_is_imported_from_another_module():
    offenders = []
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    for name, path in modules.items():
        for module, names in imported_names(path):
            offenders += [f"{name} imports {module}.{item}" for item in names if item.startswith("_")]
        short = {module.rsplit(".", 1)[-1] for module in modules if module != name}
        for node in ast.walk(ast.parse(path.read_text())):  # module._name, e.g. checkpoint._assign
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                    and isinstance(node.value, ast.Name) and node.value.id in short
                    and node.value.id != name.rsplit(".", 1)[-1]):
                offenders.append(f"{name} uses {node.value.id}.{node.attr}")
    assert not offenders, offenders


def test_the_two_training_loops_do_not_import_each_other():
    graph = _graph()
    assert "vaepipe.train.distributed" not in graph["vaepipe.train.single_process"]
    assert "vaepipe.train.single_process" not in graph["vaepipe.train.distributed"]
    # Both end their epochs through the session's one end-of-epoch path.
    for loop in ("vaepipe.train.single_process", "vaepipe.train.distributed"):
        assert "vaepipe.train.session" in graph[loop], loop


def test_stage_scripts_are_thin():
    """A stage script defines main() and nothing else, main() stays short, and all logic is in the package."""
    for script in sorted(STAGES.glob("*.py")):
        tree = ast.parse(script.read_text())
        functions = [node for node in tree.body if isinstance(node, ast.FunctionDef)]
        assert [f.name for f in functions] == ["main"], f"{script.name}: defines {[f.name for f in functions]}"
        assert not [node for node in tree.body if isinstance(node, ast.ClassDef)], f"{script.name} defines a class"
        statements = sum(1 for node in ast.walk(functions[0]) if isinstance(node, ast.stmt)) - 1
        assert statements <= STAGE_MAX_STATEMENTS, f"{script.name}: main() has {statements} statements"


def _third_party(path: Path) -> set[str]:
    """Top-level names of the absolute imports in a file, anywhere in it."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_only_tracking_talks_to_mlflow():
    """serving.py is the logged model's own code, run by MLflow's pyfunc loader."""
    talkers = {module_name(path) for path in PACKAGE.rglob("*.py") if "mlflow" in _third_party(path)}
    assert {name for name in talkers if not name.startswith("vaepipe.tracking")} <= {"vaepipe.serving"}, talkers


def test_only_tune_talks_to_optuna():
    talkers = {module_name(path) for path in PACKAGE.rglob("*.py") if "optuna" in _third_party(path)}
    assert talkers and all(name.startswith("vaepipe.tune") for name in talkers), talkers


def test_prepare_runs_no_tensorflow():
    """prepare imports neither TensorFlow nor Keras, itself or through the package (its start-up stays quick)."""
    script = STAGES / "prepare.py"
    files = {script, *import_closure(script)}
    heavy = {str(file.name): names & {"tensorflow", "keras"} for file in files if (names := _third_party(file))}
    assert not any(heavy.values()), heavy


def test_only_tune_talks_to_optuna_and_its_driver_runs_no_tensorflow():
    talkers = {module_name(path) for path in PACKAGE.rglob("*.py") if "optuna" in _third_party(path)}
    assert talkers and all(name.startswith("vaepipe.tune") for name in talkers), talkers
    # `make tune` and its status never import TensorFlow (7 s and ~760 MB): only the trial's callback does.
    driver = PACKAGE / "tune" / "__main__.py"
    files = {driver, *import_closure(driver)}
    heavy = {file.name: names & {"tensorflow", "keras"} for file in files if (names := _third_party(file))}
    assert not any(heavy.values()), heavy
