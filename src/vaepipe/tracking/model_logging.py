"""The trained model in MLflow: a pyfunc "model from code" (serving.py + the .keras file, nothing
pickled), with its pip requirements, a signature and an input example, registered as vaepipe-vae.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow

from vaepipe import paths
from vaepipe.tracking.store import store_call

REGISTERED_MODEL = "vaepipe-vae"


def log_model(model_file: Path, register: bool = True, input_example: Any = "prepared") -> None:
    """Log the saved .keras file as an MLflow pyfunc model ("models from code": nothing pickled).

    `vaepipe/serving.py` is the model's code; the .keras file is its artifact; the vaepipe package
    travels with it so `mlflow models serve` can load the registered custom layers. The signature is
    model_signature(); the input example defaults to two held-out images train read (None: no example).
    """
    package_dir = Path(__file__).resolve().parents[1]  # src/vaepipe
    if isinstance(input_example, str) and input_example == "prepared":
        input_example = prepared_input_example()
    with store_call("logging the model"):
        mlflow.pyfunc.log_model(
            name="model",
            python_model=str(package_dir / "serving.py"),
            artifacts={"keras_model": str(model_file)},
            code_paths=[str(package_dir)],
            pip_requirements=serving_requirements(),
            registered_model_name=REGISTERED_MODEL if register else None,
            signature=model_signature(),
            input_example=input_example,
        )


# What the served model imports (vaepipe.serving and the vaepipe modules it loads, plus MLflow's pyfunc
# needs), by import name; tests/test_serving_requirements.py derives the closure and checks this list.
SERVING_IMPORTS = ("mlflow", "pandas", "numpy", "keras", "tensorflow", "pydantic", "ruamel")


def serving_requirements(providers: Mapping[str, list[str]] | None = None) -> list[str]:
    """The served model's pip requirements: every installed distribution that provides one of
    SERVING_IMPORTS (`tensorflow` comes as tensorflow, tensorflow-cpu, ...), pinned to its version.
    `providers` maps import names to distributions (default: what is installed). Never raises: the
    end of a training run must not fail on a distribution's name."""
    from importlib.metadata import PackageNotFoundError, packages_distributions, version

    providers = packages_distributions() if providers is None else providers
    requirements: list[str] = []
    for module in SERVING_IMPORTS:
        for distribution in sorted(set(providers.get(module, []))) or [module]:
            name = re.sub(r"[-_.]+", "-", distribution).lower()  # PEP 503: tensorflow_cpu -> tensorflow-cpu
            try:
                requirement = f"{name}=={version(distribution)}"
            except PackageNotFoundError:
                requirement = name
            if requirement not in requirements:
                requirements.append(requirement)
    return requirements


def model_signature():
    """One float32 tensor input of any width. The model takes rows of 784 pixels (images) or of
    latent_dim values (latent vectors); a signature cannot say "either", and a fixed width would make
    MLflow refuse the other, so the width is left open (-1) and serving.py refuses any other width."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    return ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, -1))]))


def prepared_input_example(rows: int = 2):
    """The first `rows` validation images (the training split's when data.val_size = 0) as the model takes
    them (float32 in [0, 1]), or None. Never test images: the train stage, which logs the model, reads no
    test image (only evaluate does)."""
    from vaepipe.errors import DataError
    from vaepipe.prepared import held_out_split, load_split, to_unit_interval

    try:
        return to_unit_interval(load_split(paths.prepared_split(held_out_split())).images[:rows])
    except DataError:
        return None
