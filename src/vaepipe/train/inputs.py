"""The input pipeline: prepared arrays to batches, and the one rule for every epoch's randomness.

Every epoch's randomness is a function of (train.seed, epoch) alone: the data order
(`epoch_permutation`) and the state of every SeedGenerator in the model (`epoch_seed`). That is what
makes a resumed run compute bit for bit what an uninterrupted one computes, on every training path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import tensorflow as tf

if TYPE_CHECKING:
    from vaepipe.config import Params


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


def batches_per_epoch(n_images: int, params: Params) -> int:
    """Training batches per epoch: the last one may be short (every image is seen once per epoch)."""
    return -(-n_images // params.train.batch_size)


# Validation images are only read: a batch this large gives the same mean in fewer steps. A constant,
# not evaluate.batch_size, so that evaluation settings never retrain the model.
VAL_BATCH_SIZE = 500


class Batches(NamedTuple):
    """What `fit` takes: every epoch's training batches in one dataset, and the validation batches."""

    train: tf.data.Dataset  # the epochs of `epochs`, one after another
    stacks_per_epoch: int  # elements per epoch (stacks of batches, or batches): fit's steps_per_epoch
    val: tf.data.Dataset | None  # the same validation batches each time it is iterated


def make_datasets(x_train: np.ndarray, x_val: np.ndarray | None, batch_size: int, seed: int,
                  epochs: range, batches_per_stack: int = 1, eval_batch_size: int = VAL_BATCH_SIZE) -> Batches:
    """Shuffled training batches for each epoch of `epochs` (a new order each epoch, consecutive
    slices of `epoch_permutation(n, seed, epoch)`, the last one partial) and fixed validation batches
    (None without x_val).

    One dataset holds all the epochs, so `fit(batches.train, steps_per_epoch=batches.stacks_per_epoch)`
    keeps one iterator for the whole run: Keras otherwise starts a new one each epoch, which copies
    the whole training set every time and stalls epochs (bench/NOTES.md).
    Each epoch's order is keyed by the epoch number the dataset itself carries, so a run resumed at
    epoch k (`epochs=range(k, total)`) sees the batches an uninterrupted one sees.

    `batches_per_stack` > 1 gives the same batches in the same order, stacked: elements of shape
    (steps, batch, 784) holding up to that many consecutive full batches (`stack_size` picks how
    many), which VAE.train_step and test_step run in one compiled call (so compile the model with
    the same batches_per_stack and Keras's steps_per_execution=1).
    An epoch's last stack may hold fewer batches; a partial last batch comes alone, as (1, rest, 784).
    """
    n = len(x_train)
    images = tf.constant(x_train)
    orders = tf.data.Dataset.range(epochs.start, epochs.stop).map(lambda epoch: epoch_permutation(n, seed, epoch))
    if batches_per_stack > 1:
        train = orders.flat_map(lambda order: _stacks(order, n, batch_size, batches_per_stack))
    else:
        train = orders.flat_map(lambda order: tf.data.Dataset.from_tensor_slices(order).batch(batch_size))
    stacks_per_epoch = _elements(n, batch_size, batches_per_stack)
    train = train.map(lambda index: tf.gather(images, index)).prefetch(tf.data.AUTOTUNE)
    if x_val is None:
        return Batches(train, stacks_per_epoch, None)
    if batches_per_stack > 1:
        val_images = tf.constant(x_val)
        val = (tf.data.Dataset.from_tensors(tf.range(len(x_val)))
               .flat_map(lambda order: _stacks(order, len(x_val), eval_batch_size, batches_per_stack))
               .map(lambda index: tf.gather(val_images, index))
               # A known length: Keras then ends each validation pass without an "ran out of data" warning.
               .apply(tf.data.experimental.assert_cardinality(_elements(len(x_val), eval_batch_size,
                                                                        batches_per_stack))))
    else:
        val = tf.data.Dataset.from_tensor_slices(x_val).batch(eval_batch_size)
    return Batches(train, stacks_per_epoch, val.cache().prefetch(tf.data.AUTOTUNE))


def stack_size(full_batches: int, steps: int) -> int:
    """Batches per stack: `steps`, or the largest divisor of `full_batches` of at least steps / 2.

    Every distinct stack shape is traced and XLA-compiled once, so stacks that divide the epoch save
    the compile of a smaller last stack: 1562 batches of 32 (the default 50k images) go as 22 stacks
    of 71 instead of 15 of 100 and one of 62.
    """
    if full_batches <= steps:
        return max(full_batches, 1)
    divisor = max(d for d in range(1, steps + 1) if full_batches % d == 0)
    return divisor if 2 * divisor >= steps else steps


def batches_in_elements(elements: int, n: int, batch_size: int, batches_per_stack: int = 1) -> int:
    """How many batches an epoch's first `elements` elements hold (stacks of batches, as make_datasets
    makes them, or batches): the progress bar counts batches, Keras counts elements."""
    full, rest = divmod(n, batch_size)
    if batches_per_stack <= 1:
        return min(elements, full + (1 if rest else 0))
    size = stack_size(full, batches_per_stack)
    full_stacks = -(-full // size)
    if elements <= full_stacks:
        return min(elements * size, full)
    return full + (1 if rest else 0)  # the partial last batch: a stack of its own


def _elements(n: int, batch_size: int, steps: int) -> int:
    """How many elements (batches, or stacks of up to `steps` batches) one pass over n images has."""
    full, rest = divmod(n, batch_size)
    stacks = -(-full // stack_size(full, steps)) if steps > 1 else full
    return stacks + (1 if rest else 0)


def _stacks(order: tf.Tensor, n: int, batch_size: int, steps: int) -> tf.data.Dataset:
    """The batches of `order` (consecutive slices of batch_size) as index stacks of up to `steps` batches.

    Full batches are stacked `stack_size(full, steps)` at a time (the last stack may be smaller); a
    partial last batch cannot share a stack with full ones and comes as its own stack of one.
    """
    full, rest = divmod(n, batch_size)
    batches = tf.reshape(order[:full * batch_size], [full, batch_size])
    stacked = tf.data.Dataset.from_tensor_slices(batches).batch(stack_size(full, steps))
    if rest:
        stacked = stacked.concatenate(tf.data.Dataset.from_tensors(order[None, full * batch_size:]))
    return stacked
