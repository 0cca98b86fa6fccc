"""`make compare` against a real SQLite MLflow store filled through MLflow's tracking API: the runs it
selects, the params that differ, the table, the figures and the self-contained HTML page."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import mlflow
import pytest
from mlflow.entities import Metric, Param
from PIL import Image

from vaepipe import tracking
from vaepipe.compare.__main__ import main
from vaepipe.compare.figures import (
    FAINT,
    HIGHLIGHT,
    MAX_CURVES,
    beta_lines,
    metrics_against,
    numeric_differing,
    rate_distortion,
    validation_curves,
)
from vaepipe.compare.rows import METRICS, build_rows
from vaepipe.compare.table import COLUMNS


class Store:
    """A fresh store for one test, reached the way the stages reach theirs (MLFLOW_TRACKING_URI)."""

    def __init__(self, path: Path):
        self.client = mlflow.MlflowClient(f"sqlite:///{path}")
        self.experiment_id = self.client.create_experiment(tracking.EXPERIMENT_NAME)

    def add(self, name: str, params: dict, metrics: dict | None = None, status: str = "FINISHED",
            curve: list[float] = (), epoch_times: list[float] = (), sweep: str | None = None,
            tags: dict | None = None) -> str:
        tags = {"dvc.exp_name": f"exp-{name}", **({tracking.SWEEP_TAG: sweep} if sweep else {}), **(tags or {})}
        run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        history = [Metric("val_loss", value, 0, step) for step, value in enumerate(curve, start=1)]
        history += [Metric("epoch_time", value, 0, step) for step, value in enumerate(epoch_times, start=1)]
        history += [Metric(key, value, 0, 0) for key, value in (metrics or {}).items()]
        self.client.log_batch(run.info.run_id, metrics=history,
                              params=[Param(key, str(value)) for key, value in params.items()])
        self.client.set_terminated(run.info.run_id, status)
        return run.info.run_id


@pytest.fixture
def store(tmp_path, monkeypatch) -> Store:
    path = tmp_path / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{path}")
    return Store(path)


def result(kl: float, recon: float, **extra: float) -> dict:
    return {"test_kl": kl, "test_recon": recon, "test_loss": kl + recon, "test_nll_iw": kl + recon - 1,
            "active_units": 2, "knn_accuracy": 0.5, **extra}


BASE = {"model.arch": "tutorial", "train.epochs": 3, "evaluate.iw_samples": 10, "model.hidden": "[512]"}


def read_csv(out: Path) -> list[dict]:
    with (out / "compare.csv").open() as handle:
        return list(csv.DictReader(handle))


def test_table_has_the_differing_params_sorted_runs_blank_cells_and_counts_the_unfinished(store, tmp_path, capsys):
    store.add("z2", {**BASE, "model.latent_dim": 2, "train.beta": 0.5}, result(5.0, 170.0),
              curve=[200, 190, 185], epoch_times=[3.0, 1.0, 2.0])
    store.add("z8", {**BASE, "model.latent_dim": 8, "train.beta": 0.5}, result(20.0, 120.0),
              curve=[180, 150, 140], epoch_times=[2.0, 1.5, 1.5])
    no_nll = result(10.0, 150.0)
    del no_nll["test_nll_iw"]
    store.add("z4", {**BASE, "model.latent_dim": 4, "train.beta": 0.5}, no_nll, curve=[190, 170, 160])
    store.add("failed", {**BASE, "model.latent_dim": 16, "train.beta": 0.5}, status="FAILED")
    store.add("killed", {**BASE, "model.latent_dim": 32, "train.beta": 2.0}, status="KILLED")
    out = tmp_path / "reports"

    assert main(["--out", str(out), "--sort", "test_loss"]) == 0

    printed = capsys.readouterr().out
    assert "left out 1 FAILED, 1 KILLED run(s)" in printed
    rows = read_csv(out)
    assert [row["run"] for row in rows] == ["z8", "z4", "z2"]  # by test_loss, ascending
    # Only latent_dim differs among the finished runs (beta differed only in a killed one).
    assert "model.latent_dim" in rows[0] and "train.beta" not in rows[0] and "model.arch" not in rows[0]
    assert [row["model.latent_dim"] for row in rows] == ["8", "4", "2"]
    assert rows[1]["test_nll_iw"] == "" and rows[0]["test_nll_iw"] == "139"
    assert rows[2]["median_s_per_epoch"] == "2" and rows[2]["epochs"] == "3"
    assert rows[1]["median_s_per_epoch"] == "" and rows[1]["epochs"] == "3"  # no epoch_time: the param
    assert rows[0]["dvc_experiment"] == "exp-z8" and rows[0]["iw_k"] == "10"
    # The markdown table is printed and written, one line per run.
    md = (out / "compare.md").read_text()
    assert md.count("\n| z") == 3 and "| z8 |" in printed
    assert {p.name for p in out.glob("*.png")} == {"val_loss_curves.png", "rate_distortion.png",
                                                   "metrics_vs_model.latent_dim.png"}


def test_sort_by_another_metric_puts_runs_lacking_it_last(store, tmp_path):
    store.add("a", {**BASE, "model.latent_dim": 2}, result(5.0, 170.0, knn_accuracy=0.9))
    store.add("b", {**BASE, "model.latent_dim": 3}, result(6.0, 150.0, knn_accuracy=0.4))
    store.add("c", {**BASE, "model.latent_dim": 4}, {"test_kl": 1.0})
    assert main(["--out", str(tmp_path), "--sort", "knn_accuracy"]) == 0
    assert [row["run"] for row in read_csv(tmp_path)] == ["b", "a", "c"]


def test_no_runs_is_one_clear_line_and_a_failure(store, tmp_path, capsys):
    store.add("failed", BASE, status="FAILED")
    assert main(["--out", str(tmp_path / "reports")]) == 1
    captured = capsys.readouterr()
    assert "left out 1 FAILED" in captured.out
    assert captured.err.count("\n") == 1 and "no FINISHED runs of experiment vaepipe" in captured.err
    assert not (tmp_path / "reports").exists()


def test_missing_store_is_not_created(tmp_path, monkeypatch, capsys):
    db = tmp_path / "absent.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    assert main(["--out", str(tmp_path / "r")]) == 1
    assert not db.exists() and "no FINISHED runs" in capsys.readouterr().err


def test_one_run_gets_no_figure_that_needs_two(store, tmp_path):
    store.add("only", {**BASE, "model.latent_dim": 2}, result(5.0, 170.0), curve=[3.0, 2.0])
    assert main(["--out", str(tmp_path)]) == 0
    assert [p.name for p in tmp_path.glob("*.png")] == ["val_loss_curves.png"]
    assert [row["run"] for row in read_csv(tmp_path)] == ["only"]


def test_more_than_a_page_of_runs_and_the_last_n(store, tmp_path, monkeypatch):
    monkeypatch.setattr(tracking.search, "SEARCH_PAGE_SIZE", 10)  # the real paging path, with fewer runs to make
    for index in range(23):
        store.add(f"r{index:02d}", {**BASE, "train.seed": index}, result(float(index), 100.0))
    assert main(["--out", str(tmp_path / "all")]) == 0
    assert len(read_csv(tmp_path / "all")) == 23
    assert main(["--out", str(tmp_path / "last"), "--last", "5"]) == 0
    assert sorted(row["run"] for row in read_csv(tmp_path / "last")) == [f"r{i}" for i in range(18, 23)]


def test_default_page_size_reads_more_than_100_runs(store, tmp_path):
    assert tracking.search.SEARCH_PAGE_SIZE <= 100
    for index in range(105):
        store.add(f"r{index:03d}", {**BASE, "train.seed": index}, {"test_loss": float(index)})
    assert len(tracking.search.search_runs()) == 105
    assert main(["--out", str(tmp_path)]) == 0
    assert len(read_csv(tmp_path)) == 105


def test_sweep_and_filter_select_runs(store, tmp_path):
    store.add("s1-a", {**BASE, "model.latent_dim": 2}, result(1.0, 2.0), sweep="s1")
    store.add("s1-b", {**BASE, "model.latent_dim": 4}, result(1.0, 3.0), sweep="s1")
    store.add("other", {**BASE, "model.latent_dim": 8, "model.arch": "mlp"}, result(1.0, 4.0), sweep="s2")
    assert main(["--out", str(tmp_path / "s"), "--sweep", "s1"]) == 0
    assert sorted(row["run"] for row in read_csv(tmp_path / "s")) == ["s1-a", "s1-b"]
    assert main(["--out", str(tmp_path / "f"), "--filter", "params.`model.arch` = 'mlp'"]) == 0
    assert [row["run"] for row in read_csv(tmp_path / "f")] == ["other"]
    assert main(["--out", str(tmp_path / "n"), "--sweep", "nope"]) == 1


def test_bad_filter_is_a_clear_error(store, tmp_path, capsys):
    store.add("a", BASE, result(1.0, 2.0))
    assert main(["--out", str(tmp_path), "--filter", "params.x ==== 1"]) == 1
    assert "cannot search runs" in capsys.readouterr().err


def test_html_is_self_contained_and_links_every_run_to_the_ui(store, tmp_path):
    ids = [store.add(f"z{d}", {**BASE, "model.latent_dim": d}, result(d, 100.0 / d), curve=[2.0, 1.0]) for d in (2, 4)]
    assert main(["--out", str(tmp_path), "--ui-url", "http://127.0.0.1:5999"]) == 0
    page = (tmp_path / "compare.html").read_text()
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == 3 and all(src.startswith("data:image/png;base64,") for src in sources)
    assert "<script" not in page and "<link" not in page  # nothing fetched: opens offline
    for run_id in ids:
        assert f'href="http://127.0.0.1:5999/#/experiments/{store.experiment_id}/runs/{run_id}"' in page


def test_rate_distortion_joins_runs_that_differ_only_in_beta(store):
    for dim in (2, 8):
        for beta in (0.5, 1.0, 2.0):
            store.add(f"z{dim}-b{beta}", {**BASE, "model.latent_dim": dim, "train.beta": beta}, result(beta * dim, 100 / beta))
    store.add("mlp", {**BASE, "model.latent_dim": 2, "train.beta": 1.0, "model.arch": "mlp"}, result(3.0, 90.0))
    rows = build_rows(tracking.search.search_runs(), "test_loss")
    lines = beta_lines(rows)
    assert sorted(tuple(row.run.name for row in line) for line in lines) == [
        ("z2-b0.5", "z2-b1.0", "z2-b2.0"), ("z8-b0.5", "z8-b1.0", "z8-b2.0")]
    assert numeric_differing(rows) == ["model.latent_dim", "train.beta"]


def test_bad_arguments_are_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--last", "0"])
    assert exit_info.value.code != 0 and "--last must be at least 1, got 0" in capsys.readouterr().err


def test_every_metric_read_back_has_a_column():
    assert set(METRICS) <= set(COLUMNS)


# ---------------------------------------------------------------- readable at 30 runs and more


def legend_texts(figure) -> list[str]:
    return [text.get_text() for axes in figure.axes if axes.get_legend() for text in axes.get_legend().get_texts()]


def test_legends_name_runs_briefly_and_the_table_carries_their_params(store, tmp_path):
    """Runs differing in four params: every legend names runs (or a count of them), never the params."""
    for index in range(12):
        params = {**BASE, "model.latent_dim": 2 + index % 3, "train.beta": [0.5, 1.0][index % 2],
                  "train.learning_rate": 0.001 * (1 + index % 4), "train.seed": index}
        store.add(f"run{index:02d}", params, result(5.0 + index, 150.0 - index), curve=[200 - index, 190 - index])
    rows = build_rows(tracking.search.search_runs(), "test_loss")
    names = {f"run{index:02d}" for index in range(12)}
    for figure in (validation_curves(rows), rate_distortion(rows), metrics_against(rows, "model.latent_dim")):
        texts = legend_texts(figure)
        assert texts and not any("=" in text for text in texts), texts
        assert all(text in names or text.endswith("runs") or " and " in text for text in texts), texts
    assert main(["--out", str(tmp_path)]) == 0
    row = read_csv(tmp_path)[0]
    assert {"model.latent_dim", "train.beta", "train.learning_rate", "train.seed"} <= row.keys()


def test_a_param_the_arch_does_not_read_is_blank_and_not_differing(store, tmp_path):
    tutorial = {**BASE, "model.activation": "relu"}
    store.add("tut-a", {**tutorial, "model.hidden": "[512]", "model.latent_dim": 2}, result(5.0, 170.0))
    store.add("tut-b", {**tutorial, "model.hidden": "[256]", "model.activation": "tanh", "model.latent_dim": 3},
              result(6.0, 160.0))
    store.add("mlp-a", {**tutorial, "model.arch": "mlp", "model.hidden": "[512]", "model.latent_dim": 2},
              result(4.0, 150.0))
    assert main(["--out", str(tmp_path / "a")]) == 0
    rows = read_csv(tmp_path / "a")
    # hidden and activation differ only between tutorial runs, which do not read them.
    assert "model.hidden" not in rows[0] and "model.activation" not in rows[0], rows[0].keys()
    assert "model.arch" in rows[0] and "model.latent_dim" in rows[0]

    store.add("mlp-b", {**tutorial, "model.arch": "mlp", "model.hidden": "[1024]", "model.latent_dim": 2},
              result(3.0, 140.0))
    assert main(["--out", str(tmp_path / "b")]) == 0
    hidden = {row["run"]: row["model.hidden"] for row in read_csv(tmp_path / "b")}
    assert hidden == {"tut-a": "", "tut-b": "", "mlp-a": "[512]", "mlp-b": "[1024]"}


def test_runs_without_test_metrics_are_listed_apart_from_the_ranked_table(store, tmp_path, capsys):
    store.add("full-a", {**BASE, "model.latent_dim": 2}, result(5.0, 170.0), curve=[190, 180])
    store.add("full-b", {**BASE, "model.latent_dim": 4}, result(9.0, 140.0), curve=[170, 160])
    # Train-only: better validation numbers than either full run, but no test metrics to rank by.
    store.add("train-only", {**BASE, "model.latent_dim": 8, "train.epochs": 5},
              {"val_recon": 110.0, "val_kl": 10.0}, curve=[150, 130, 120, 121, 122])
    store.add("trial-3", {**BASE, "model.latent_dim": 16}, {"val_recon": 100.0, "val_kl": 25.0},
              curve=[140, 125], tags={"vaepipe.study": "s", "vaepipe.trial": "3", "vaepipe.pruned": "true"})
    out = tmp_path / "reports"
    assert main(["--out", str(out)]) == 0
    assert [row["run"] for row in read_csv(out)] == ["full-b", "full-a"]
    with (out / "compare_train_only.csv").open() as handle:
        apart = list(csv.DictReader(handle))
    assert [row["run"] for row in apart] == ["train-only", "trial-3"]  # by val_loss
    assert apart[0]["best_val_loss"] == "120" and apart[0]["val_loss"] == "122"
    assert apart[1]["trial"] == "3" and apart[1]["pruned"] == "pruned"
    assert "test_loss" not in apart[0] and apart[0]["model.latent_dim"] == "8" and apart[0]["train.epochs"] == "5"
    md = (out / "compare.md").read_text()
    ranked, _, rest = md.partition("## Train-only runs")
    assert "| full-a |" in ranked and "| train-only |" not in ranked and "| train-only |" in rest
    page = (out / "compare.html").read_text()
    assert page.count("<table>") == 2
    assert page.index("full-b") < page.index("Train-only runs") < page.index("trial-3")
    assert "2 train-only run(s)" in capsys.readouterr().out
    # The curves figure still draws all four runs.
    assert Image.open(out / "val_loss_curves.png").text["Description"] == "points=11"


def test_more_than_ten_curves_highlight_the_five_best_and_draw_the_rest_faint(store):
    lowest = {f"r{index:02d}": 100.0 + 7 * ((index * 5) % 14) for index in range(14)}  # 14 distinct minima
    for name, low in lowest.items():
        store.add(name, {**BASE, "train.seed": int(name[1:])}, result(1.0, 2.0), curve=[low + 30, low, low + 1])
    rows = build_rows(tracking.search.search_runs(), "test_loss")
    figure = validation_curves(rows)
    lines = figure.axes[0].get_lines()
    best = sorted(lowest, key=lowest.get)[:HIGHLIGHT]
    bright = [line for line in lines if line.get_alpha() is None]
    faint = [line for line in lines if line.get_alpha() == FAINT["alpha"]]
    assert sorted(line.get_label() for line in bright) == sorted(best)
    assert len(faint) == 14 - HIGHLIGHT and len(bright) + len(faint) == 14
    assert legend_texts(figure) == [f"{14 - HIGHLIGHT} other runs", *[n for n in sorted(best, key=lowest.get)]]
    assert "5 lowest of 14 runs highlighted" in figure.axes[0].get_title()
    # At MAX_CURVES runs or fewer, every curve is drawn in colour with its own legend line.
    few = validation_curves(rows[:MAX_CURVES])
    assert all(line.get_alpha() is None for line in few.axes[0].get_lines()) and len(legend_texts(few)) == MAX_CURVES
