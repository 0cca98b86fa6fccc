"""Run multi_worker training on this machine: N worker processes, each with its own TF_CONFIG.

    export VAEPIPE_WORKERS_LISTEN_ANYWHERE=1              # required: the workers' ports listen on all interfaces
    python scripts/launch_workers.py --workers 2          # python stages/train.py on 2 workers
    VAEPIPE_WORKERS=3 python scripts/launch_workers.py    # the same with 3

Run it from the repository root with params.yaml saying `train.distribute: multi_worker`. It exits
with the chief's exit code; if any worker dies, it stops the others and exits non-zero at once; if it
is killed, the workers die with it (Linux).
`dvc repro` needs none of this: stages/train.py starts the workers itself (see docs/scaling.md).
"""

import sys

from vaepipe.train.launcher import main  # the editable install (make setup) provides the package

if __name__ == "__main__":
    sys.exit(main())
