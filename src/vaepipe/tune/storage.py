"""Where studies live: an Optuna storage URL (postgresql://..., sqlite:///...) or, by default, the journal
file .optuna/journal.log under the repository root (git-ignored)."""

from __future__ import annotations

from pathlib import Path

import optuna

from vaepipe import paths
from vaepipe.errors import ConfigError

DEFAULT_JOURNAL = Path(".optuna") / "journal.log"  # under the main repository root


def resolve_storage(url: str | None = None) -> str:
    """`url` (STORAGE= / --storage) as given, else the default journal file's path."""
    return url or str(paths.main_repo_root() / DEFAULT_JOURNAL)


def _storage(resolved: str) -> optuna.storages.BaseStorage:
    if "://" in resolved:
        return optuna.storages.get_storage(resolved)
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(resolved))


def load_study(name: str, storage: str | None = None) -> optuna.Study:
    """The study `name`; one-line ConfigError when the storage has no such study (nothing is created)."""
    resolved = resolve_storage(storage)
    where = "the journal file" if "://" not in resolved else "storage"
    where = f"{where} {resolved.split('@')[-1]}"  # a URL's credentials are never printed
    if "://" not in resolved and not Path(resolved).exists():
        raise ConfigError(f"no study {name!r}: {where} does not exist; run `make tune` first")
    try:
        backend = _storage(resolved)
        return optuna.load_study(study_name=name, storage=backend)
    except KeyError:
        known = ", ".join(sorted(s.study_name for s in optuna.get_all_study_summaries(backend))) or "none"
        raise ConfigError(f"no study {name!r} in {where} (studies there: {known})") from None
