"""Where studies live: by default the journal file `.optuna/journal.log` under the main repository (git-ignored,
also when a trial's train stage runs in DVC's temporary copy), or any Optuna storage URL (`STORAGE=` /
`--storage`, e.g. `postgresql://host/db` or `sqlite:///studies.db`), which several `make tune` processes,
on one machine or many, share.

A trial's train stage reaches the storage through the environment (STORAGE_ENV, inherited by
`dvc exp run --temp`), never through params: a URL may hold a password, and params end up in git,
dvc.lock and MLflow.
"""

from __future__ import annotations

import os
from pathlib import Path

import optuna

from vaepipe import paths
from vaepipe.errors import ConfigError

STORAGE_ENV = "VAEPIPE_TUNE_STORAGE"
JOURNAL_NAME = "journal.log"


def default_journal() -> Path:
    return paths.optuna_dir() / JOURNAL_NAME


def resolve_storage(url: str | None = None) -> str:
    """The storage to use: `url` if given, else $VAEPIPE_TUNE_STORAGE, else the default journal file
    (its absolute path). A URL has a scheme (`sqlite:///...`, `postgresql://...`); anything else is a
    journal file's path."""
    url = url or os.environ.get(STORAGE_ENV) or str(default_journal())
    if "://" not in url:
        return str(Path(url).expanduser().resolve())
    return url


def _urls():
    """tracking/store.py's URL helpers (the masking and driver every store URL gets), imported for URLs only:
    it imports MLflow (seconds), which a journal file's study never needs."""
    from vaepipe.tracking import store

    return store


def storage_label(storage: str) -> str:
    """The storage as it may be printed: a URL's password replaced by *** (tracking.store's, as everywhere)."""
    return _urls().masked_url(storage) if "://" in storage else storage


def redact(text: str, storage: str) -> str:
    """`text` (an error message) without the storage URL's password, in any of its forms."""
    return _urls().redact_password(text, storage) if "://" in storage else text


def open_storage(storage: str | None = None) -> optuna.storages.BaseStorage | str:
    """The Optuna storage object for a resolved storage string (a journal file or a URL)."""
    storage = resolve_storage(storage)
    if "://" in storage:
        urls = _urls()
        urls.check_password_encoding(storage, "STORAGE")
        # Optuna opens RDB URLs itself (SQLAlchemy: sqlite, postgresql, mysql), with the driver the
        # tracking server's store gets too: postgresql:// alone would mean psycopg 3, not installed.
        return urls.with_driver(storage)
    path = Path(storage)
    path.parent.mkdir(parents=True, exist_ok=True)
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


def study_names(storage: str | None = None) -> list[str]:
    return sorted(summary.study_name for summary in optuna.get_all_study_summaries(open_storage(storage),
                                                                                  include_best_trial=False))


def load_study(name: str, storage: str | None = None, pruner: optuna.pruners.BasePruner | None = None,
               sampler: optuna.samplers.BaseSampler | None = None) -> optuna.Study:
    """The study `name` in `storage` (resolve_storage's default if None); ConfigError in one line, naming
    the studies there, if it does not exist."""
    try:
        return optuna.load_study(study_name=name, storage=open_storage(storage), pruner=pruner, sampler=sampler)
    except KeyError:
        known = study_names(storage)
        raise ConfigError(f"no study {name!r} in {storage_label(resolve_storage(storage))}; the studies there: "
                          f"{', '.join(known) or 'none'}") from None
    except Exception as error:  # SQLAlchemy / connection errors: one line, without the password
        if isinstance(error, ConfigError):
            raise
        reason = redact((str(error).splitlines() or [""])[0], resolve_storage(storage))
        raise ConfigError(f"cannot open the Optuna storage {storage_label(resolve_storage(storage))}: "
                          f"{type(error).__name__}: {reason}") from None


OBJECTIVE_ATTR = "vaepipe.objective"  # where `make tune` kept the names before it set Study.metric_names


def objective_names(study: optuna.Study) -> list[str] | None:
    """An Optuna study's objective names: its `metric_names` (the driver sets them when it creates the
    study), else the user attribute of a study made before that; None if neither names every objective."""
    count = len(study.directions)
    for names in (study.metric_names, study.user_attrs.get(OBJECTIVE_ATTR)):
        if isinstance(names, list) and len(names) == count and all(isinstance(name, str) for name in names):
            return list(names)
    return None
