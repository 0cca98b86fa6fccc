"""The repository root and every output path of the pipeline, defined once."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from vaepipe.errors import DiskFull, disk_full_cause


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
def atomic_path(final: Path, size: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `final`; rename it into place only if the block succeeds.

    A crash or Ctrl-C mid-write leaves the previous `final` untouched and no half-written file. A full
    disk raises DiskFull naming `final` (`size`: the bytes the block writes, when the caller knows them).
    """
    with _temporary(final, size) as tmp:
        yield tmp
        os.replace(tmp, final)


class ReplacedTogether:
    """Files written each to a temporary name, renamed into place together (see replaced_together)."""

    def __init__(self) -> None:
        self.pending: list[tuple[Path, Path]] = []

    @contextmanager
    def write(self, final: Path, size: int | None = None) -> Iterator[Path]:
        """Like atomic_path, but the rename waits for the end of the replaced_together block."""
        with _temporary(final, size) as tmp:
            yield tmp
        self.pending.append((tmp, final))


@contextmanager
def replaced_together() -> Iterator[ReplacedTogether]:
    """Outputs that belong together (a model and its log; prepared splits and their meta.json): every
    file is written before any is renamed, so a failure (a full disk) leaves all of them as they were."""
    together = ReplacedTogether()
    try:
        yield together
        for tmp, final in together.pending:
            os.replace(tmp, final)
    finally:
        for tmp, _ in together.pending:
            tmp.unlink(missing_ok=True)


@contextmanager
def _temporary(final: Path, size: int | None) -> Iterator[Path]:
    """A temporary file beside `final`, removed if the block fails; a full disk becomes DiskFull naming
    `final`, the path the user knows (the OSError names the temporary file, or no file at all)."""
    tmp: Path | None = None
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=final.suffix, dir=final.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the usual permissions
        yield tmp
    except BaseException as error:
        written = _size_of(tmp)
        if tmp is not None:
            tmp.unlink(missing_ok=True)  # before the free space is measured: it was never the file's to keep
        if isinstance(error, Exception) and not isinstance(error, DiskFull) and disk_full_cause(error):
            raise disk_full_error(final, needed=size, written=written) from error
        raise


def disk_full_error(path: Path | str | None, needed: int | None = None, written: int | None = None,
                    replacing: bool = True) -> DiskFull:
    """DiskFull with one line: the path, the space needed if known, what is free and where.

    `replacing`: the write was to a temporary file (atomic_path), so the file at `path` is the previous
    version, unchanged, and (when `needed` is unknown) its size stands in for it, as an estimate.
    """
    if path is None:  # nothing says which file, nor so which filesystem filled up
        return DiskFull("no space left on device writing a file the error does not name")
    target = Path(path)
    shown = _shown(target)
    previous = _size_of(target) if replacing else None
    if needed is not None:
        need = f"it needs {_human(needed)}"
    elif written and (not previous or written >= previous):
        need = f"it needs more than the {_human(written)} written when the disk filled"
    elif previous:
        need = f"it needs about {_human(previous)} (the size of the version it replaces)"
    else:
        need = "the size it needs is not known"
    mount = _mount_point(target.parent)
    try:
        stat = os.statvfs(mount)
        free = f"{_human(stat.f_bavail * stat.f_frsize)} free on {mount}"
    except OSError:
        free = f"free space on {mount} unknown"
    kept = f"; the previous {target.name} is unchanged" if replacing and target.exists() else ""
    return DiskFull(f"no space left on device writing {shown}: {need}, {free}{kept}")


def _size_of(path: Path | None) -> int | None:
    try:
        return path.stat().st_size if path is not None else None
    except OSError:
        return None


def _shown(path: Path) -> str:
    """`path` relative to the repository root when it is inside it, else absolute."""
    absolute = Path(os.path.abspath(path))
    try:
        return str(absolute.relative_to(ROOT))
    except ValueError:
        return str(absolute)


def _mount_point(path: Path) -> Path:
    """The mount point of the filesystem holding `path` (its nearest existing ancestor)."""
    path = Path(os.path.realpath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    device = path.stat().st_dev
    while path != path.parent and path.parent.stat().st_dev == device:
        path = path.parent
    return path


def _human(size: int) -> str:
    for unit, factor in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if size >= factor:
            return f"{size / factor:.1f} {unit}"
    return f"{size} bytes"
