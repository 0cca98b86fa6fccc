"""vaepipe: a reproducible DVC + MLflow pipeline for variational autoencoders on MNIST-style images."""

__version__ = "0.1.0"

import os

# TensorFlow's C++ log lines hide the progress bar. Level 3 keeps only fatal ones: loading an entry of
# XLA's compile cache (process.use_xla_cache) logs two harmless ERROR lines per program (a text-format
# parse tried before the binary one, CPU feature names). Failures still raise with their message;
# set TF_CPP_MIN_LOG_LEVEL=0 to see everything.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def __getattr__(name: str):
    """`from vaepipe import fit`: training on arrays in a notebook (vaepipe.train.single_process.fit). Loaded on
    first use only, so `import vaepipe` (every stage, prepare too) does not load TensorFlow."""
    if name == "fit":
        import importlib

        return importlib.import_module("vaepipe.train.single_process").fit
    raise AttributeError(f"module 'vaepipe' has no attribute {name!r}")
