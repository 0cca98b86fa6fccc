"""The tf.distribute strategy for `train.distribute`, and who this process is within it.

Devices: `mirrored` uses every local GPU, else the CPU; `VAEPIPE_LOGICAL_CPUS=N` splits the CPU into
N logical devices first (for testing data parallelism without GPUs). `multi_worker` reads the
cluster from TF_CONFIG (set by vaepipe.train.launcher for local workers).
"""

from __future__ import annotations

import os

import tensorflow as tf

from vaepipe.errors import ConfigError

LOGICAL_CPUS_ENV = "VAEPIPE_LOGICAL_CPUS"


def make_strategy(kind: str) -> tf.distribute.Strategy:
    """The strategy for `train.distribute`. Must run before TensorFlow executes anything."""
    logical = int(os.environ.get(LOGICAL_CPUS_ENV, "0") or 0)
    if logical > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * logical)
    if kind == "mirrored":
        devices = [d.name for d in tf.config.list_logical_devices("GPU")] or \
                  [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices)
    if kind == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise ConfigError("train.distribute = 'multi_worker' needs TF_CONFIG in the environment; run "
                              "`dvc repro` (which starts the local workers) or scripts/launch_workers.py")
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"unknown train.distribute {kind!r}")


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True for the one process that writes (task 0 of multi_worker; always true for mirrored)."""
    return strategy.extended.should_checkpoint


def num_workers(strategy: tf.distribute.Strategy) -> int:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return 1
    return sum(len(tasks) for job, tasks in resolver.cluster_spec().as_dict().items() if job in ("chief", "worker"))
