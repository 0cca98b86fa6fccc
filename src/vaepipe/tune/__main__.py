"""`make tune`: python -m vaepipe.tune [--search search.yaml] [--storage URL] [--final]
`python -m vaepipe.tune status [--study NAME] [--json] [--storage URL]`: the study's trials.

The storage defaults to $VAEPIPE_TUNE_STORAGE, else the journal file .optuna/journal.log (docs/search.md).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from vaepipe import paths
from vaepipe.errors import VaepipeError


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m vaepipe.tune", description="an Optuna search over DVC experiments")
    parser.add_argument("--storage", help="an Optuna storage URL (default: $VAEPIPE_TUNE_STORAGE, else .optuna/journal.log)")
    if argv[:1] == ["status"]:
        parser.add_argument("--study", help="the study (default: the search file's, else the storage's only one)")
        parser.add_argument("--search", type=Path, default=None, help="read the study name from this search file")
        parser.add_argument("--json", action="store_true", help="print JSON")
        args = parser.parse_args(argv[1:])
    else:
        parser.add_argument("--search", type=Path, default=paths.SEARCH_FILE, help="the search file (search.yaml)")
        parser.add_argument("--final", action="store_true",
                            help="only the final full runs of the chosen trials (make tune FINAL=1)")
        args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message=".*is experimental.*")  # Optuna's ExperimentalWarning (multivariate TPE)
    try:
        if argv[:1] == ["status"]:
            from vaepipe.tune.status import status

            study = args.study
            if study is None and (args.search or paths.SEARCH_FILE.exists()):
                from vaepipe.tune.search import load_search

                study = load_search(args.search or paths.SEARCH_FILE).study
            print(status(study, args.storage, as_json=args.json))
            return 0
        from vaepipe.tune import launcher

        if launcher.use_launcher():
            launcher.start()  # its DVC imports run beside the driver's own (Optuna, the search, the study)
        from vaepipe.tune.driver import tune
        from vaepipe.tune.search import load_search

        search = load_search(args.search)  # every key and value checked before anything runs
        return tune(search, args.storage, final_only=args.final)
    except VaepipeError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code


if __name__ == "__main__":
    sys.exit(main())
