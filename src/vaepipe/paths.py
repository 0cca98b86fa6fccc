"""The repository root and every output path of the pipeline, defined once."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def repo_root() -> Path:
    """The directory holding dvc.yaml: the current directory or the nearest parent that has one.

    DVC runs every stage with the repository root as working directory, including inside the
    temporary copies it makes for queued experiments; that copy is the root the outputs belong to.
    """
    here = Path.cwd().resolve()
    for candidate in (here, *here.parents):
        if (candidate / "dvc.yaml").exists():
            return candidate
    return here


def main_repo_root() -> Path:
    """The user's main repository, also from inside DVC's temporary experiment copies.

    `dvc exp run --queue/--temp` executes in .dvc/tmp/exps/..., deleted afterwards; DVC sets DVC_ROOT
    there to the main root. Anything that must outlive the run (the MLflow store) lives here.
    """
    dvc_root = os.environ.get("DVC_ROOT")
    if dvc_root:
        return Path(dvc_root).resolve()
    root = repo_root()
    # Fallback for a temp copy without DVC_ROOT: .../<main>/.dvc/tmp/exps/<...>/<copy>
    parts = root.parts
    if ".dvc" in parts:
        return Path(*parts[: parts.index(".dvc")])
    return root


ROOT = repo_root()
PARAMS_FILE = ROOT / "params.yaml"
PREPARED_DIR = ROOT / "data" / "prepared"
PREPARED_META = PREPARED_DIR / "meta.json"
MODELS_DIR = ROOT / "models"
MODEL_FILE = MODELS_DIR / "vae.keras"
RUN_ID_FILE = MODELS_DIR / "mlflow_run_id"
TRAIN_LOG = ROOT / "train_log.csv"
CHECKPOINTS_DIR = ROOT / "checkpoints"
METRICS_FILE = ROOT / "metrics.json"
VAL_METRICS_FILE = ROOT / "val_metrics.json"  # train's validation summary (what a search's objectives read)
PLOTS_DIR = ROOT / "plots"
PRESETS_DIR = ROOT / "presets"
SEARCH_FILE = ROOT / "search.yaml"


def optuna_dir() -> Path:
    """The main repository's .optuna/ (git-ignored): the default study journal and the launch lock of
    `make tune`, shared with the trials' temporary DVC copies."""
    return main_repo_root() / ".optuna"


def stage_script(name: str) -> Path:
    """stages/<name>.py, the script DVC runs for stage `name`."""
    return ROOT / "stages" / f"{name}.py"


def prepared_split(name: str) -> Path:
    """The prepared arrays of split `name` (train, validation, test)."""
    return PREPARED_DIR / f"{name}.npz"


def checkpoint_dir(training_key: str) -> Path:
    """Resumable state of one training key (params, code and data: session.TrainingSession)."""
    return CHECKPOINTS_DIR / training_key


def checkpoint_run_id_file(training_key: str) -> Path:
    """The MLflow run id of an unfinished run of those params, which a restart continues."""
    return checkpoint_dir(training_key) / "mlflow_run_id"

_UMASK = os.umask(0)
os.umask(_UMASK)


def cache_dir() -> Path:
    """Where downloaded raw data is kept between runs (shared by every clone of the project)."""
    path = Path(os.environ.get("VAEPIPE_CACHE", Path.home() / ".cache" / "vaepipe"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def xla_cache_dir() -> Path:
    """XLA's persistent compilation cache (TensorFlow's `--tf_xla_persistent_cache_directory`), one
    directory per TensorFlow version and CPU: a program is compiled for this CPU's instruction set."""
    from importlib import metadata

    versions = []
    for name in ("tensorflow", "tensorflow-cpu"):
        try:
            versions.append(f"{name}-{metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pass
    try:  # the model name and every feature flag the kernel reports
        cpu = "".join(line for line in Path("/proc/cpuinfo").read_text().splitlines()[:40]
                      if line.startswith(("model name", "flags")))
    except OSError:
        import platform

        cpu = platform.machine() + platform.processor()
    digest = hashlib.sha256(("|".join(versions) + cpu).encode()).hexdigest()[:16]
    return cache_dir() / "xla" / digest


@contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside `final`; rename it into place only if the block succeeds.

    A crash or Ctrl-C mid-write leaves the previous `final` untouched and no half-written file.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=final.suffix, dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
