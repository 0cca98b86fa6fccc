"""The loop a DVC user lives in, as they meet it: a fresh clone of a committed result is up to date in
its code and params, `make run` there leaves git with only the files a user commits after a run, going
back to params that already ran restores every stage from DVC's run-cache, `make exp` leaves params.yaml
alone, values set with `dvc exp run -S` read back in the stage as DVC shows them, and the README's smoke
run works as printed from a shell where the environment is not activated."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pipeline_repo import PROJECT, copy_repo, mlflow_runs, stage_env

pytestmark = pytest.mark.e2e

VENV = Path(sys.executable).parents[1]
# What docs/reliability.md ("What git tracks") says a user commits after a run: the lock (new output
# hashes, the new run) and the test metrics. Nothing else tracked changes.
COMMITTED_AFTER_A_RUN = {"dvc.lock", "metrics.json"}


def unactivated_env(**extra: str) -> dict[str, str]:
    """A shell where the project's environment is not activated: no .venv on PATH, no VIRTUAL_ENV."""
    env = stage_env(**extra)
    env["PATH"] = os.pathsep.join(part for part in env["PATH"].split(os.pathsep)
                                  if not part.startswith(str(VENV)) and part != str(Path(sys.executable).parent))
    env.pop("VIRTUAL_ENV", None)
    return env


def run(repo: Path, *command: str, env: dict[str, str] | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=repo, env=env or stage_env(), capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(command)}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def with_make_and_venv(repo: Path) -> Path:
    """The files `make` needs beside the pipeline, and the project's .venv linked in, as after `make setup`."""
    for name in ("Makefile", "requirements.txt", "requirements.lock", "README.md"):
        shutil.copy2(PROJECT / name, repo / name)
    shutil.copytree(PROJECT / "presets", repo / "presets", dirs_exist_ok=True)
    (repo / ".venv").symlink_to(VENV)
    return repo


def git_changes(repo: Path) -> set[str]:
    lines = run(repo, "git", "status", "--porcelain", "--untracked-files=no").stdout.splitlines()
    return {line[3:] for line in lines}


def changed_inputs(repo: Path) -> dict[str, list[str]]:
    """`dvc status`'s changed dependencies, params and commands per stage. Not counted: outputs that are
    missing, in the stage itself or upstream (a dep `deleted` because prepare's output is not pulled)."""
    status = json.loads(run(repo, "dvc", "status", "--json").stdout or "{}")
    found = {}
    for stage, entries in status.items():
        changed = []
        for entry in entries:
            if not isinstance(entry, dict):
                changed.append(str(entry))  # e.g. "changed command"
                continue
            for kind, paths in entry.items():
                if kind == "changed outs":
                    continue
                changed += [f"{kind}: {path} {how}" for path, how in (paths or {}).items() if how != "deleted"]
        if changed:
            found[stage] = changed
    return found


def test_fresh_clone_is_current_and_going_back_restores_from_the_cache(quick, tmp_path):
    origin = with_make_and_venv(copy_repo(quick, tmp_path / "origin"))
    (origin / ".venv").unlink()  # not committed: each clone has its own (a link here)
    run(origin, "git", "add", "-A")
    run(origin, "git", "commit", "-qm", "a result: code, params, dvc.lock, metrics.json")
    clone = tmp_path / "clone"
    run(tmp_path, "git", "clone", "-q", str(origin), str(clone))
    (clone / ".venv").symlink_to(VENV)

    assert changed_inputs(clone) == {}, "a fresh clone's dvc.lock matches its code and params"
    run(clone, "make", "run", env=unactivated_env())
    assert git_changes(clone) <= COMMITTED_AFTER_A_RUN, git_changes(clone)
    assert run(clone, "dvc", "status", "--json").stdout.strip() in ("", "{}")
    first_model = (clone / "models/vae.keras").read_bytes()
    first_metrics = (clone / "metrics.json").read_text()
    first_run = (clone / "models/mlflow_run_id").read_text()

    run(clone, "dvc", "exp", "run", "-S", "model.latent_dim=3")
    assert (clone / "models/vae.keras").read_bytes() != first_model

    run(clone, "git", "checkout", "params.yaml")
    started = time.monotonic()
    back = run(clone, "dvc", "repro")
    seconds = time.monotonic() - started
    for stage in ("train", "evaluate", "plot"):
        assert f"Stage '{stage}' is cached - skipping run, checking out outputs" in back.stdout, back.stdout
        assert f"Running stage '{stage}'" not in back.stdout, back.stdout
    assert (clone / "models/vae.keras").read_bytes() == first_model
    assert (clone / "metrics.json").read_text() == first_metrics
    assert (clone / "models/mlflow_run_id").read_text() == first_run  # the restored outputs name their run
    assert (first_run.strip(), "FINISHED") in mlflow_runs(clone)
    print(f"going back restored train, evaluate and plot in {seconds:.1f} s")
    assert seconds < 120, f"going back took {seconds:.0f} s: a restore, not a retrain, takes seconds"


def test_every_param_type_set_by_dvc_reads_back_in_the_stage_as_dvc_shows_it(tmp_path):
    """Values YAML 1.1 (PyYAML) reads otherwise: `off`/`yes` (booleans there), `010` (eight there), `1e-7`
    (text there); and every other type a param can have."""
    repo = tmp_path / "repo"
    repo.mkdir()
    env = stage_env(PYTHONPATH=str(PROJECT / "src"))
    run(repo, "git", "init", "-q", env=env)
    run(repo, "dvc", "init", "-q", env=env)
    (repo / "params.yaml").write_text("p:\n  word: a\n  octal: 1\n  small: 1.0\n  flag: false\n  items: [1]\n"
                                      "  nothing: 1\n  yes_word: a\n  quoted: a\n  whole: 1\n")
    (repo / "read.py").write_text("import json\nfrom pathlib import Path\nfrom vaepipe.config import read_yaml_file\n"
                                  "Path('read.json').write_text(json.dumps(read_yaml_file(Path('params.yaml'), 'p')['p']))\n")
    (repo / "dvc.yaml").write_text("stages:\n  read:\n    cmd: python read.py\n    deps: [read.py]\n    params: [p]\n"
                                   "    outs: [read.json]\n")
    run(repo, "git", "add", "-A", env=env)
    run(repo, "git", "commit", "-qm", "tiny", env=env)
    sets = ["p.word=off", "p.octal=010", "p.small=1e-7", "p.flag=true", "p.items=[2,3]", "p.nothing=null",
            "p.yes_word=yes", "p.quoted='1e3'", "p.whole=12"]
    run(repo, "dvc", "exp", "run", *[arg for value in sets for arg in ("-S", value)], env=env)
    shown = json.loads(run(repo, "dvc", "params", "diff", "--json", env=env).stdout)["params.yaml"]
    read = json.loads((repo / "read.json").read_text())
    # `dvc params diff` shows a list as its Python text ('[2, 3]'), every other value as itself.
    as_shown = {key: str(value) if isinstance(value, list) else value
                for key, value in ((key, read[key.split(".")[1]]) for key in shown)}
    assert as_shown == {key: entry["new"] for key, entry in shown.items()}
    assert read["word"] == "off" and read["yes_word"] == "yes" and read["octal"] in ("010", 10)
    assert read["small"] == 1e-7 and read["quoted"] == "1e3" and read["nothing"] is None and read["items"] == [2, 3]
    assert len(shown) == len(sets), shown


def readme_smoke_run() -> str:
    text = (PROJECT / "README.md").read_text()
    commands = re.findall(r"^\.venv/bin/dvc exp run --temp .*$", text, re.M)
    assert len(commands) == 1, commands
    return commands[0]


def test_the_readmes_smoke_run_and_make_exp_work_from_any_shell_and_leave_params_yaml_alone(quick, tmp_path):
    """The README's smoke run, exactly as printed, from a shell where .venv is not activated; then `make exp`
    of the preset it spells out, which DVC's run-cache restores in seconds. params.yaml never changes."""
    repo = with_make_and_venv(copy_repo(quick, tmp_path / "repo"))
    before = (repo / "params.yaml").read_bytes()
    result = subprocess.run(readme_smoke_run(), shell=True, cwd=repo, env=unactivated_env(), capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stdout + result.stderr
    assert (repo / "params.yaml").read_bytes() == before

    made = run(repo, "make", "exp", "PRESET=quick", env=unactivated_env())
    assert (repo / "params.yaml").read_bytes() == before
    assert "applied to your workspace" not in made.stdout + made.stderr
    assert "Running stage 'train'" not in made.stdout, "the same params as the smoke run: restored, not retrained"
    name = re.search(r"-n (quick-[0-9a-f]{7})", made.stdout).group(1)
    shown = json.loads(run(repo, "dvc", "exp", "show", "--json").stdout)
    experiment = next(exp for baseline in shown for experiments in (baseline.get("experiments") or [])
                      for exp in experiments["revs"] if exp.get("name") == name)
    params = experiment["data"]["params"]["params.yaml"]["data"]
    assert experiment["data"]["metrics"]["metrics.json"]["data"]["test_loss"] > 0
    from vaepipe.config import read_yaml_file

    for section, values in read_yaml_file(PROJECT / "presets" / "quick.yaml", "preset").items():
        for key, value in values.items():
            assert params[section][key] == value, (section, key)
