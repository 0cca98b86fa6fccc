"""Stage evaluate: score models/vae.keras on the test set, write metrics.json, log it to the MLflow run."""

import json

from vaepipe.config import load_params
from vaepipe.process import run_stage


def main() -> None:
    params = load_params()
    from vaepipe import paths, tracking

    run_id = tracking.read_run_id(paths.RUN_ID_FILE)
    tracking.check_can_log()  # a wrong login or a READ-only user stops here, before TensorFlow loads
    from vaepipe import prepared

    data = prepared.evaluation_data(params.data.binarize)  # a missing or damaged split: here, before TensorFlow
    from vaepipe import evaluation

    inputs = evaluation.load_inputs(data)  # a bad model stops here, before the run is touched
    # The run logged into: the train run, or in a store without it (another clone) a run linked to it.
    with tracking.active_run(run_id):
        metrics = evaluation.score(inputs, params)  # metrics only: the run is models/mlflow_run_id
        with paths.atomic_path(paths.METRICS_FILE) as tmp:
            tmp.write_text(json.dumps(metrics, indent=2) + "\n")
        tracking.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        tracking.log_artifact(paths.METRICS_FILE)
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    run_stage(main)
