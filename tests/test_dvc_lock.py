"""The committed dvc.lock matches the committed code and params (no `dvc repro` needed to check it): a
fresh clone's `dvc status` then shows no changed dependency or param, and CI catches a lock left stale
by a code edit committed without rerunning the pipeline."""

from __future__ import annotations

import hashlib
from pathlib import Path

import yaml

from vaepipe.config import read_yaml_file

ROOT = Path(__file__).resolve().parents[1]


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()  # DVC 3 hashes a file's bytes as they are


def _lookup(params: dict, dotted: str):
    node = params
    for part in dotted.split("."):
        node = node[part]
    return node


def _declared(stage: dict) -> list[str]:
    return [dep if isinstance(dep, str) else next(iter(dep)) for dep in stage.get("deps", [])]


def stale_entries(root: Path) -> list[str]:
    """Every way dvc.lock disagrees with the files and params beside it, one line each."""
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    pipeline = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    params = read_yaml_file(root / "params.yaml", "params file")
    problems = []
    for name, declared in pipeline.items():
        if name not in lock:
            problems.append(f"stage {name}: not in dvc.lock")
            continue
        locked = lock[name]
        if locked["cmd"] != declared["cmd"]:
            problems.append(f"stage {name}: dvc.lock's cmd {locked['cmd']!r} is not dvc.yaml's {declared['cmd']!r}")
        locked_deps = {dep["path"]: dep for dep in locked.get("deps", [])}
        for path in sorted(set(_declared(declared)) ^ set(locked_deps)):
            side = "dvc.yaml" if path in _declared(declared) else "dvc.lock"
            problems.append(f"stage {name}: {path} is a dependency in {side} only")
        for path, dep in sorted(locked_deps.items()):
            file = root / path
            if dep["md5"].endswith(".dir") or not file.is_file():
                continue  # another stage's output (data/prepared, models/...): not committed to git
            if _md5(file) != dep["md5"]:
                problems.append(f"stage {name}: {path} changed since dvc.lock was written (md5 {_md5(file)}, "
                                f"dvc.lock has {dep['md5']})")
        for key, value in sorted(locked.get("params", {}).get("params.yaml", {}).items()):
            try:
                current = _lookup(params, key)
            except (KeyError, TypeError):
                problems.append(f"stage {name}: param {key} is in dvc.lock but not in params.yaml")
                continue
            if current != value:
                problems.append(f"stage {name}: param {key} is {current!r} in params.yaml, {value!r} in dvc.lock")
    return problems


def test_dvc_lock_matches_the_committed_code_and_params():
    problems = stale_entries(ROOT)
    assert not problems, "dvc.lock is stale (run `dvc repro` and commit dvc.lock):\n" + "\n".join(problems)


def test_a_stale_lock_is_named_by_stage_and_file(tmp_path):
    """The check is not vacuous: an edited dependency and an edited param are both reported."""
    for name in ("dvc.yaml", "dvc.lock", "params.yaml"):
        (tmp_path / name).write_bytes((ROOT / name).read_bytes())
    lock = yaml.safe_load((ROOT / "dvc.lock").read_text())["stages"]
    script = next(dep["path"] for dep in lock["prepare"]["deps"] if dep["path"].startswith("stages/"))
    for dep in lock["prepare"]["deps"]:
        if not dep["md5"].endswith(".dir"):
            (tmp_path / dep["path"]).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / dep["path"]).write_bytes((ROOT / dep["path"]).read_bytes())
    (tmp_path / script).write_text((ROOT / script).read_text() + "# an edit\n")
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text().replace("split_seed: 0", "split_seed: 7"))
    problems = [line for line in stale_entries(tmp_path) if line.startswith("stage prepare")]
    assert any(script in line and "changed since" in line for line in problems), problems
    assert any("data.split_seed is 7" in line for line in problems), problems
