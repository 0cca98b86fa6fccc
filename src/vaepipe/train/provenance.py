"""What a training run depends on (params, code, data), hashed into the key that names its checkpoint.

The code is what decides training's numbers, not all the train stage runs: the model and every module it
is built from, the input pipeline and schedules (with what they import: vaepipe.imports.import_closure,
the walker tests/test_stage_deps.py checks dvc.yaml's deps with), and the training loops' own files. The
bookkeeping around them (the session, MLflow, progress lines) is left out, and so is what the train stage
hands the loops from outside (a search trial's pruning callbacks from tune/, the model logging with
serving.py): no module under train/ imports those. A fixed log message there must not orphan a resumable
checkpoint (tests/test_prepared.py, tests/e2e/test_stale_checkpoint.py). A checkpoint written with other
params, training code or data is never resumed.

Computing the key reads the source (with `ast`) and data/prepared/meta.json: the loops do it as an explicit
step before they open their session (session.open_session), never inside the session's constructor.
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


def code_files(src: Path = SRC) -> list[Path]:
    """The files whose source the key hashes (resolved, sorted): the numeric roots with their imports and
    the loops' own files."""
    package = src / "vaepipe"
    files = {package / name for name in TRAINING_LOOPS}
    for name in NUMERIC_ROOTS:
        files |= {package / name, *import_closure(package / name, src)}
    return sorted(file.resolve() for file in files)


def code_sha256(src: Path = SRC) -> str:
    """One hash of the code that decides training's numbers (file paths and contents)."""
    package = (src / "vaepipe").resolve()
    digest = hashlib.sha256()
    for file in code_files(src):
        digest.update(file.relative_to(package).as_posix().encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()


def key_parts(params: Params, src: Path = SRC) -> dict[str, str]:
    """What a checkpoint depends on: the params that change the weights, train's code, the data it reads."""
    return {"params": training_key(params), "code": code_sha256(src)[:16],
            "data": training_data_sha256()[:16]}


def key_of(parts: dict[str, str]) -> str:
    """The checkpoint key of those parts (key_parts): names the checkpoint directory."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def checkpoint_key(params: Params) -> str:
    """Names the checkpoint directory: only a run with the same params, code and data resumes it."""
    return key_of(key_parts(params))
