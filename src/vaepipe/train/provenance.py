"""What a training run depends on (params, code, data), hashed into the key that names its checkpoint.

The code is what decides training's numbers, not all the train stage runs: the model and every module it
is built from, the input pipeline and schedules (with what they import: vaepipe.imports.import_closure,
the walker tests/test_stage_deps.py checks dvc.yaml's deps with), and the training loops' own files. The
bookkeeping around them (the session, MLflow, progress lines, the pruning hook, serving) is left out: a
fixed log message there must not orphan a resumable checkpoint. A checkpoint written with other params,
training code or data is never resumed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from vaepipe.config import Params, training_key
from vaepipe.imports import SRC, import_closure
from vaepipe.prepared import training_data_sha256

# Hashed with everything they import: the math and the data pipeline.
NUMERIC_ROOTS = ("model.py", "train/inputs.py", "train/schedules.py")
# Hashed as files: the loops and the per-epoch randomness (their imports are bookkeeping or in the roots).
TRAINING_LOOPS = ("train/single_process.py", "train/stacking.py", "train/distributed.py", "train/callbacks.py",
                  "train/strategy.py")


def code_sha256(src: Path = SRC) -> str:
    """One hash of the code that decides training's numbers (file paths and contents)."""
    package = src / "vaepipe"
    files = {package / name for name in TRAINING_LOOPS}
    for name in NUMERIC_ROOTS:
        files |= {package / name, *import_closure(package / name, src)}
    digest = hashlib.sha256()
    for file in sorted(file.resolve() for file in files):
        digest.update(file.relative_to(package.resolve()).as_posix().encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()


def key_parts(params: Params) -> dict[str, str]:
    """What a checkpoint depends on: the params that change the weights, train's code, the data it reads."""
    return {"params": training_key(params), "code": code_sha256()[:16],
            "data": training_data_sha256()[:16]}


def checkpoint_key(params: Params) -> str:
    """Names the checkpoint directory: only a run with the same params, code and data resumes it."""
    parts = key_parts(params)
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]
