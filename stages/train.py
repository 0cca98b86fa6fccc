"""Stage train: fit the VAE on data/prepared, write models/vae.keras, train_log.csv and the MLflow run id."""

import os

from vaepipe.config import load_params
from vaepipe.process import run_stage


def main() -> None:
    params = load_params()  # validated before TensorFlow is even imported
    from vaepipe import tracking
    from vaepipe.tracking.model_logging import REGISTERED_MODEL

    # Fail in seconds, not after loading TensorFlow: a server that is down, a wrong login, a READ user.
    tracking.check_can_log(registered_model=REGISTERED_MODEL)
    if params.train.distribute == "multi_worker" and "TF_CONFIG" not in os.environ:
        # One machine (e.g. under `dvc repro`): become the launcher of $VAEPIPE_WORKERS local workers
        # (default 2), each running this script with its own TF_CONFIG; task 0 writes the outputs.
        from vaepipe import paths
        from vaepipe.train.launcher import run_local_workers
        from vaepipe.train.provenance import checkpoint_key

        run_local_workers(run_id_file=paths.checkpoint_run_id_file(checkpoint_key(params)))
        return
    if params.train.distribute == "none":
        from vaepipe.train.single_process import train
    else:  # tf.distribute needs its own loop (Keras 3's fit fails under MultiWorkerMirroredStrategy)
        from vaepipe.train.distributed import train
    train(params)


if __name__ == "__main__":
    run_stage(main, on_rerun="train resumes from its last completed epoch on the next `dvc repro`")
