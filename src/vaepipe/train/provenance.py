"""What a training run depends on (params, code, data), hashed into the key that names its checkpoint.

The code is the train stage script and every vaepipe module it runs (vaepipe.imports.import_closure,
the walker tests/test_stage_deps.py checks dvc.yaml's deps with). A checkpoint written with other
params, code or data is never resumed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from vaepipe import paths
from vaepipe.config import Params, training_key
from vaepipe.imports import SRC, import_closure
from vaepipe.prepared import training_data_sha256


def code_sha256(script: Path, src: Path = SRC) -> str:
    """One hash of the source of the script and every vaepipe module it runs (file names and contents)."""
    digest = hashlib.sha256()
    for file in sorted({script.resolve(), *import_closure(script, src)}):
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
