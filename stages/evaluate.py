"""Stage evaluate: score models/vae.keras on the test set, write metrics.json, log it to the MLflow run."""

import json

from vaepipe.config import load_params
from vaepipe.errors import run_stage


def main() -> None:
    params = load_params()
    from vaepipe import paths, tracking
    from vaepipe.evaluation import score

    run_id = tracking.read_run_id(paths.RUN_ID_FILE)
    with tracking.active_run(run_id):
        metrics = score(params)
        metrics["mlflow_run_id"] = run_id
        with paths.atomic_path(paths.METRICS_FILE) as tmp:
            tmp.write_text(json.dumps(metrics, indent=2) + "\n")
        tracking.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        tracking.log_artifact(paths.METRICS_FILE)
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    run_stage(main)
