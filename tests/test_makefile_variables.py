"""The Makefile hands its variables (RUN=, MODEL=, SEARCH=, STUDY=, STORAGE=, SORT=, FILTER=, SWEEP=, LAST=,
HOST=, PORT=, SERVE_PORT=) to the commands as arguments or environment, never pasted into shell code: a value
with quotes, `;`, backticks and `$(...)` reaches python as one exact argument and runs nothing; STORAGE= is
in the environment only. The real Makefile, with a stand-in `python` (first on the PATH the Makefile sets:
.venv/bin) that records what it was given."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[1]
# Quotes of both kinds, command separators and substitutions: each would create a file if a shell parsed it.
HOSTILE = "x' ; touch pwned1 ; echo '\" ; touch pwned2 ; echo \"`touch pwned3`$(touch pwned4) -y"
RECORDER = f"""#!{sys.executable}
import json, os, sys
with open(os.path.join(os.getcwd(), "calls.jsonl"), "a") as out:
    out.write(json.dumps({{"argv": sys.argv[1:], "storage": os.environ.get("VAEPIPE_TUNE_STORAGE")}}) + "\\n")
"""


@pytest.fixture
def workdir(tmp_path) -> Path:
    root = tmp_path
    for name in ("Makefile", "requirements.txt", "requirements.lock", "pyproject.toml"):
        shutil.copy(PROJECT / name, root / name)
    fake = root / ".venv" / "bin" / "python"
    fake.parent.mkdir(parents=True)
    fake.write_text(RECORDER)
    fake.chmod(0o755)
    return root


def make(workdir: Path, target: str, **variables: str) -> dict:
    (workdir / "calls.jsonl").unlink(missing_ok=True)
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(workdir)}
    # `$` is make's own expansion character in command-line values: written `$$` to mean `$`.
    argv = ["make", "-s", "-o", "setup", target, *(f"{k}={v.replace('$', '$$')}" for k, v in variables.items())]
    result = subprocess.run(argv, cwd=workdir, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not list(workdir.glob("pwned*")), "a shell ran a command pasted from a make variable"
    calls = [json.loads(line) for line in (workdir / "calls.jsonl").read_text().splitlines()]
    assert len(calls) == 1, calls
    return calls[0]


@pytest.mark.parametrize("target, variable, expected", [
    ("serve", "MODEL", ["--model=" + HOSTILE]),
    ("serve", "HOST", ["--host=" + HOSTILE]),
    ("serve", "SERVE_PORT", ["--port=" + HOSTILE]),
    ("promote", "RUN", ["--", HOSTILE]),
    ("server", "HOST", ["--host=" + HOSTILE]),
    ("server", "PORT", ["--port=" + HOSTILE]),
    ("ui", "PORT", ["--port=" + HOSTILE]),
    ("compare", "SWEEP", ["--sweep=" + HOSTILE]),
    ("compare", "LAST", ["--last=" + HOSTILE]),
    ("compare", "SORT", ["--sort=" + HOSTILE]),
    ("compare", "FILTER", ["--filter=" + HOSTILE]),
    ("compare", "STUDY", ["--study=" + HOSTILE]),
    ("tune", "SEARCH", ["--search=" + HOSTILE]),
    ("tune-status", "SEARCH", ["--search=" + HOSTILE]),
    ("tune-status", "STUDY", ["--study=" + HOSTILE]),
])
def test_a_hostile_value_reaches_python_as_one_exact_argument(workdir, target, variable, expected):
    call = make(workdir, target, **{variable: HOSTILE})
    argv = call["argv"]
    assert any(argv[i:i + len(expected)] == expected for i in range(len(argv))), argv


@pytest.mark.parametrize("target, extra", [("tune", {}), ("tune-status", {}), ("compare", {"STUDY": "s"})])
def test_storage_goes_in_the_environment_only(workdir, target, extra):
    storage = "postgresql://tuner:p%40ss/w:rd'x;`id`@127.0.0.1:5432/studies"
    call = make(workdir, target, STORAGE=storage, **extra)
    assert call["storage"] == storage
    assert not any("p%40ss" in arg or "tuner" in arg for arg in call["argv"]), call["argv"]
