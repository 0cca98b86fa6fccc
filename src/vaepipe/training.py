"""The train stage's work: data pipeline, model, resumable `fit`, atomic outputs, MLflow run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from vaepipe import data, paths, tracking
from vaepipe.config import Params, flat_params, training_key
from vaepipe.errors import VaepipeError
from vaepipe.model import VAE, build_vae


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
                  eval_batch_size: int) -> tuple[tf.data.Dataset, tf.data.Dataset]:
    """Shuffled training batches (a new order each epoch, from the seed) and fixed test batches."""
    train = (tf.data.Dataset.from_tensor_slices(x_train)
             .shuffle(len(x_train), seed=seed, reshuffle_each_iteration=True)
             .batch(batch_size)
             .prefetch(tf.data.AUTOTUNE))
    # The test set is only read: a larger batch gives the same mean and fewer steps.
    test = tf.data.Dataset.from_tensor_slices(x_test).batch(eval_batch_size).cache().prefetch(tf.data.AUTOTUNE)
    return train, test


def compile_vae(params: Params, steps_per_execution: int) -> VAE:
    keras.utils.set_random_seed(params.train.seed)
    vae = build_vae(params.model, beta=params.train.beta, binarize=params.data.binarize, seed=params.train.seed)
    vae.compile(
        optimizer=keras.optimizers.Adam(learning_rate=params.train.learning_rate),
        steps_per_execution=steps_per_execution,
        jit_compile=params.train.jit_compile,
    )
    return vae


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stop with a clear error when the epoch's loss is NaN or infinite (the checkpoint is kept)."""

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(loss):
            raise NonFiniteLossError(
                f"training loss became {loss} in epoch {epoch + 1}; lower train.learning_rate "
                "(the last good checkpoint is kept)"
            )


def train(params: Params) -> None:
    """Train (resuming an interrupted run with the same params), then write the model, log and run id."""
    x_train, x_test, dataset_sha = load_inputs(params.data.binarize)
    checkpoint_dir = paths.CHECKPOINTS_DIR / training_key(params)
    keras_backup = checkpoint_dir / "backup"  # BackupAndRestore's own folder (it deletes it when done)
    resuming = (keras_backup / "training_metadata.json").exists()
    _drop_other_checkpoints(keep=checkpoint_dir)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    epoch_log = checkpoint_dir / "train_log.csv"
    run_id_file = checkpoint_dir / "mlflow_run_id"
    if not resuming:
        epoch_log.unlink(missing_ok=True)
    previous_run = run_id_file.read_text().strip() if resuming and run_id_file.exists() else None

    steps_per_epoch = -(-len(x_train) // params.train.batch_size)
    vae = compile_vae(params, steps_per_execution=min(params.train.steps_per_execution, steps_per_epoch))
    train_ds, test_ds = make_datasets(x_train, x_test, params.train.batch_size, params.train.seed,
                                      params.evaluate.batch_size)
    start = {"run_name": tracking.run_name(params), "params": flat_params(params),
             "tags": tracking.run_tags(dataset_sha)}
    with tracking.active_run(previous_run, start=start) as run_id:
        run_id_file.write_text(run_id)
        tracking.print_run_link(run_id)
        tracking.log_metrics({"parameter_count": vae.count_params()})
        summary: list[str] = []
        vae.encoder.summary(print_fn=summary.append)
        vae.decoder.summary(print_fn=summary.append)
        tracking.log_text("\n".join(summary), "model_summary.txt")
        callbacks = [
            keras.callbacks.BackupAndRestore(str(keras_backup), double_checkpoint=True),
            tracking.EpochTimer(),
            StopOnNonFiniteLoss(),
            keras.callbacks.CSVLogger(str(epoch_log), append=True),
            tracking.EpochMetricsLogger(),
        ]
        vae.fit(train_ds, validation_data=test_ds, epochs=params.train.epochs, callbacks=callbacks,
                shuffle=False, verbose=2 if _quiet() else 1)  # train_ds is already shuffled per epoch

        with paths.atomic_path(paths.MODEL_FILE) as tmp_model:
            vae.save(tmp_model)
        with paths.atomic_path(paths.TRAIN_LOG) as tmp_log:
            shutil.copyfile(epoch_log, tmp_log)
        tracking.log_model(paths.MODEL_FILE)
        with paths.atomic_path(paths.RUN_ID_FILE) as tmp_id:
            tmp_id.write_text(run_id + "\n")
    # Finished: no checkpoint is left that a later run could mistake for an interrupted one.
    shutil.rmtree(checkpoint_dir, ignore_errors=True)


def _drop_other_checkpoints(keep: Path) -> None:
    """Checkpoints of other param sets can never be resumed by these params: remove them."""
    if paths.CHECKPOINTS_DIR.exists():
        for other in paths.CHECKPOINTS_DIR.iterdir():
            if other != keep:
                shutil.rmtree(other, ignore_errors=True)


def _quiet() -> bool:
    import os

    return os.environ.get("VAEPIPE_QUIET") == "1"
