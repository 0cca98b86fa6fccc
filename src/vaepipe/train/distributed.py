"""Data-parallel training with tf.distribute: `train.distribute: mirrored | multi_worker`.

Why a custom loop: Keras 3's `Model.fit` fails under MultiWorkerMirroredStrategy (keras-team/keras
issue 20585: "Invalid reduction dimension 0 for input with 0 dimensions" in the loss reduction). This
loop steps the VAE's own objective (VAE.compute_terms) under the strategy instead, with the same Adam settings:

- The global batch is `train.batch_size`, the same consecutive slice of the epoch's permutation as in
  the single-process path (inputs.make_datasets), split evenly across the replicas.
- Each replica sums its per-example losses and divides by the *global* batch size; the optimizer
  sums the replicas' gradients. So each step's gradient is the one-device gradient of the batch mean.
- Epoch metrics (the objective's loss and terms, val_*) are per-example means over the epoch, as Keras's Mean
  trackers give in the single-process path; epoch_time is wall clock, train plus validation.
- Randomness (z draws, dynamic binarization) is a function of (train.seed, epoch, replica), set
  before each epoch, so resuming from a checkpoint is exact for the same number of replicas.
  Replica 0 gets the single-process seeds; the others fold their replica id in, so that replicas
  never draw the same noise. (Per-replica draws differ from one device's: losses agree with the
  single-process run statistically, not bit for bit.)

Only the chief (task 0; the only task of `mirrored`) writes: checkpoints, the CSV log, the model and
the MLflow run. Other workers write nothing: on resume they receive the chief's restored weights
and optimizer state over the strategy's collectives, so they need no shared disk.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from vaepipe import objectives, prepared, tracking
from vaepipe.config import Params
from vaepipe.errors import stop_if_signalled
from vaepipe.model import VAE, build_vae
from vaepipe.progress import EpochProgress
from vaepipe.train.callbacks import check_finite, seed_generators
from vaepipe.train.epoch_end import EpochEnd
from vaepipe.train.inputs import VAL_BATCH_SIZE, batches_per_epoch, epoch_permutation, epoch_seed
from vaepipe.train.schedules import make_optimizer
from vaepipe.train.session import OutputsHook, open_session
from vaepipe.train.strategy import is_chief, make_strategy, num_workers


def replica_batches(strategy: tf.distribute.Strategy, images: np.ndarray, order: np.ndarray,
                    global_batch: int) -> tf.distribute.DistributedDataset:
    """Global batches of `order` (consecutive slices, the last one partial), each split across replicas.

    Every element a replica receives is (its images, the size of the whole global batch): the loss
    divides by the latter, so a partial last batch weighs its examples exactly as one device does.
    """
    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        replicas = context.num_replicas_in_sync
        local = replicas // context.num_input_pipelines  # replicas fed by this pipeline (this worker)
        first = context.input_pipeline_id * local
        table = tf.constant(images)

        def split(index):
            size = tf.shape(index, out_type=tf.int64)[0]

            def piece(replica):
                # Balanced contiguous slices: replica r gets [r*size/R, (r+1)*size/R).
                part = index[(replica * size) // replicas:((replica + 1) * size) // replicas]
                return tf.gather(table, part), size

            # Elements go to this worker's replicas round-robin: one per replica, in order.
            return tf.data.Dataset.range(first, first + local).map(piece)

        batches = tf.data.Dataset.from_tensor_slices(order.astype(np.int64)).batch(global_batch)
        return batches.flat_map(split).prefetch(tf.data.AUTOTUNE)

    return strategy.distribute_datasets_from_function(dataset_fn)


class DistributedTrainer:
    """The VAE, its optimizer and the compiled per-step functions, all under one strategy."""

    def __init__(self, params: Params, strategy: tf.distribute.Strategy, batches_per_epoch: int):
        self.params = params
        self.strategy = strategy
        self.replicas = strategy.num_replicas_in_sync
        with strategy.scope():
            # The same initial weights as single_process.compile_for_training (global seed, then build).
            keras.utils.set_random_seed(params.train.seed)
            self.vae: VAE = build_vae(params.model, params.train, binarize=params.data.binarize)
            self.optimizer = make_optimizer(params.train, batches_per_epoch)
            # compile only attaches the optimizer: checkpoints then hold its state (fit is never called).
            self.vae.compile(optimizer=self.optimizer)
            self.optimizer.build(self.vae.trainable_variables)
            # Per-replica sums of each reported value (loss, terms), then the count; reading one sums over replicas.
            self.names = objectives.reported(self.vae.objective)
            self.sums = tf.Variable(tf.zeros([len(self.names) + 1], tf.float64), trainable=False,
                                    synchronization=tf.VariableSynchronization.ON_READ,
                                    aggregation=tf.VariableAggregation.SUM)
        self.seed_states = [generator.state for generator in seed_generators(self.vae)]
        self._train_steps = tf.function(self._run_steps(self._train_replica))
        self._eval_steps = tf.function(self._run_steps(self._eval_replica))

    # ------------------------------------------------------------ per-replica work

    def _accumulate(self, terms: dict) -> None:
        count = tf.cast(tf.shape(terms[objectives.LOSS])[0], tf.float64)
        self.sums.assign_add(tf.stack([tf.reduce_sum(tf.cast(terms[name], tf.float64)) for name in self.names]
                                      + [count]))

    def _train_replica(self, x, global_size) -> None:
        """VAE.train_step's step on this replica's share of a global batch: its loss sum over the global batch
        size, so the gradients the optimizer sums over replicas are those of the global batch mean."""
        vae = self.vae
        if vae.binarize == "dynamic":
            x = vae.redraw_binary(x)
        with tf.GradientTape() as tape:
            terms = vae.compute_terms(x, training=True)
            loss = tf.reduce_sum(terms[objectives.LOSS]) / tf.cast(global_size, terms[objectives.LOSS].dtype)
        vae.optimizer.apply(tape.gradient(loss, vae.trainable_weights), vae.trainable_weights)
        self._accumulate(terms)

    def _eval_replica(self, x, _global_size) -> None:
        self._accumulate(self.vae.compute_terms(x, training=False))

    def _run_steps(self, replica_fn):
        strategy = self.strategy

        def steps(iterator, count):
            # Several steps per call (train.steps_per_execution): one Python dispatch for many batches.
            for _ in tf.range(count):
                x, size = next(iterator)
                strategy.run(replica_fn, args=(x, size))

        return steps

    # ------------------------------------------------------------ per-epoch driving

    def seed_epoch(self, epoch: int) -> None:
        """Set every SeedGenerator on every replica from (seed, epoch, replica) before the epoch."""
        table = np.array([[[epoch_seed(self.params.train.seed, epoch, index, replica), 0]
                           for index in range(len(self.seed_states))] for replica in range(self.replicas)],
                         dtype=np.int64)

        @tf.function
        def assign():
            def fn():
                replica = tf.distribute.get_replica_context().replica_id_in_sync_group
                for index, state in enumerate(self.seed_states):
                    state.assign(tf.cast(tf.constant(table)[replica, index], state.dtype))

            self.strategy.run(fn)

        assign()

    def _pass(self, steps, data: tf.distribute.DistributedDataset, n_batches: int,
              progress: EpochProgress | None = None) -> dict[str, float]:
        self.sums.assign(tf.zeros([len(self.names) + 1], tf.float64))
        iterator = iter(data)
        chunk = max(1, self.params.train.steps_per_execution)
        done = 0
        while done < n_batches:
            stop_if_signalled()  # a signal whose exception library code swallowed
            count = min(chunk, n_batches - done)
            steps(iterator, tf.constant(count))
            done += count
            if progress is not None:
                progress.update(done)
        totals = self.sums.read_value().numpy()  # a collective in multi_worker: every worker reads
        return {name: float(total / totals[-1]) for name, total in zip(self.names, totals, strict=False)}

    def run_epoch(self, epoch: int, x_train: np.ndarray, val_data: tf.distribute.DistributedDataset | None,
                  n_val_batches: int, progress: EpochProgress | None = None) -> dict[str, float]:
        """Train one epoch and validate (if there is a validation split); return the logs fit gives.
        `progress` is told the training batches done after each call."""
        batch = self.params.train.batch_size
        start = time.perf_counter()
        self.seed_epoch(epoch)
        order = epoch_permutation(len(x_train), self.params.train.seed, epoch).numpy()
        train_data = replica_batches(self.strategy, x_train, order, batch)
        logs = self._pass(self._train_steps, train_data, batches_per_epoch(len(x_train), self.params), progress)
        if val_data is not None:
            val = self._pass(self._eval_steps, val_data, n_val_batches)
            logs.update({f"val_{name}": value for name, value in val.items()})
        logs["epoch_time"] = time.perf_counter() - start
        return logs

    # ------------------------------------------------------------ resume

    def broadcast_from_chief(self, start_epoch: int) -> int:
        """Give every worker the chief's weights, optimizer state and epoch count (after a restore).

        A sum over replicas where only replica 0 contributes is a broadcast; values go through float64,
        which holds float32 weights and int64 counters below 2**53 exactly.
        """
        variables = list(self.vae.variables) + list(self.optimizer.variables)

        @tf.function
        def gather():
            def fn():
                context = tf.distribute.get_replica_context()
                first = tf.equal(context.replica_id_in_sync_group, 0)
                values = [tf.cast(v.value, tf.float64) for v in variables] + [tf.constant(float(start_epoch), tf.float64)]
                values = [tf.where(first, value, tf.zeros_like(value)) for value in values]
                return context.all_reduce(tf.distribute.ReduceOp.SUM, values)

            return self.strategy.run(fn)

        values = [self.strategy.experimental_local_results(value)[0] for value in gather()]
        for variable, value in zip(variables, values[:-1], strict=True):
            variable.assign(tf.cast(value, variable.dtype))
        return int(values[-1].numpy())


def validation_batches(strategy: tf.distribute.Strategy, x_val: np.ndarray | None):
    """Fixed validation batches (of VAL_BATCH_SIZE, as the single-process path), split across replicas."""
    if x_val is None:
        return None, 0
    order = np.arange(len(x_val))
    return replica_batches(strategy, x_val, order, VAL_BATCH_SIZE), -(-len(x_val) // VAL_BATCH_SIZE)


def train(params: Params, inputs: prepared.TrainingInputs, *, extra_callbacks: Sequence[keras.callbacks.Callback] = (),
          on_outputs: Sequence[OutputsHook] = ()) -> None:
    """single_process.train for `train.distribute != none`: the same outputs, checkpoints, MLflow run and
    parameters. The chief runs `extra_callbacks`' on_epoch_end after the end-of-epoch path (the other
    workers ignore them); a stop they request (`model.stop_training`) stops every worker after that epoch."""
    strategy = make_strategy(params.train.distribute)  # first: it must precede any TensorFlow work
    chief = is_chief(strategy)
    workers = num_workers(strategy)
    print(f"train: {params.train.distribute} over {strategy.num_replicas_in_sync} replicas "
          f"({workers} worker{'s' if workers > 1 else ''}); this process is "
          f"{'the chief' if chief else 'a worker (writes nothing)'}", flush=True)
    x_train = inputs.x_train
    trainer = DistributedTrainer(params, strategy, batches_per_epoch=batches_per_epoch(len(x_train), params))
    val_data, n_val_batches = validation_batches(strategy, inputs.x_val)

    # Only the chief has a session (the key, its checkpoint, retention, log, MLflow run); the others get
    # its restored state.
    session = open_session(params, inputs, on_outputs) if chief else None
    start_epoch = session.restore(trainer.vae) if session else 0
    if workers > 1:
        start_epoch = trainer.broadcast_from_chief(start_epoch)
    if session is None:
        _train_epochs(trainer, params, start_epoch, x_train, val_data, n_val_batches, epoch_end=None)
        return
    with session.run(trainer.vae, start_epoch) as epoch_end:
        tracking.log_metrics({"replicas": strategy.num_replicas_in_sync, "workers": workers})
        _train_epochs(trainer, params, start_epoch, x_train, val_data, n_val_batches, epoch_end,
                      keras.callbacks.CallbackList(list(extra_callbacks), model=trainer.vae))


def _train_epochs(trainer: DistributedTrainer, params: Params, start_epoch: int, x_train: np.ndarray,
                  val_data, n_val_batches: int, epoch_end: EpochEnd | None,
                  extra: keras.callbacks.CallbackList | None = None) -> None:
    """The epochs, each ended by the session's end-of-epoch path and then the `extra` callbacks (the chief)
    or by the NaN check alone (the other workers: the loss is all-reduced, hence identical, so all stop
    together on a NaN). A stop the chief's callbacks request is all-reduced too, so all stop together."""
    progress = EpochProgress(params.train.epochs, -(-len(x_train) // params.train.batch_size))
    agree = chief_decides(trainer.strategy) if num_workers(trainer.strategy) > 1 else None
    trainer.vae.stop_training = False
    for epoch in range(start_epoch, params.train.epochs):
        progress.begin(epoch)
        logs = trainer.run_epoch(epoch, x_train, val_data, n_val_batches, progress)
        if epoch_end is None:
            check_finite(epoch, logs)
        else:
            epoch_end.on_epoch_end(epoch, logs)
        progress.end(epoch, logs)
        if extra is not None:
            extra.on_epoch_end(epoch, logs)
        if epoch + 1 == params.train.epochs:
            # No collective after the last epoch: a worker that finished its side of one exits at once,
            # and the chief, still pulling that worker's buffer, failed with "Socket closed".
            break
        stop = bool(trainer.vae.stop_training)
        if agree is not None:  # every worker takes part, whatever its own callbacks
            stop = agree(stop)
        if stop:
            break


def chief_decides(strategy: tf.distribute.Strategy) -> Callable[[bool], bool]:
    """A function that gives every worker the chief's flag (each worker calls it with its own): a sum over
    replicas where only replica 0 (the chief's first) contributes, as broadcast_from_chief does. Traced once."""

    @tf.function
    def gather(value):
        def fn(value):
            context = tf.distribute.get_replica_context()
            first = tf.equal(context.replica_id_in_sync_group, 0)
            return context.all_reduce(tf.distribute.ReduceOp.SUM, tf.where(first, value, tf.zeros_like(value)))

        return strategy.run(fn, args=(value,))

    def decide(flag: bool) -> bool:
        total = strategy.experimental_local_results(gather(tf.constant(1.0 if flag else 0.0)))[0]
        return bool(total.numpy() > 0)

    return decide
