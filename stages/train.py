"""Stage train: fit the VAE on data/prepared, write models/vae.keras, train_log.csv and the MLflow run id.

In order: the tracking check (before TensorFlow loads); for multi_worker without TF_CONFIG, the local
launcher instead; else the prepared arrays, read and checked (a damaged file fails before TensorFlow
loads too), and the loop, given what this stage adds from outside training's code: a search trial's
pruning callbacks and, once the outputs are written, the model logged to MLflow (serving.py's pyfunc) and
a trial's train_only marker. The loop itself computes the checkpoint key, locks its checkpoint, applies
retention, trains and writes the outputs (vaepipe.train.session.open_session).
"""

import os

from vaepipe import paths, prepared
from vaepipe.config import load_params
from vaepipe.process import run_stage


def main() -> None:
    params = load_params()  # validated before TensorFlow is even imported
    from vaepipe.tracking import check_can_log, model_logging

    # Fail in seconds, not after loading TensorFlow: a server that is down, a wrong login, a READ user.
    check_can_log(registered_model=model_logging.REGISTERED_MODEL)
    if params.train.distribute == "multi_worker" and "TF_CONFIG" not in os.environ:
        # One machine (e.g. under `dvc repro`): become the launcher of $VAEPIPE_WORKERS local workers
        # (default 2), each running this script with its own TF_CONFIG; task 0 writes the outputs.
        from vaepipe.train.launcher import require_listen_anywhere, run_local_workers
        from vaepipe.train.provenance import checkpoint_key

        require_listen_anywhere()  # first: a refusal needs no prepared data (the key below hashes it)
        run_local_workers(run_id_file=paths.checkpoint_run_id_file(checkpoint_key(params)))
        return
    inputs = prepared.training_inputs(params.data.binarize)  # a missing or damaged split: here, before TensorFlow
    if params.train.distribute == "none":
        from vaepipe.train.single_process import train
    else:  # tf.distribute needs its own loop (Keras 3's fit fails under MultiWorkerMirroredStrategy)
        from vaepipe.train.distributed import train
    from vaepipe.tune.pruning import trial_callbacks, trial_outputs  # Optuna only for a search's trial

    train(params, inputs, extra_callbacks=trial_callbacks(params), on_outputs=[model_logging.log_model, *trial_outputs(params)])


if __name__ == "__main__":
    run_stage(main, on_rerun="train resumes from its last completed epoch on the next `dvc repro`")
