"""docs/extending.md's recipe for a new architecture, carried out for real on a copy of the package:
two functions and an entry in architectures.py, its name in config.py; then it trains, saves and loads."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
import typing
from pathlib import Path

from vaepipe.architectures import ARCHITECTURES
from vaepipe.config import ModelParams

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "vaepipe"
DOCS = Path(__file__).resolve().parents[1] / "docs" / "extending.md"

TINY = '''

def tiny_encoder(params: ModelParams, image):
    """A test architecture: one 16-unit layer each way."""
    return layers.Dense(16, activation="relu", name="enc_tiny")(image)


def tiny_decoder(params: ModelParams, z):
    hidden = layers.Dense(16, activation="relu", name="dec_tiny")(z)
    return layers.Dense(IMAGE_PIXELS, name="logits")(hidden)


ARCHITECTURES["tiny"] = (tiny_encoder, tiny_decoder)
'''

CHECK = textwrap.dedent("""
    import numpy as np, keras
    from vaepipe.config import parse_params
    from vaepipe.training import compile_vae
    from vaepipe.model import load_vae

    params = parse_params({"model": {"arch": "tiny", "latent_dim": 3}, "train": {"batch_size": 16}})
    vae = compile_vae(params, steps_per_execution=4, steps_per_epoch=4)
    x = np.random.default_rng(0).random((64, 784), dtype=np.float32)
    history = vae.fit(x, epochs=2, batch_size=16, verbose=0, shuffle=False)
    assert [l.name for l in vae.encoder.layers if l.name.endswith("tiny")] == ["enc_tiny"]
    vae.save("tiny.keras")
    loaded = load_vae("tiny.keras")  # safe_mode=True
    np.testing.assert_array_equal(np.asarray(loaded.encoder(x[:4])[0]), np.asarray(vae.encoder(x[:4])[0]))
    print("losses", history.history["loss"])
""")


def test_every_configurable_arch_has_builders_and_back():
    allowed = set(typing.get_args(ModelParams.model_fields["arch"].annotation))
    assert allowed == set(ARCHITECTURES)


def test_the_documented_recipe_adds_a_working_architecture(tmp_path):
    recipe = DOCS.read_text()
    assert "architectures.py" in recipe and "ARCHITECTURES" in recipe and "config.py" in recipe
    copy = tmp_path / "src" / "vaepipe"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    # Step 1: the two functions and their entry in architectures.py.
    (copy / "architectures.py").write_text((copy / "architectures.py").read_text() + TINY)
    # Step 2: the name in config.py's ModelParams.arch.
    config = (copy / "config.py").read_text()
    assert 'arch: Literal["seed", "mlp", "conv"]' in config
    (copy / "config.py").write_text(config.replace('arch: Literal["seed", "mlp", "conv"]',
                                                   'arch: Literal["seed", "mlp", "conv", "tiny"]'))
    result = subprocess.run([sys.executable, "-c", CHECK], cwd=tmp_path, capture_output=True, text=True,
                            env={"PYTHONPATH": str(tmp_path / "src"), "TF_CPP_MIN_LOG_LEVEL": "3",
                                 "PATH": "/usr/bin:/bin"}, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    losses = [float(v) for v in result.stdout.split("losses")[1].strip(" []\n").split(",")]
    assert len(losses) == 2 and losses[1] < losses[0]  # it trains
