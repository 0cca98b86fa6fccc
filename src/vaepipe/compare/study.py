"""`make compare STUDY=name`: a study's part of the page. The trials table (state, objective values,
params, each trial's MLflow run and DVC experiment) and its figures: the optimisation history, the
parameter importances and, for a multi-objective study, the Pareto front on the rate-distortion plane.

Optuna is reached only through vaepipe.tune (storage: the study; figures: Optuna's own plots).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vaepipe import metrics as registry
from vaepipe.compare.figures import png
from vaepipe.compare.html import run_link
from vaepipe.compare.rows import ARCH_PARAM, Row
from vaepipe.compare.table import number
from vaepipe.config import param_applies
from vaepipe.tune import figures as study_figures
from vaepipe.tune.storage import load_study

RATE, DISTORTION = registry.RATE_DISTORTION[registry.VALIDATION]  # the plane of compare.figures, on validation


@dataclass
class StudyPart:
    name: str
    summary: str
    header: list[str]
    cells: list[list[str]]
    links: list[dict[int, str]]  # per trial: column index -> URL (its MLflow run)
    figures: dict[str, bytes] = field(default_factory=dict)


def study_part(name: str, storage: str | None, rows: list[Row], ui_base: str) -> StudyPart:
    """The study's trials table and figures; `rows` are the selected runs (its trials' and final runs)."""
    study = load_study(name, storage)
    record = study_figures.study_record(study)
    by_run = {row.run.run_id: row for row in rows}
    trial_rows = {trial.number: by_run.get(str(trial.user_attrs.get("mlflow_run_id", ""))) for trial in record.trials}
    names = objective_names(record)
    header, cells, links = trials_table(record, names, trial_rows, rows, ui_base)
    figures = {}
    complete = [t for t in record.trials if t.state == "COMPLETE"]
    if complete:
        for objective, figure in study_figures.optimization_history(study, names).items():
            figures[f"study_history_{objective}.png"] = png(figure)
    try:
        importances = study_figures.param_importances(study, names)
    except (ValueError, RuntimeError) as error:  # an evaluator's refusal of this study: the page goes on
        print(f"compare: study {name}: no parameter importances ({(str(error).splitlines() or [''])[0]})")
        importances = None
    if importances is not None:
        figures["study_importances.png"] = png(importances)
    if len(record.directions) > 1 and complete:
        axis_names, points = pareto_plane(record, names, trial_rows)
        figures["study_pareto_front.png"] = png(study_figures.pareto_front(study, axis_names, points))
    states = {}
    for trial in record.trials:
        states[trial.state] = states.get(trial.state, 0) + 1
    summary = (f"study {name}: {len(record.trials)} trial(s) ("
               + ", ".join(f"{count} {state}" for state, count in sorted(states.items()))
               + "), " + ", ".join(f"{direction} {objective}" for direction, objective
                                   in zip(record.directions, names, strict=True)))
    return StudyPart(name, summary, header, cells, links, figures)


def objective_names(record: study_figures.StudyRecord) -> list[str]:
    """The objectives' names as the study records them (storage.objective_names), else "objective i":
    never guessed from the runs' metrics, which two metrics can share (val_loss and best_val_loss)."""
    if record.metric_names and len(record.metric_names) == len(record.directions):
        return list(record.metric_names)
    return [f"objective {index}" for index in range(len(record.directions))]


def pareto_plane(record: study_figures.StudyRecord, names: list[str],
                 trial_rows: dict[int, Row | None]) -> tuple[tuple[str, str], dict[int, tuple[float, float]] | None]:
    """Where the Pareto front is drawn: the rate-distortion plane (x = val_kl, y = val_recon) from the
    objectives when they are those two, else from the trials' runs' last epoch; the objectives' own
    plane when a trial lacks them."""
    complete = [t for t in record.trials if t.state == "COMPLETE"]
    axis_names = (f"rate: {RATE} (nats)", f"distortion: {DISTORTION} (nats)")
    if RATE in names and DISTORTION in names:
        rate, distortion = names.index(RATE), names.index(DISTORTION)
        return axis_names, {t.number: (t.values[rate], t.values[distortion]) for t in complete}
    runs = {t.number: trial_rows.get(t.number) for t in complete}
    if all(row and {RATE, DISTORTION} <= row.metrics.keys() for row in runs.values()):
        return axis_names, {n: (row.metrics[RATE], row.metrics[DISTORTION]) for n, row in runs.items()}
    return (names[0], names[1]), {t.number: (t.values[0], t.values[1]) for t in complete}


def trials_table(record: study_figures.StudyRecord, names: list[str], trial_rows: dict[int, Row | None],
                 rows: list[Row], ui_base: str) -> tuple[list[str], list[list[str]], list[dict[int, str]]]:
    """One line per trial: number, state, values, params (blank where the trial's arch does not read
    one), its run (linked) and DVC experiment, and the final run that replays it, if any."""
    params = sorted({param for trial in record.trials for param in trial.params})
    finals = {row.trial: row for row in rows if row.final}
    header = ["trial", "state", *names, *params, "run", "dvc_experiment", "final run"]
    run_column = header.index("run")
    cells, links = [], []
    for trial in sorted(record.trials, key=lambda t: t.number):
        row = trial_rows.get(trial.number)
        arch = trial.params.get(ARCH_PARAM, row.run.params.get(ARCH_PARAM) if row else None)
        values = [number(value) for value in trial.values] if trial.values else [""] * len(names)
        final = finals.get(str(trial.number))
        cells.append([str(trial.number), trial.state, *values,
                      *[_param(trial.params[p]) if p in trial.params and param_applies(p, str(arch) if arch else None)
                        else "" for p in params],
                      row.run.name if row else str(trial.user_attrs.get("mlflow_run_id", "")),
                      str(trial.user_attrs.get("dvc_experiment", "")), final.run.name if final else ""])
        link = {}
        if row:
            link[run_column] = run_link(ui_base, row.run.experiment_id, row.run.run_id)
        if final:
            link[len(header) - 1] = run_link(ui_base, final.run.experiment_id, final.run.run_id)
        links.append(link)
    return header, cells, links


def _param(value) -> str:
    return number(value) if isinstance(value, float) else str(value)
