"""vaepipe: a reproducible DVC + MLflow pipeline for variational autoencoders on MNIST-style images."""

__version__ = "0.1.0"

import os

# TensorFlow's C++ log lines hide the progress bar. Level 3 keeps only fatal ones: loading an entry of
# XLA's compile cache (process.use_xla_cache) logs two harmless ERROR lines per program (a text-format
# parse tried before the binary one, CPU feature names). Failures still raise with their message;
# set TF_CPP_MIN_LOG_LEVEL=0 to see everything.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
