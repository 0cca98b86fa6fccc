"""The train stage's work: data pipeline, model, resumable `fit`, atomic outputs, MLflow run.

Resuming is exact: every epoch's randomness (the shuffle order, the sampler's and the dynamic
binarization's draws) is a function of (train.seed, epoch) alone, and the checkpoint written at the
end of each epoch holds the weights and the optimizer state. A run interrupted after epoch k and
resumed computes bit for bit what the uninterrupted run computes.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from vaepipe import data, paths, tracking
from vaepipe.config import Params, TrainParams, flat_params, training_key
from vaepipe.errors import DataError, VaepipeError, deferred_signals
from vaepipe.model import VAE, build_vae, has_convolutions


class NonFiniteLossError(VaepipeError):
    exit_code = 5


def load_inputs(binarize: str) -> tuple[np.ndarray, np.ndarray, str]:
    """Training and test arrays as the model sees them, checked against prepare's checksums."""
    train = data.load_split(paths.TRAIN_NPZ)
    test = data.load_split(paths.TEST_NPZ)
    data.verify_prepared(train, paths.TRAIN_NPZ, paths.PREPARED_META)
    data.verify_prepared(test, paths.TEST_NPZ, paths.PREPARED_META)
    dataset_sha = json.loads(paths.PREPARED_META.read_text())["sha256"]["train"]
    return (data.model_inputs(train, binarize, training=True),
            data.model_inputs(test, binarize, training=False), dataset_sha)


def make_datasets(x_train: np.ndarray, x_test: np.ndarray, batch_size: int, seed: int,
                  eval_batch_size: int, epoch: tf.Variable,
                  steps_per_execution: int = 1) -> tuple[tf.data.Dataset, tf.data.Dataset]:
    """Shuffled training batches (a new order each epoch) and fixed test batches.

    `epoch` is a tf.Variable that EpochRandomState sets before each epoch: the order is a pure
    function of (seed, epoch), so a resumed run sees the same batches as an uninterrupted one.
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
        test_images = tf.constant(x_test)
        test = (tf.data.Dataset.from_tensors(tf.range(len(x_test)))
                .flat_map(lambda order: _stacks(order, len(x_test), eval_batch_size, steps_per_execution))
                .map(lambda index: tf.gather(test_images, index)))
        return train.prefetch(tf.data.AUTOTUNE), test.cache().prefetch(tf.data.AUTOTUNE)
    images = tf.constant(x_train)
    train = (_epoch_orders(n, seed, epoch).unbatch()
             .batch(batch_size)
             .map(lambda index: tf.gather(images, index))
             .prefetch(tf.data.AUTOTUNE))
    # The test set is only read: a larger batch gives the same mean and fewer steps.
    test = tf.data.Dataset.from_tensor_slices(x_test).batch(eval_batch_size).cache().prefetch(tf.data.AUTOTUNE)
    return train, test


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


def epoch_permutation(n: int, seed: int, epoch) -> tf.Tensor:
    """Epoch `epoch`'s order of range(n): a pure function of (seed, epoch), shared by every training path."""
    keys = tf.random.stateless_uniform([n], seed=tf.stack([tf.constant(seed, tf.int64), tf.cast(epoch, tf.int64)]))
    return tf.argsort(keys)


def _epoch_orders(n: int, seed: int, epoch: tf.Variable) -> tf.data.Dataset:
    """One element per epoch: that epoch's permutation of range(n)."""
    # The variable is read when the epoch's iterator starts, i.e. after on_epoch_begin set it.
    return tf.data.Dataset.from_tensors(0).map(lambda _: epoch_permutation(n, seed, epoch.read_value()))


def learning_rate(train: TrainParams, steps_per_epoch: int) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """train.learning_rate, or a schedule of it over the whole run, keyed on the optimizer's step count.

    The step count is optimizer state and is checkpointed, so a resumed run continues the schedule
    exactly. `iwae` is Burda et al.'s: stage i (0..7) runs at learning_rate * 10^(-i/7) for 3^i of
    3280 epochs; here the stages keep those proportions of `train.epochs`.
    """
    total_steps = train.epochs * steps_per_epoch
    if train.lr_schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(train.learning_rate, decay_steps=total_steps)
    if train.lr_schedule == "iwae":
        stage_ends = np.cumsum([3**i for i in range(8)]) / 3280
        # PiecewiseConstantDecay gives values[i] while step <= boundaries[i]; the optimizer's step
        # count before update n is n - 1, so a stage ending after update n has boundary n - 1.
        boundaries = [int(round(fraction * total_steps)) - 1 for fraction in stage_ends[:-1]]
        values = [train.learning_rate * 10 ** (-i / 7) for i in range(8)]
        return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)
    return train.learning_rate


def make_optimizer(train: TrainParams, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """Adam with default settings apart from the learning rate (the tutorial's optimizer)."""
    return keras.optimizers.Adam(learning_rate=learning_rate(train, steps_per_epoch))


def compile_vae(params: Params, steps_per_execution: int, steps_per_epoch: int) -> VAE:
    """The VAE, compiled to run `steps_per_execution` batches per compiled call.

    Where the model allows it, those batches come stacked from
    `make_datasets(..., steps_per_execution=vae.stack_steps)` and VAE.train_step loops over them
    inside one XLA program (Keras runs one stack per call): about 2x faster per step than Keras's
    own multi-step loop for small models. Convolutions inside that loop run very slowly under XLA
    on CPU (75x in bench/NOTES.md), so the conv model keeps Keras's loop (`vae.stack_steps` = 1),
    and by default (`jit_compile: auto`) runs without XLA at all: TensorFlow's oneDNN convolutions
    are about 1.6x faster here (NOTES.md run 20).
    """
    keras.utils.set_random_seed(params.train.seed)
    vae = build_vae(params.model, beta=params.train.beta, binarize=params.data.binarize, seed=params.train.seed)
    conv = has_convolutions(vae)
    stack_steps = 1 if conv else steps_per_execution
    if stack_steps > 1:
        keras_steps = 1  # one stack per call
    else:  # Keras's own loop counts whole calls: a divisor of the epoch keeps its progress bar at N/N
        keras_steps = max(d for d in range(1, steps_per_execution + 1) if steps_per_epoch % d == 0)
    vae.compile(
        optimizer=make_optimizer(params.train, steps_per_epoch),
        steps_per_execution=keras_steps,
        jit_compile=not conv if params.train.jit_compile == "auto" else params.train.jit_compile,
    )
    vae.stack_steps = stack_steps
    return vae


class EpochRandomState(keras.callbacks.Callback):
    """Before each epoch, set the data order and every SeedGenerator in the model from (seed, epoch).

    Keras does not save SeedGenerator states with the weights; deriving them per epoch instead makes
    the randomness of epoch k the same whether or not the process was restarted before it.
    """

    def __init__(self, seed: int, epoch: tf.Variable):
        super().__init__()
        self.seed = seed
        self.epoch = epoch

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch.assign(epoch)
        states = [v for v in self.model.variables if v.name == "seed_generator_state"]
        for index, state in enumerate(states):
            derived = int(np.random.SeedSequence([self.seed, epoch, index]).generate_state(1)[0]) >> 1
            state.assign(np.array([derived, 0], dtype=state.dtype))


class EpochMetricsLogger(keras.callbacks.Callback):
    """Log each epoch's losses (and epoch_time) to the active run with step = epoch number (1-based).

    mlflow.keras's MlflowCallback would also log stepless `validation_*` copies of every epoch's
    validation metrics; this logs each value once, synchronously, so a kill loses nothing logged.
    """

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs:
            tracking.log_metrics(logs, step=epoch + 1)


class EpochTimer(keras.callbacks.Callback):
    """Add `epoch_time` (seconds, wall clock) to each epoch's logs, for CSV and MLflow alike."""

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is not None:
            logs["epoch_time"] = time.perf_counter() - self._start


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stop with a clear error when the epoch's loss is NaN or infinite (the checkpoint is kept).

    Runs before the epoch is logged or checkpointed, so the last checkpoint is the last good epoch.
    """

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(loss):
            raise NonFiniteLossError(
                f"training loss became {loss} in epoch {epoch + 1}; lower train.learning_rate "
                "(the last good checkpoint is kept)"
            )


class EpochLog(keras.callbacks.Callback):
    """Append one CSV row per finished epoch (the columns of keras.callbacks.CSVLogger), flushed."""

    def __init__(self, path: Path):
        super().__init__()
        self.path = path

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        keys = sorted(logs)
        new = not self.path.exists() or self.path.stat().st_size == 0
        with self.path.open("a", newline="") as handle:
            writer = csv.writer(handle)
            if new:
                writer.writerow(["epoch", *keys])
            writer.writerow([epoch, *(float(logs[key]) for key in keys)])
            handle.flush()
            os.fsync(handle.fileno())


def keep_epochs_before(log: Path, start_epoch: int) -> None:
    """Drop rows of epochs >= start_epoch (logged after the last checkpoint, about to be redone)."""
    if start_epoch == 0 or not log.exists():
        log.unlink(missing_ok=True)
        return
    rows = list(csv.reader(io.StringIO(log.read_text())))
    kept = rows[:1] + [row for row in rows[1:] if row and int(row[0]) < start_epoch]
    with paths.atomic_path(log) as tmp:
        with tmp.open("w", newline="") as handle:
            csv.writer(handle).writerows(kept)


class Checkpoint(keras.callbacks.Callback):
    """Weights + optimizer state at the end of every epoch, in `directory`, replaced atomically.

    `state.json` names the epoch count and the weights file; it is renamed into place after the
    weights file is complete, so whenever the process dies the pair it names is consistent.
    SIGINT/SIGTERM wait until the checkpoint is written (the epoch ends cleanly).
    """

    STATE = "state.json"

    def __init__(self, directory: Path, key: str):
        super().__init__()
        self.directory = directory
        self.key = key

    def completed_epochs(self) -> int:
        state = self._state()
        return state["epoch"] if state else 0

    def _state(self) -> dict | None:
        try:
            state = json.loads((self.directory / self.STATE).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            raise DataError(f"{self.directory / self.STATE}: unreadable checkpoint ({error}); "
                            f"delete {self.directory} to train from scratch") from None
        if state.get("key") != self.key:  # never resume a checkpoint of other params
            return None
        return state

    def restore(self, model: keras.Model) -> int:
        """Load the last checkpoint into a compiled model; return the number of epochs it holds."""
        state = self._state()
        if not state:
            return 0
        weights = self.directory / state["weights"]
        try:
            model.optimizer.build(model.trainable_variables)
            model.load_weights(weights)
        except (OSError, ValueError) as error:
            raise DataError(f"{weights}: cannot load checkpoint ({error}); "
                            f"delete {self.directory} to train from scratch") from None
        return state["epoch"]

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        with deferred_signals():
            name = f"epoch-{epoch + 1:05d}.weights.h5"
            tmp = self.directory / f".{os.getpid()}-{name}"  # save_weights wants a .weights.h5 name
            try:
                self.model.save_weights(tmp)
                tmp.replace(self.directory / name)
            finally:
                tmp.unlink(missing_ok=True)
            with paths.atomic_path(self.directory / self.STATE) as tmp:
                tmp.write_text(json.dumps({"epoch": epoch + 1, "weights": name, "key": self.key}) + "\n")
            for old in self.directory.glob("epoch-*.weights.h5"):
                if old.name != name:
                    old.unlink(missing_ok=True)


def train(params: Params) -> None:
    """Train (resuming an interrupted run with the same params), then write the model, log and run id."""
    if params.train.distribute != "none":
        # tf.distribute needs its own loop (Keras 3's fit fails under MultiWorkerMirroredStrategy).
        from vaepipe import distributed

        return distributed.train(params)
    x_train, x_test, dataset_sha = load_inputs(params.data.binarize)
    key = training_key(params)
    checkpoint_dir = paths.checkpoint_dir(key)
    _drop_other_checkpoints(keep=checkpoint_dir)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    epoch_log = checkpoint_dir / "train_log.csv"
    run_id_file = paths.checkpoint_run_id_file(key)
    checkpoint = Checkpoint(checkpoint_dir, key)

    steps_per_epoch = -(-len(x_train) // params.train.batch_size)
    vae = compile_vae(params, steps_per_execution=min(params.train.steps_per_execution, steps_per_epoch),
                      steps_per_epoch=steps_per_epoch)
    start_epoch = checkpoint.restore(vae)
    keep_epochs_before(epoch_log, start_epoch)
    # The run of an interrupted attempt with these params (even one killed before its first
    # checkpoint) is continued, so the store never holds an abandoned run for these params.
    previous_run = run_id_file.read_text().strip() if run_id_file.exists() else None
    epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
    train_ds, test_ds = make_datasets(x_train, x_test, params.train.batch_size, params.train.seed,
                                      params.evaluate.batch_size, epoch=epoch,
                                      steps_per_execution=vae.stack_steps)  # stacked batches: see compile_vae
    with tracking.active_run(previous_run, start=run_start(params, dataset_sha)) as run_id:
        announce_run(params, run_id, run_id_file, start_epoch, checkpoint_dir)
        log_model_summary(vae)
        # Order matters at the end of an epoch: check the loss, log it, then checkpoint, so a
        # checkpoint always follows its logs and a NaN epoch is never checkpointed.
        callbacks = [
            EpochRandomState(params.train.seed, epoch),
            EpochTimer(),
            StopOnNonFiniteLoss(),
            EpochLog(epoch_log),
            EpochMetricsLogger(),
            checkpoint,
        ]
        if start_epoch < params.train.epochs:
            vae.fit(train_ds, validation_data=test_ds, epochs=params.train.epochs, initial_epoch=start_epoch,
                    callbacks=callbacks, shuffle=False, verbose=2 if _quiet() else 1)

        write_outputs(vae, epoch_log, run_id)
    # Finished: no checkpoint is left that a later run could mistake for an interrupted one.
    shutil.rmtree(checkpoint_dir, ignore_errors=True)


# The pieces of `train` that the distributed loop (vaepipe.distributed) shares.


def run_start(params: Params, dataset_sha: str) -> dict:
    """The `start` kwargs of tracking.active_run for a training run."""
    return {"run_name": tracking.run_name(params), "params": flat_params(params),
            "tags": tracking.run_tags(dataset_sha)}


def announce_run(params: Params, run_id: str, run_id_file: Path, start_epoch: int, checkpoint_dir: Path) -> None:
    """Remember the run id beside the checkpoint (so a restart continues this run) and say what runs."""
    with paths.atomic_path(run_id_file) as tmp_id:
        tmp_id.write_text(run_id)
    tracking.print_run_link(run_id)
    if start_epoch:
        print(f"train: resuming after epoch {start_epoch} of {params.train.epochs} "
              f"from {checkpoint_dir.relative_to(paths.ROOT)}", flush=True)


def log_model_summary(vae: VAE) -> None:
    tracking.log_metrics({"parameter_count": vae.count_params()})
    summary: list[str] = []
    vae.encoder.summary(print_fn=summary.append)
    vae.decoder.summary(print_fn=summary.append)
    tracking.log_text("\n".join(summary), "model_summary.txt")


def write_outputs(vae: VAE, epoch_log: Path, run_id: str) -> None:
    """The stage's outputs, each renamed into place only when complete, and the model in MLflow."""
    with paths.atomic_path(paths.MODEL_FILE) as tmp_model:
        vae.save(tmp_model)
    with paths.atomic_path(paths.TRAIN_LOG) as tmp_log:
        shutil.copyfile(epoch_log, tmp_log)
    tracking.log_model(paths.MODEL_FILE)
    with paths.atomic_path(paths.RUN_ID_FILE) as tmp_id:
        tmp_id.write_text(run_id + "\n")


def _drop_other_checkpoints(keep: Path) -> None:
    """Checkpoints of other param sets can never be resumed by these params: remove them."""
    if paths.CHECKPOINTS_DIR.exists():
        for other in paths.CHECKPOINTS_DIR.iterdir():
            if other != keep:
                shutil.rmtree(other, ignore_errors=True)


def _quiet() -> bool:
    return os.environ.get("VAEPIPE_QUIET") == "1"
