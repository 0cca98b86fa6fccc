"""No private API of DVC, MLflow, Keras or Optuna in src/vaepipe (DESIGN.md, issue 27): read with `ast`,
nothing imported. Flagged, with file:line:
- imports of their private modules: any dotted part with a leading underscore, `keras.src`, `mlflow.utils`
  and `mlflow.store`, and anything of DVC but `dvc.api` (its documented Python API);
- names with a leading underscore imported from them, or reached as attributes of their modules;
- attributes with a leading underscore that vaepipe itself never defines (so they belong to a library
  object, e.g. `trial._trial_id`), also through `getattr(x, "_name")`;
- strings naming DVC's internal repository layout (`refs/exps`, `.dvc/tmp/exps`).
An upgrade can change any of these without a deprecation. The allow-list below is the exception: each
entry says why no public API exists.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

from vaepipe.imports import PACKAGE, SRC

LIBRARIES = ("dvc", "mlflow", "keras", "optuna")
# namedtuple's documented methods carry a leading underscore only to stay clear of field names.
PUBLIC_UNDERSCORE = frozenset({"_replace", "_asdict", "_fields", "_field_defaults", "_make"})
DVC_LAYOUT = re.compile(r"(^|/)refs/exps(/|$)|\.dvc/tmp|^exps$")
# Names that only a library's internals give (Keras names each SeedGenerator's variable so).
INTERNAL_NAMES = frozenset({"seed_generator_state"})

# No public DVC path runs exactly one `dvc exp run --temp` experiment per process (docs/search.md): the one
# patch vaepipe keeps, run only with the DVC it was tested with (dvc_one.TESTED_DVC, refused otherwise).
DVC_ONE = "dvc_one: one --temp experiment per process; no public path; guarded by dvc_one.TESTED_DVC"
# DVC documents experiments as git refs (refs/exps/<baseline>/<name>, `dvc exp push/pull` move them); no
# dvc.api call finds one by name and baseline, and `dvc exp show --json` costs seconds per lookup.
EXP_REFS = "experiments as git refs under refs/exps: documented by DVC, no dvc.api lookup by name"
# (file under src/vaepipe, the access as `private_accesses` names it) -> why no public API exists.
ALLOWED: dict[tuple[str, str], str] = {
    ("tune/dvc_one.py", "import dvc.cli.main"): DVC_ONE,
    ("tune/dvc_one.py", "import dvc.repo.experiments.exceptions.ExpQueueEmptyError"): DVC_ONE,
    ("tune/dvc_one.py", "import dvc.repo.experiments.queue.tempdir.TempDirQueue"): DVC_ONE,
    ("tune/dvc_one.py", "attribute dvc.repo.experiments.queue.tempdir.TempDirQueue.get"): DVC_ONE,
    ("tune/dvc_one.py", "attribute dvc.repo.experiments.queue.tempdir.TempDirQueue.collect_executor"): DVC_ONE,
    ("tune/trials.py", "string 'refs/exps/'"): EXP_REFS,
    ("experiments.py", "string 'refs/exps/'"): EXP_REFS,
}


def _is_private_module(module: str) -> bool:
    parts = module.split(".")
    if parts[0] not in LIBRARIES:
        return False
    if any(part.startswith("_") for part in parts[1:]):
        return True
    if parts[0] == "dvc":
        return len(parts) > 1 and parts[1] != "api"
    return parts[:2] in (["keras", "src"], ["mlflow", "utils"], ["mlflow", "store"])


def _dotted(node: ast.AST) -> list[str] | None:
    """a.b.c -> ["a", "b", "c"]; None for anything but names and attributes."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return [node.id, *reversed(parts)]


def own_names(src: Path = SRC) -> set[str]:
    """The attribute names vaepipe itself defines: its functions and methods, classes, class attributes
    and the attributes it assigns (`self._x = ...`). An underscore attribute among them is vaepipe's own."""
    names: set[str] = set()
    for path in (src / PACKAGE).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            if isinstance(node, ast.ClassDef):  # class attributes, annotated or not
                for statement in node.body:
                    targets = (statement.targets if isinstance(statement, ast.Assign)
                               else [statement.target] if isinstance(statement, ast.AnnAssign) else [])
                    names.update(target.id for target in targets if isinstance(target, ast.Name))
    return names


def private_accesses(path: Path, own: set[str]) -> list[tuple[int, str]]:
    """(line, access) for every reach into a library's private parts in the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    _mark_parents(tree)  # a chain a.b.c is judged once, from its outermost attribute
    bound: dict[str, str] = {}  # local name -> the module it was imported as (any library)
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                bound[alias.asname or alias.name.split(".")[0]] = alias.name if alias.asname else alias.name.split(".")[0]
                if _is_private_module(alias.name):
                    found.append((node.lineno, f"import {alias.name}"))
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            for alias in node.names:
                bound[alias.asname or alias.name] = f"{node.module}.{alias.name}"
                if _is_private_module(f"{node.module}.{alias.name}") and node.module.split(".")[0] in LIBRARIES:
                    found.append((node.lineno, f"import {node.module}.{alias.name}"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            chain = _dotted(node)
            if chain and chain[0] in bound:  # a path through an imported module: judged whole, once
                module = ".".join([bound[chain[0]], *chain[1:]])
                if not isinstance(node.parent, ast.Attribute) and _is_private_module(module):
                    found.append((node.lineno, f"attribute {module}"))
                continue  # another library's module (os._exit) is not this test's business
            name = node.attr
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr")
              and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)):
            name = node.args[1].value
        elif (isinstance(node, ast.Constant) and isinstance(node.value, str)
              and not isinstance(node.parent, ast.Expr)  # a docstring may name them
              and (DVC_LAYOUT.search(node.value) or node.value in INTERNAL_NAMES)):
            found.append((node.lineno, f"string {node.value!r}"))
            continue
        else:
            continue
        if (name.startswith("_") and not (name.startswith("__") and name.endswith("__"))
                and name not in own and name not in PUBLIC_UNDERSCORE):
            found.append((node.lineno, f"attribute .{name} ({ast.unparse(node)})"))
    return sorted(set(found))


def _mark_parents(tree: ast.AST) -> None:
    for parent in ast.walk(tree):
        for child in ast.iter_child_nodes(parent):
            child.parent = parent


def scan(src: Path = SRC) -> list[tuple[str, int, str]]:
    own = own_names(src)
    out = []
    for path in sorted((src / PACKAGE).rglob("*.py")):
        for line, access in private_accesses(path, own):
            out.append((path.relative_to(src / PACKAGE).as_posix(), line, access))
    return out


def test_src_reaches_into_no_private_api_of_dvc_mlflow_keras_optuna():
    found = scan()
    unexplained = [f"src/{PACKAGE}/{file}:{line}: {access}" for file, line, access in found
                   if (file, access) not in ALLOWED]
    assert not unexplained, ("private API of DVC/MLflow/Keras/Optuna (use a public one, or allow-list it "
                             "with the reason and a version-guarded test):\n" + "\n".join(unexplained))
    stale = sorted(set(ALLOWED) - {(file, access) for file, _, access in found})
    assert not stale, f"allow-list entries that src/ no longer needs (remove them): {stale}"


@pytest.mark.parametrize("source, flagged", [
    ("import mlflow\nmlflow.utils.rest_utils.http_request(1)\n", "attribute mlflow.utils.rest_utils.http_request"),
    ("from mlflow.store.artifact.utils.models import f\n", "import mlflow.store.artifact.utils.models.f"),
    ("from keras.src.random import SeedGenerator\n", "import keras.src.random.SeedGenerator"),
    ("from optuna.storages._rdb import storage\n", "import optuna.storages._rdb.storage"),
    ("from dvc.repo.experiments.queue.tempdir import TempDirQueue\n",
     "import dvc.repo.experiments.queue.tempdir.TempDirQueue"),
    ("def f(trial):\n    return trial._trial_id\n", "attribute ._trial_id (trial._trial_id)"),
    ("def f(study):\n    return getattr(study, '_storage')\n", "attribute ._storage (getattr(study, '_storage'))"),
    ("def f(study):\n    _storage = study._storage\n    return _storage\n", "attribute ._storage (study._storage)"),
    ("import optuna\noptuna._imports.x\n", "attribute optuna._imports.x"),
    ("ref = 'refs/exps/' + name\n", "string 'refs/exps/'"),
    ("ref = f'refs/exps/{name}'\n", "string 'refs/exps/'"),
    ("def f(model):\n    return [v for v in model.variables if v.name == 'seed_generator_state']\n",
     "string 'seed_generator_state'"),
])
def test_the_scan_flags_each_kind_of_private_access(tmp_path, source, flagged):
    (tmp_path / PACKAGE).mkdir()
    (tmp_path / PACKAGE / "mod.py").write_text(source)
    assert [access for _, _, access in scan(tmp_path)] == [flagged]


@pytest.mark.parametrize("source", [
    "import os\nos._exit(0)\n",  # the standard library's business, not this test's
    "from collections import namedtuple\nP = namedtuple('P', 'a')\nP(1)._replace(a=2)\n",
    "class A:\n    def __init__(self):\n        self._x = 1\n\ndef f(a):\n    return a._x\n",  # vaepipe's own
    "class A:\n    _y = 1\n    def _z(self):\n        pass\n\ndef f(a):\n    return a._y, a._z\n",
    "import mlflow\nmlflow.MlflowClient().get_run('x')\n",
    "from dvc.api import params_show\n",
    "import keras\nkeras.random.SeedGenerator(1).state\n",
    '"""Read .dvc/tmp/exps (a docstring may say where DVC keeps things)."""\n',
])
def test_the_scan_passes_public_and_own_names(tmp_path, source):
    (tmp_path / PACKAGE).mkdir()
    (tmp_path / PACKAGE / "mod.py").write_text(source)
    assert scan(tmp_path) == []


def _resolve(dotted: str) -> object:
    """The object a dotted path names: the longest importable module, then attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            found = getattr(found, name)
        return found
    raise ImportError(dotted)


@pytest.mark.parametrize("file, access", [key for key in ALLOWED if key[1].startswith(("import ", "attribute dvc."))])
def test_each_allowed_internal_still_exists_in_the_installed_library(file, access):
    """An allow-listed import or attribute that an upgrade removed fails here, naming the version, before
    src/ fails at run time. (The DVC layout strings are checked by the trial-launch tests.)"""
    dotted = access.split(" ", 1)[1]
    library = importlib.import_module(dotted.split(".")[0])
    try:
        _resolve(dotted)
    except (ImportError, AttributeError) as error:
        pytest.fail(f"src/{PACKAGE}/{file}: {dotted} is gone in {library.__name__} {library.__version__} "
                    f"({type(error).__name__}: {error}); allow-listed because: {ALLOWED[(file, access)]}")


def test_the_dvc_patch_runs_only_with_the_dvc_it_was_tested_with():
    """dvc_one's patch is guarded by TESTED_DVC: it must be the pinned DVC, and the installed one, or every
    trial would be refused (a new pin needs tests/e2e/test_tune.py run against it, then TESTED_DVC moved)."""
    from importlib.metadata import version

    from vaepipe.tune.dvc_one import TESTED_DVC

    pins = (SRC.parent / "requirements.txt").read_text()
    assert f"\ndvc=={TESTED_DVC}\n" in f"\n{pins}", f"requirements.txt pins another DVC than {TESTED_DVC}"
    assert version("dvc") == TESTED_DVC, f"DVC {version('dvc')} is installed; dvc_one was tested with {TESTED_DVC}"


def test_the_launchers_preloaded_modules_exist_in_the_pinned_libraries():
    """The trial launcher imports dvc_one.PRELOAD once so that each trial's fork starts with them (names of
    modules only: nothing in them is called by name). One an upgrade renamed would silently cost its import
    in every trial again: it fails here, naming the library and its version."""
    from vaepipe.tune.dvc_one import PRELOAD

    for module in PRELOAD:
        library = importlib.import_module(module.split(".")[0])
        try:
            importlib.import_module(module)
        except ImportError as error:
            pytest.fail(f"dvc_one.PRELOAD: {module} is gone in {library.__name__} "
                        f"{getattr(library, '__version__', '?')} ({error})")
