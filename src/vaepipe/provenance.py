"""What a training run depends on (params, code, data), hashed into the key that names its checkpoint.

The code is the train stage script and every vaepipe module it imports, transitively: read with `ast`
(nothing is imported, so no TensorFlow), lazy imports inside functions included, and package files
named by a string (serving.py, which tracking hands to MLflow). dvc.yaml declares the same modules
(tests/test_stage_deps.py). A checkpoint written with other params, code or data is never resumed.
"""

from __future__ import annotations

import ast
import hashlib
import json
from pathlib import Path

from vaepipe import paths
from vaepipe.config import Params, training_key
from vaepipe.prepared import training_data_sha256

PACKAGE_DIR = Path(__file__).resolve().parent


def _module_files(dotted: str) -> list[Path]:
    """The files that importing `dotted` (vaepipe.x.y) runs: each package's __init__ and the module."""
    parts = dotted.split(".")[1:]
    files = [PACKAGE_DIR / "__init__.py"]
    for depth in range(1, len(parts) + 1):
        base = PACKAGE_DIR.joinpath(*parts[:depth])
        if (base / "__init__.py").is_file():
            files.append(base / "__init__.py")
        elif base.with_suffix(".py").is_file():
            files.append(base.with_suffix(".py"))
            break
        else:
            break
    return files


def _imported_files(path: Path) -> set[Path]:
    files: set[Path] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "vaepipe":
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.endswith(".py"):
            names = [f"vaepipe.{node.value[:-3]}"] if "/" not in node.value else []
        for name in names:
            if name.split(".")[0] == "vaepipe":
                files.update(_module_files(name))
    return files


def import_closure(script: Path) -> list[Path]:
    """The script and every vaepipe module file it imports, transitively, sorted."""
    seen = {script.resolve()}
    todo = [script.resolve()]
    while todo:
        for file in _imported_files(todo.pop()):
            if file not in seen:
                seen.add(file)
                todo.append(file)
    return sorted(seen)


def code_sha256(script: Path) -> str:
    """One hash of the source of `import_closure(script)` (file names and contents)."""
    digest = hashlib.sha256()
    for file in import_closure(script):
        digest.update(file.name.encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()


def key_parts(params: Params) -> dict[str, str]:
    """What a checkpoint depends on: the params that change the weights, train's code, the data it reads."""
    return {"params": training_key(params), "code": code_sha256(paths.stage_script("train"))[:16],
            "data": training_data_sha256()[:16]}


def checkpoint_key(params: Params) -> str:
    """Names the checkpoint directory: only a run with the same params, code and data resumes it."""
    parts = key_parts(params)
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]
