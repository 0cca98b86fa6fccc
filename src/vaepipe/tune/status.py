"""`python -m vaepipe.tune status [--study NAME] [--json]`: the study's trials (number, state, values, params,
DVC experiment, MLflow run id) and the storage they were read from."""

from __future__ import annotations

import json
from typing import Any

import optuna

from vaepipe.tune.storage import load_study, objective_names, resolve_storage, storage_label, study_names


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    rows = []
    for trial in study.get_trials(deepcopy=False):
        attrs = trial.user_attrs
        rows.append({
            "number": trial.number, "state": trial.state.name,
            "values": list(trial.values) if trial.values is not None else None,
            "params": dict(trial.params),
            "dvc_experiment": attrs.get("dvc_experiment"), "mlflow_run_id": attrs.get("mlflow_run_id"),
            "note": next((key for key in ("interrupted", "surplus", "abandoned") if attrs.get(key)), None)
                    or attrs.get("error"),
        })
    return rows


def status(study_name: str | None, storage: str | None = None, as_json: bool = False) -> str:
    """The report as text (or JSON): which storage, which study, each trial."""
    storage = resolve_storage(storage)
    if study_name is None:
        names = study_names(storage)
        if len(names) != 1:
            from vaepipe.errors import ConfigError

            raise ConfigError(f"--study NAME is needed: {storage_label(storage)} holds "
                              f"{len(names)} studies ({', '.join(names) or 'none'})")
        study_name = names[0]
    study = load_study(study_name, storage)
    rows = trial_rows(study)
    metrics = objective_names(study) or [f"value{i}" for i in range(len(study.directions))]
    if as_json:
        return json.dumps({"storage": storage_label(storage), "study": study_name, "objective": metrics,
                           "directions": [d.name.lower() for d in study.directions], "trials": rows,
                           "finals": study.user_attrs.get("vaepipe.final") or {}}, indent=2)
    lines = [f"storage {storage_label(storage)}", f"study {study_name}: {len(rows)} trials, objective "
             + ", ".join(f"{m} ({d.name.lower()})" for m, d in zip(metrics, study.directions, strict=False))]
    header = ["trial", "state", *metrics, "params", "dvc experiment", "mlflow run", "note"]
    table = [header]
    for row in rows:
        values = [f"{v:.4f}" for v in row["values"]] if row["values"] else ["-"] * len(metrics)
        table.append([str(row["number"]), row["state"], *values,
                      " ".join(f"{k}={_short(v)}" for k, v in row["params"].items()),
                      row["dvc_experiment"] or "-", row["mlflow_run_id"] or "-", (row["note"] or "")[:60]])
    widths = [max(len(cells[i]) for cells in table) for i in range(len(header))]
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip()
              for cells in table]
    for number, final in (study.user_attrs.get("vaepipe.final") or {}).items():
        lines.append(f"final run of trial {number}: {final.get('dvc_experiment')} (MLflow run "
                     f"{final.get('mlflow_run_id')}): " + ", ".join(f"{k} {_short(v)}" for k, v in final.get("test", {}).items()))
    return "\n".join(lines)


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
