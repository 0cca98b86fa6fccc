"""docs/extending.md's recipe for a new architecture with its own param, carried out for real on a copy of
the package: two functions and an entry in architectures.py; its name, its param and where the param applies
in config.py (two files, no more); then it trains, saves and loads."""

from __future__ import annotations

import filecmp
import re
import shutil
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from vaepipe.architectures import ARCHITECTURES
from vaepipe.config import ARCH_ONLY_PARAMS, ModelParams, param_applies

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "vaepipe"
DOCS = Path(__file__).resolve().parents[1] / "docs" / "extending.md"

TINY = '''

def tiny_encoder(params: ModelParams, image):
    """A test architecture: one layer of `model.tiny_units` each way."""
    return layers.Dense(params.tiny_units, activation="relu", name="enc_tiny")(image)


def tiny_decoder(params: ModelParams, z):
    hidden = layers.Dense(params.tiny_units, activation="relu", name="dec_tiny")(z)
    return layers.Dense(IMAGE_PIXELS, name="logits")(hidden)


ARCHITECTURES["tiny"] = (tiny_encoder, tiny_decoder)
'''

TRAIN_TINY = Path(__file__).resolve().parent / "programs" / "train_tiny_arch.py"


def test_every_configurable_arch_has_builders_and_back():
    allowed = set(typing.get_args(ModelParams.model_fields["arch"].annotation))
    assert allowed == set(ARCHITECTURES)


def changed_files(original: Path, copy: Path) -> list[str]:
    """The files of `copy` that differ from (or are not in) `original`."""
    return sorted(str(path.relative_to(copy)) for path in copy.rglob("*.py")
                  if not (original / path.relative_to(copy)).exists()
                  or not filecmp.cmp(path, original / path.relative_to(copy), shallow=False))


def test_the_documented_recipe_adds_a_working_architecture(tmp_path):
    recipe = DOCS.read_text()
    assert "architectures.py" in recipe and "ARCHITECTURES" in recipe and "config.py" in recipe
    copy = tmp_path / "src" / "vaepipe"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    # Step 1: the two functions and their entry in architectures.py.
    (copy / "architectures.py").write_text((copy / "architectures.py").read_text() + TINY)
    # Step 2, config.py: the name in ModelParams.arch, the param as a field, and the arch it applies to.
    config = (copy / "config.py").read_text()
    config, named = re.subn(r'(arch: Literal\[[^\]]*)\]', r'\1, "tiny"]', config, count=1)
    config, added = re.subn(r'(\n    arch: Literal\[[^\n]*\n)',
                            r'\1    tiny_units: int = Field(default=16, ge=1, description="tiny: units per layer")\n',
                            config, count=1)
    config, applies = re.subn(r'ARCH_ONLY_PARAMS = \{', 'ARCH_ONLY_PARAMS = {"model.tiny_units": ("tiny",), ',
                              config, count=1)
    assert (named, added, applies) == (1, 1, 1)
    (copy / "config.py").write_text(config)
    assert changed_files(PACKAGE, copy) == ["architectures.py", "config.py"]
    result = subprocess.run([sys.executable, str(TRAIN_TINY)], cwd=tmp_path, capture_output=True, text=True,
                            env={"PYTHONPATH": str(tmp_path / "src"), "TF_CPP_MIN_LOG_LEVEL": "3",
                                 "PATH": "/usr/bin:/bin"}, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    losses = [float(v) for v in result.stdout.split("losses")[1].strip(" []\n").split(",")]
    assert len(losses) == 2 and losses[1] < losses[0]  # it trains


CHANGED = {"model.hidden": [7], "model.activation": "tanh", "model.conv_filters": [4, 8], "model.conv_dense": 3}


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_arch_only_params_are_the_ones_each_architecture_reads(arch):
    """config.ARCH_ONLY_PARAMS (what `make compare` blanks) against the builders: changing a param changes
    the built layers exactly where it applies."""
    import keras

    def layers_of(params: ModelParams) -> list[tuple]:
        encoder, decoder = ARCHITECTURES[arch]
        image, z = keras.Input((784,)), keras.Input((params.latent_dim,))
        model = keras.Model([image, z], [encoder(params, image), decoder(params, z)])
        return [(type(layer).__name__, *(layer.get_config().get(key) for key in ("units", "filters", "activation")))
                for layer in model.layers]

    assert set(CHANGED) == set(ARCH_ONLY_PARAMS)
    default = layers_of(ModelParams(arch=arch))
    for name, value in CHANGED.items():
        changed = layers_of(ModelParams(arch=arch, **{name.split(".")[1]: value}))
        assert (changed != default) == param_applies(name, arch), (arch, name)
