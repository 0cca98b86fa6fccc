"""A code edit makes `dvc status` report exactly the stages that run the edited code: real DVC, a real
edit, in a copy of the baseline repo (its outputs and dvc.lock are up to date)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from pipeline_repo import copy_repo, stage_env
from stage_imports import stage_closures

pytestmark = pytest.mark.e2e


def changed_stages(repo: Path) -> dict[str, set[str]]:
    """`dvc status --json`: stage -> the deps it reports changed (stages with other changes: empty set)."""
    result = subprocess.run(["dvc", "status", "--json"], cwd=repo, env=stage_env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    changed: dict[str, set[str]] = {}
    for stage, changes in json.loads(result.stdout or "{}").items():
        deps = changed.setdefault(stage.split(":")[-1], set())
        for change in changes:
            if isinstance(change, dict):
                deps.update(change.get("changed deps", {}))
    return changed


def add_comment(path: Path) -> None:
    path.write_text(path.read_text() + "# an edit that changes no behaviour, only the file's hash\n")


@pytest.fixture
def repo(baseline, tmp_path) -> Path:
    copy = tmp_path / "repo"
    copy_repo(baseline.repo, copy)
    assert changed_stages(copy) == {}, "the baseline copy is not up to date"
    return copy


def test_a_model_edit_changes_train_evaluate_and_plot_but_not_prepare(repo):
    # model.py, not the data.py: prepare runs data.py too (via vaepipe.prepared), so a data.py
    # edit rightly changes prepare; the model code is what train, evaluate and plot run and prepare not.
    add_comment(repo / "src" / "vaepipe" / "model.py")
    changed = changed_stages(repo)
    assert set(changed) == {"train", "evaluate", "plot"}, changed
    assert all(deps == {"src/vaepipe/model.py"} for deps in changed.values()), changed


def test_every_module_edit_changes_exactly_the_stages_that_import_it(repo):
    closures = stage_closures(repo)
    modules = sorted((repo / "src" / "vaepipe").rglob("*.py"))
    for module in modules:
        add_comment(module)
    changed = changed_stages(repo)
    for stage, closure in closures.items():
        assert changed.get(stage, set()) == {str(path) for path in closure}, stage
    unused = {str(m.relative_to(repo)) for m in modules} - {str(p) for c in closures.values() for p in c}
    assert not unused & set().union(*changed.values()), "a module no stage runs changed a stage"
