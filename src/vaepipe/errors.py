"""One exception type for every user-facing failure, and the wrapper that turns it into an exit code."""

from __future__ import annotations

import sys
from collections.abc import Callable


class VaepipeError(Exception):
    """A failure caused by the user's input (params, data files, tracking server), not by a bug.

    The message is printed as-is: it names the bad value and what is expected.
    """

    exit_code = 1


class ConfigError(VaepipeError):
    """A value in params.yaml is wrong. Exit code 2, like a command-line usage error."""

    exit_code = 2


class DataError(VaepipeError):
    """A data file is missing, corrupt or not what it claims to be."""

    exit_code = 3


class TrackingError(VaepipeError):
    """The MLflow tracking store cannot be reached or used."""

    exit_code = 4


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's main function; print user errors as one line and exit non-zero."""
    try:
        main()
    except VaepipeError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(error.exit_code)
