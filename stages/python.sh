#!/bin/sh
# The Python every stage runs with: the project's .venv whether or not it is activated (`.venv/bin/dvc repro`
# from any shell), found in the main repository also from DVC's temporary experiment copies (DVC sets
# DVC_ROOT to it there), else the `python` on PATH (an environment of the user's own). `exec`, so no shell
# sits between DVC and the stage: signals and exit codes reach DVC as the stage's own.
for candidate in "${DVC_ROOT:-.}/.venv/bin/python" ./.venv/bin/python; do
    if [ -x "$candidate" ]; then
        PYTHONPATH=src exec "$candidate" "$@"
    fi
done
if ! command -v python >/dev/null 2>&1; then
    echo "error: no .venv/bin/python in ${DVC_ROOT:-.} and no python on PATH: run \`make setup\` first" >&2
    exit 127
fi
PYTHONPATH=src exec python "$@"
