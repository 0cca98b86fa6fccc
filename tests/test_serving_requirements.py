"""The logged model's pip requirements: every third-party package that serving's import closure needs,
pinned to the distribution actually installed (tensorflow, tensorflow-cpu, ...), and never an error."""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions, version
from pathlib import Path

from packaging.requirements import Requirement

from vaepipe.imports import import_closure
from vaepipe.tracking import model_logging

SRC = Path(__file__).resolve().parents[1] / "src"


def serving_closure() -> set[str]:
    """Top-level names of the third-party modules that vaepipe.serving imports, itself or through the
    vaepipe modules (and their packages' __init__) it runs, transitively (vaepipe.imports' closure)."""
    serving = SRC / "vaepipe" / "serving.py"
    third_party: set[str] = set()
    for file in {serving, *import_closure(serving, SRC)}:
        for node in ast.walk(ast.parse(file.read_text())):  # lazy imports too: load_context imports inside
            if isinstance(node, ast.Import):
                tops = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                tops = {node.module.split(".")[0]}
            else:
                continue
            third_party.update(top for top in tops if top not in sys.stdlib_module_names
                               and top not in ("__future__", "vaepipe"))
    return third_party


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned(requirements: list[str]) -> dict[str, str]:
    """name -> pinned version, for requirements of the form name==version."""
    out = {}
    for line in requirements:
        requirement = Requirement(line)
        (spec,) = requirement.specifier
        assert spec.operator == "==", line
        out[canonical(requirement.name)] = spec.version
    return out


def test_the_closure_reaches_through_vaepipe_modules():
    # Guards the derivation itself: serving.py imports neither pydantic nor ruamel.yaml, vaepipe.config does.
    closure = serving_closure()
    assert {"mlflow", "numpy", "keras", "pydantic", "ruamel"} <= closure, closure


def test_every_package_in_servings_import_closure_is_pinned_at_its_installed_version():
    requirements = pinned(model_logging.serving_requirements())
    providers = packages_distributions()
    for module in sorted(serving_closure()):
        distributions = providers.get(module)
        assert distributions, f"{module} is imported by serving but no installed distribution provides it"
        for distribution in distributions:
            assert requirements.get(canonical(distribution)) == version(distribution), (module, distribution)


def test_tensorflow_is_pinned_under_the_name_it_is_installed_as():
    requirements = pinned(model_logging.serving_requirements())
    installed = {canonical(d): version(d) for d in packages_distributions()["tensorflow"]}
    tf_pins = {name: v for name, v in requirements.items() if name in ("tensorflow", "tensorflow-cpu", "tensorflow-gpu",
                                                                        "tensorflow-intel", "tensorflow-macos")}
    assert tf_pins == installed


def test_a_distribution_that_is_not_installed_does_not_fail_the_end_of_training():
    # As where TensorFlow comes as a distribution named otherwise than here (the old code looked up
    # tensorflow-cpu by name and raised after the last epoch).
    providers = {**packages_distributions(), "tensorflow": ["tensorflow_not_installed_here"]}
    requirements = model_logging.serving_requirements(providers)
    assert "tensorflow-not-installed-here" in requirements  # named, unpinned: pip resolves it
    assert not any(line.startswith("tensorflow-cpu") for line in requirements)
