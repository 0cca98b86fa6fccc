"""Batch stacking, a CPU speed-up that wraps the model from outside: one compiled call runs the model's own
train_step (test_step) on each batch of a stack (steps, batch, 784), in order, in a loop inside one XLA
program. That removes the per-batch launch of Keras's multi-step loop, which dominates a small model's
step on CPU (bench/NOTES.md); per batch the arithmetic is exactly the model's step. It does nothing for
a GPU, and convolutions run very slowly inside an XLA loop on CPU, so the training set-up
(single_process.compile_for_training) stacks only dense models.
"""

from __future__ import annotations

import keras
import tensorflow as tf


class StackedSteps(keras.Model):
    """`model`, fitted on stacks of `batches_per_stack` batches (train.inputs.make_datasets makes them)."""

    def __init__(self, model: keras.Model, batches_per_stack: int, **kwargs):
        super().__init__(name=f"{model.name}_stacked", **kwargs)
        self.inner = model
        self.batches_per_stack = batches_per_stack

    def build(self, input_shape=None) -> None:
        self.built = True  # the wrapped model is built

    @property
    def metrics(self) -> list:
        return self.inner.metrics

    def call(self, x, training: bool = False):
        return self.inner(x, training=training)

    def train_step(self, stack):
        for_each_batch(self.inner.train_step, stack)
        return {metric.name: metric.result() for metric in self.inner.metrics}

    def test_step(self, stack):
        for_each_batch(self.inner.test_step, stack)
        return {metric.name: metric.result() for metric in self.inner.metrics}


def for_each_batch(step, stack) -> None:
    """Run `step` on each batch of `stack` in order, in a loop inside the one compiled call."""
    steps = tf.shape(stack)[0]

    def body(index):
        step(stack[index])
        return index + 1

    # parallel_iterations=1: each batch reads the weights, optimizer state and seed streams its
    # predecessor wrote (XLA runs the loop sequentially anyway).
    tf.while_loop(lambda index: index < steps, body, [tf.constant(0)], parallel_iterations=1)

