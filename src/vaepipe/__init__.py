"""vaepipe: a reproducible DVC + MLflow pipeline for variational autoencoders on MNIST-style images."""

__version__ = "0.1.0"

import os

# TensorFlow's C++ start-up chatter (CPU feature notes, XLA service lines) hides the progress bar.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
