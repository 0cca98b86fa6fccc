"""The input pipeline: prepared arrays to batches, and the one rule for every epoch's randomness.

Every epoch's randomness is a function of (train.seed, epoch) alone: the data order
(`epoch_permutation`) and the state of every SeedGenerator in the model (`epoch_seed`). That is what
makes a resumed run compute bit for bit what an uninterrupted one computes, on every training path.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def epoch_permutation(n: int, seed: int, epoch) -> tf.Tensor:
    """Epoch `epoch`'s order of range(n): a pure function of (seed, epoch), shared by every training path."""
    keys = tf.random.stateless_uniform([n], seed=tf.stack([tf.constant(seed, tf.int64), tf.cast(epoch, tf.int64)]))
    return tf.argsort(keys)


def epoch_seed(seed: int, epoch: int, index: int, replica: int = 0) -> int:
    """The state of the model's SeedGenerator number `index` in `epoch` (on `replica`, under tf.distribute).

    Keras does not save SeedGenerator states with the weights; deriving them per epoch instead makes
    the randomness of epoch k the same whether or not the process was restarted before it.
    """
    entropy = [seed, epoch, index] + ([replica] if replica else [])
    return int(np.random.SeedSequence(entropy).generate_state(1)[0]) >> 1


# Validation images are only read: a batch this large gives the same mean in fewer steps. A constant,
# not evaluate.batch_size, so that evaluation settings never retrain the model.
VAL_BATCH_SIZE = 500


def make_datasets(x_train: np.ndarray, x_val: np.ndarray | None, batch_size: int, seed: int,
                  epoch: tf.Variable, steps_per_execution: int = 1,
                  eval_batch_size: int = VAL_BATCH_SIZE) -> tuple[tf.data.Dataset, tf.data.Dataset | None]:
    """Shuffled training batches (a new order each epoch) and fixed validation batches (None without x_val).

    `epoch` is a tf.Variable that callbacks.EpochRandomState sets before each epoch: the order is a
    pure function of (seed, epoch), so a resumed run sees the same batches as an uninterrupted one.
    The batches are consecutive slices of the epoch's permutation, the last one partial.

    `steps_per_execution` > 1 gives the same batches in the same order, stacked: elements of shape
    (steps, batch, 784) holding up to that many consecutive full batches, which VAE.train_step and
    test_step run in one compiled call (so compile the model with Keras's steps_per_execution=1).
    An epoch's last stack may hold fewer batches; a partial last batch comes alone, as (1, rest, 784).
    """
    n = len(x_train)
    if steps_per_execution > 1:
        images = tf.constant(x_train)
        train = (_epoch_orders(n, seed, epoch)
                 .flat_map(lambda order: _stacks(order, n, batch_size, steps_per_execution))
                 .map(lambda index: tf.gather(images, index)))
        if x_val is None:
            return train.prefetch(tf.data.AUTOTUNE), None
        val_images = tf.constant(x_val)
        val = (tf.data.Dataset.from_tensors(tf.range(len(x_val)))
               .flat_map(lambda order: _stacks(order, len(x_val), eval_batch_size, steps_per_execution))
               .map(lambda index: tf.gather(val_images, index)))
        return train.prefetch(tf.data.AUTOTUNE), val.cache().prefetch(tf.data.AUTOTUNE)
    images = tf.constant(x_train)
    train = (_epoch_orders(n, seed, epoch).unbatch()
             .batch(batch_size)
             .map(lambda index: tf.gather(images, index))
             .prefetch(tf.data.AUTOTUNE))
    if x_val is None:
        return train, None
    val = tf.data.Dataset.from_tensor_slices(x_val).batch(eval_batch_size).cache().prefetch(tf.data.AUTOTUNE)
    return train, val


def _stacks(order: tf.Tensor, n: int, batch_size: int, steps: int) -> tf.data.Dataset:
    """The batches of `order` (consecutive slices of batch_size) as index stacks of up to `steps` batches.

    Full batches are stacked `steps` at a time (the last stack may be smaller); a partial last
    batch cannot share a stack with full ones and comes as its own stack of one.
    """
    full, rest = divmod(n, batch_size)
    batches = tf.reshape(order[:full * batch_size], [full, batch_size])
    stacked = tf.data.Dataset.from_tensor_slices(batches).batch(steps)
    if rest:
        stacked = stacked.concatenate(tf.data.Dataset.from_tensors(order[None, full * batch_size:]))
    return stacked


def _epoch_orders(n: int, seed: int, epoch: tf.Variable) -> tf.data.Dataset:
    """One element per epoch: that epoch's permutation of range(n)."""
    # The variable is read when the epoch's iterator starts, i.e. after on_epoch_begin set it.
    return tf.data.Dataset.from_tensors(0).map(lambda _: epoch_permutation(n, seed, epoch.read_value()))
