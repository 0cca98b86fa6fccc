"""dvc.yaml cannot lie about code: every stage depends on exactly the `vaepipe` modules its script
imports, transitively (lazy imports inside functions included), so an edit reruns exactly the stages
that run the edited code, and a new module cannot be forgotten."""

from __future__ import annotations

from pathlib import Path

import yaml
from stage_imports import ROOT, stage_closures, stage_scripts

from vaepipe.imports import module_file

SRC_PACKAGE = Path("src") / "vaepipe"


def declared(stage: dict) -> set[Path]:
    return {Path(dep) for dep in stage.get("deps", [])}


def test_every_stage_depends_on_exactly_the_vaepipe_modules_it_imports():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    problems = []
    for name, closure in stage_closures().items():
        deps = declared(stages[name])
        for module in sorted(set(closure) - deps):
            problems.append(f"stage {name}: dvc.yaml deps lack {module} (imported via {' -> '.join(closure[module])})")
        for extra in sorted(dep for dep in deps - set(closure) if dep.is_relative_to(SRC_PACKAGE)):
            problems.append(f"stage {name}: dvc.yaml deps list {extra}, which the stage does not import")
    assert not problems, "\n".join(problems)


def test_every_stage_depends_on_its_own_script():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, script in stage_scripts().items():
        assert script.relative_to(ROOT) in declared(stages[name]), f"stage {name}: deps lack its script {script}"


def test_the_closure_follows_lazy_relative_and_by_file_name_imports(tmp_path):
    """The closure is not vacuous: each kind of import it must see is seen, and nothing else."""
    package = tmp_path / "src" / "vaepipe"
    package.mkdir(parents=True)
    files = {
        "__init__.py": "__version__ = '1'\n",
        "top.py": "from vaepipe import lazy\n",
        "lazy.py": "def f():\n    from . import relative\n",
        "relative.py": "import vaepipe.sub.deep\n",
        "sub/__init__.py": "",
        "sub/deep.py": "PATH = 'named.py'\n",  # a package file run by path (as MLflow runs serving.py)
        "named.py": "from vaepipe import __version__\n",
        "unused.py": "",
    }
    for name, text in files.items():
        (package / name).parent.mkdir(exist_ok=True)
        (package / name).write_text(text)
    (tmp_path / "stages").mkdir()
    (tmp_path / "stages" / "one.py").write_text("import os\n\ndef main():\n    from vaepipe.top import x\n")
    (tmp_path / "dvc.yaml").write_text("stages:\n  one:\n    cmd: exec python stages/one.py --flag\n")
    closure = stage_closures(tmp_path)["one"]
    expected = {"__init__.py", "top.py", "lazy.py", "relative.py", "sub/__init__.py", "sub/deep.py", "named.py"}
    assert set(closure) == {Path("src/vaepipe") / name for name in expected}
    assert closure[Path("src/vaepipe/sub/deep.py")] == ["one.py", "vaepipe.top", "vaepipe.lazy", "vaepipe.relative",
                                                        "vaepipe.sub.deep"]
    assert module_file("vaepipe.__version__", tmp_path / "src") is None


def test_prepare_does_not_run_the_model_code():
    """The split the design relies on: a model edit must not rerun prepare (which also stays TF-free)."""
    closures = stage_closures()
    assert SRC_PACKAGE / "model.py" not in closures["prepare"]
    assert not any(file.is_relative_to(SRC_PACKAGE / "train") for file in closures["prepare"])
    for stage in ("train", "evaluate", "plot"):
        assert SRC_PACKAGE / "model.py" in closures[stage], stage
