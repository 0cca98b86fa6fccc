"""A study's figures for `make compare --study`, drawn by Optuna's own matplotlib visualisations (the
optimisation history, the parameter importances, the Pareto front), and its trials as plain records.

Every function returns a matplotlib Figure (vaepipe.compare saves it as PNG) or plain Python values:
no Optuna object leaves vaepipe.tune. Optuna's drawing style (ggplot) is confined to these figures.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import optuna  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from optuna.importance import PedAnovaImportanceEvaluator  # noqa: E402
from optuna.trial import TrialState  # noqa: E402
from optuna.visualization import matplotlib as optuna_plots  # noqa: E402

from vaepipe.tune.storage import objective_names  # noqa: E402


@dataclass(frozen=True)
class TrialRecord:
    """One trial as the compare page lists it."""

    number: int
    state: str  # COMPLETE, PRUNED, FAIL, RUNNING, WAITING
    values: tuple[float, ...] | None
    params: dict[str, Any]
    user_attrs: dict[str, Any]


@dataclass(frozen=True)
class StudyRecord:
    name: str
    directions: tuple[str, ...]  # "minimize" / "maximize", one per objective
    metric_names: tuple[str, ...] | None  # storage.objective_names: Study.metric_names (set by `make tune`)
    user_attrs: dict[str, Any]
    trials: tuple[TrialRecord, ...]


def study_record(study: optuna.Study) -> StudyRecord:
    trials = tuple(TrialRecord(t.number, t.state.name, tuple(t.values) if t.values is not None else None,
                               dict(t.params), dict(t.user_attrs))
                   for t in study.get_trials(deepcopy=False))
    names = objective_names(study)
    return StudyRecord(study.study_name, tuple(d.name.lower() for d in study.directions),
                       tuple(names) if names is not None else None, dict(study.user_attrs), trials)


@contextmanager
def _optuna_drawing() -> Iterator[None]:
    """Optuna's plots set the ggplot style globally and warn that they are experimental: both stay here."""
    with matplotlib.rc_context(), warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def optimization_history(study: optuna.Study, names: list[str]) -> dict[str, Any]:
    """{objective name: its history Figure}: each trial's value by trial number (and, for a single
    objective, the best so far)."""
    figures = {}
    with _optuna_drawing():
        for index, name in enumerate(names):
            if len(names) == 1:
                axes = optuna_plots.plot_optimization_history(study, target_name=name)
            else:
                axes = optuna_plots.plot_optimization_history(
                    study, target=lambda trial, i=index: trial.values[i], target_name=name)
            axes.set_title(f"optimisation history of study {study.study_name}: {name}")
            axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # trial numbers: no trial 1.5
            figures[name] = axes.figure
    return figures


def param_importances(study: optuna.Study, names: list[str]):
    """The params' importances for each objective (PED-ANOVA, Optuna's default evaluator: no extra
    package), or None when fewer than two completed trials or no param varies."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2 or not any(len({repr(t.params.get(p)) for t in complete}) > 1
                                    for p in {p for t in complete for p in t.params}):
        return None
    with _optuna_drawing():
        if all(direction == optuna.study.StudyDirection.MINIMIZE for direction in study.directions):
            # Per objective, PED-ANOVA ranks params by how they reach LOW values, and warns in case that
            # is not meant: with every objective minimised (the search's val_* losses), it is.
            warnings.filterwarnings("ignore", message="PedAnovaImportanceEvaluator computes", category=UserWarning)
        evaluator = PedAnovaImportanceEvaluator()
        if len(names) == 1:
            axes = optuna_plots.plot_param_importances(study, evaluator=evaluator, target_name=names[0])
        else:
            axes = optuna_plots.plot_param_importances(study, evaluator=evaluator)  # one bar per objective
            for text, name in zip(axes.get_legend().get_texts(), names, strict=False):
                text.set_text(name)
        axes.set_title(f"parameter importances, study {study.study_name}", loc="left")
        axes.figure.set_size_inches(8, max(3.0, 0.5 * len(axes.get_yticks()) + 1.5))
    return axes.figure


def pareto_front(study: optuna.Study, axis_names: tuple[str, str], points: dict[int, tuple[float, float]]):
    """The completed trials at `points` (trial number -> (x, y), e.g. the rate-distortion plane), the
    Pareto-optimal ones (Optuna's: non-dominated in the study's objectives) highlighted and joined."""
    with _optuna_drawing():
        axes = optuna_plots.plot_pareto_front(study, targets=lambda trial: points[trial.number],
                                              target_names=list(axis_names))
        best = sorted(points[trial.number] for trial in study.best_trials)
        if len(best) >= 2:
            axes.plot(*zip(*best, strict=True), color=plt.get_cmap("tab10")(3), linewidth=1, alpha=0.7)
        for number, (x, y) in points.items():
            axes.annotate(str(number), (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7)
        axes.set_title(f"Pareto front of study {study.study_name} (numbers: trials)")
        axes.figure.set_size_inches(7, 5.5)
    return axes.figure
