"""The one registry of metrics (vaepipe.metrics): well formed, free of TensorFlow, and what every reader
takes its names from: compare's columns, figures and --sort, tune's objective check, the validation
summary, evaluate's metrics.json, the plots and dvc.yaml's plots. (The files a real run writes are checked
against it in tests/e2e/test_metric_registry.py.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from test_architecture import _third_party

from vaepipe import metrics
from vaepipe.imports import SRC, import_closure

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = SRC / "vaepipe"


@pytest.mark.parametrize("reader", ["metrics.py", "epoch_metrics.py", "compare/__main__.py", "compare/study.py",
                                    "tune/search.py"])
def test_the_registry_and_its_tf_free_readers_import_no_tensorflow(reader):
    files = {PACKAGE / reader, *import_closure(PACKAGE / reader)}
    heavy = {file.name: names & {"tensorflow", "keras"} for file in files if (names := _third_party(file))}
    assert not any(heavy.values()), heavy


def test_declaring_a_test_metric_does_not_retrain():
    """The train stage reads the epoch half of the registry only: metrics.py (the test metrics, recipe 3 of
    docs/extending.md) is not among its dvc.yaml deps, so `dvc repro` after a new test metric reruns evaluate
    and plot, not train."""
    from stage_imports import stage_closures

    closures = stage_closures()
    assert Path("src/vaepipe/metrics.py") not in closures["train"]
    assert Path("src/vaepipe/epoch_metrics.py") in closures["train"]
    assert Path("src/vaepipe/metrics.py") in closures["evaluate"]


def test_names_are_unique_and_only_validation_metrics_are_objectives():
    every = metrics.registry()
    assert len({metric.name for metric in every}) == len(every)
    assert metrics.objective_names() == metrics.names(metrics.VALIDATION)
    assert not any(metric.objective for metric in every if metric.where != metrics.VALIDATION)
    for where, (rate, distortion) in metrics.RATE_DISTORTION.items():
        assert {metrics.get(rate).where, metrics.get(distortion).where} == {where}


def test_the_validation_summary_is_derived_from_the_epoch_metrics():
    """val_metrics.json's keys and order as the train stage wrote them before the registry; each summarises
    its epoch metric's validation column."""
    assert metrics.names(metrics.VALIDATION) == ("val_loss", "best_val_loss", "val_recon", "val_kl")
    assert metrics.epoch_columns() == ("loss", "recon", "kl", "epoch_time", "val_loss", "val_recon", "val_kl")
    best = metrics.get("best_val_loss")
    assert (best.column, best.summary, best.direction) == ("val_loss", "best", "minimize")
    assert metrics.summarise(best, [3.0, 1.0, 2.0]) == 1.0
    assert metrics.summarise(metrics.get("val_kl"), [3.0, 1.0, 2.0]) == 2.0
    assert metrics.summarise(best, []) is None  # no validation split: null in val_metrics.json
    maximized = metrics.Metric("best_val_x", metrics.VALIDATION, "maximize", "x", column="val_x", summary="best")
    assert metrics.summarise(maximized, [3.0, 1.0, 2.0]) == 3.0


def test_a_validation_summary_needs_a_validated_epoch_metric():
    with pytest.raises(KeyError, match="no metric 'val_epoch_time'"):
        metrics.get("val_epoch_time")


def arrays(n: int = 4) -> metrics.Arrays:
    rng = np.random.default_rng(0)
    return metrics.Arrays(images=rng.random((n, 784)), labels=np.arange(n), means=rng.normal(size=(n, 2)),
                          log_vars=np.zeros((n, 2)), log_px=np.full(n, -100.0),
                          train_means=rng.normal(size=(8, 2)), train_labels=np.arange(8))


MEASURED = {"test_loss": 3.0, "test_recon": 2.0, "test_kl": 1.0, "test_tutorial_loss": 2.5, "test_nll_iw": 2.9,
            "knn_accuracy": 0.5}


def test_metrics_json_holds_the_measured_and_computed_metrics_in_the_registrys_order():
    results = metrics.metrics_json(MEASURED, arrays())
    assert tuple(results) == metrics.names(metrics.TEST)
    assert results["active_units"] == metrics.active_units(arrays().means) and results["test_loss"] == 3.0


def test_metrics_json_refuses_drift_between_the_registry_and_evaluate():
    with pytest.raises(ValueError, match="declares test metric 'knn_accuracy' without a compute function"):
        metrics.metrics_json({k: v for k, v in MEASURED.items() if k != "knn_accuracy"}, arrays())
    with pytest.raises(ValueError, match="measures test_new, which vaepipe.metrics does not declare"):
        metrics.metrics_json({**MEASURED, "test_new": 1.0}, arrays())


def test_every_test_and_validation_metric_has_a_compare_column_figure_and_sort():
    from vaepipe.compare.__main__ import parse_args
    from vaepipe.compare.figures import PARAM_METRICS
    from vaepipe.compare.table import COLUMNS, TRAIN_ONLY_COLUMNS

    tests, validation = metrics.names(metrics.TEST), metrics.names(metrics.VALIDATION)
    assert "test_tutorial_loss" in tests  # was in metrics.json and MLflow, not in `make compare`
    assert [column for column in COLUMNS if column in tests or column in validation] == list(tests)
    assert [column for column in TRAIN_ONLY_COLUMNS if column in tests or column in validation] == list(validation)
    assert PARAM_METRICS == tuple(metric.name for metric in metrics.of(metrics.TEST) if metric.drawn)
    for name in (*tests, *validation):
        assert parse_args(["--sort", name]).sort == name


def test_compare_defaults_and_tune_name_registry_metrics():
    from vaepipe.compare.__main__ import DEFAULT_SORT, TRAIN_ONLY_SORT
    from vaepipe.tune.driver import TEST_SUMMARY

    assert metrics.get(DEFAULT_SORT).where == metrics.TEST and metrics.get(TRAIN_ONLY_SORT).objective
    assert TEST_SUMMARY == metrics.names(metrics.TEST)


def test_dvc_yaml_plots_draw_registry_epoch_columns():
    """dvc.yaml's plots stay YAML: the train_log.csv columns they name must be the registry's."""
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    named = []
    for plot in dvc.get("plots", []):
        for definition in plot.values():
            named += [definition["x"], *[column for columns in definition["y"].values() for column in columns]]
    for stage in dvc["stages"].values():
        for plot in stage.get("plots", []):
            for file, definition in (plot.items() if isinstance(plot, dict) else ()):
                if file == "train_log.csv":
                    named += [definition["x"], *np.atleast_1d(definition["y"]).tolist()]
    assert named, "dvc.yaml draws no train_log.csv column"
    allowed = set(metrics.epoch_columns()) | set(metrics.INFO[metrics.EPOCH])
    assert set(named) <= allowed, sorted(set(named) - allowed)
