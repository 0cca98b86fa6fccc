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
def store(tmp_path, monkeypatch, new_mlflow_db) -> Store:
    path = new_mlflow_db(tmp_path / "mlflow.db")
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


def test_sort_by_another_metric_puts_the_best_first_and_runs_lacking_it_last(store, tmp_path):
    """knn_accuracy is to maximize (vaepipe.metrics): the highest ranks first."""
    store.add("a", {**BASE, "model.latent_dim": 2}, result(5.0, 170.0, knn_accuracy=0.4))
    store.add("b", {**BASE, "model.latent_dim": 3}, result(6.0, 150.0, knn_accuracy=0.9))
    store.add("c", {**BASE, "model.latent_dim": 4}, {"test_kl": 1.0})
    assert main(["--out", str(tmp_path), "--sort", "knn_accuracy"]) == 0
    assert [row["run"] for row in read_csv(tmp_path)] == ["b", "a", "c"]
    assert [row["rank"] for row in read_csv(tmp_path)] == ["1", "2", "3"]


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
    for run_id in ids:  # the run's page in MLflow 3's model-training view (its default is the GenAI one)
        assert (f'href="http://127.0.0.1:5999/#/experiments/{store.experiment_id}/runs/{run_id}'
                '?workflowType=machine_learning"') in page
    assert "Run links open the MLflow UI at http://127.0.0.1:5999 (--ui-url): it must be running." in page


def test_the_page_says_the_links_need_make_ui_on_a_local_store(store, tmp_path, capsys):
    store.add("a", BASE, result(1.0, 2.0))
    assert main(["--out", str(tmp_path), "--ui-port", "5123"]) == 0
    note = "Run links open the MLflow UI at http://127.0.0.1:5123: start it first with `make ui PORT=5123`"
    assert note in (tmp_path / "compare.html").read_text() and note in (tmp_path / "compare.md").read_text()
    assert note in capsys.readouterr().out


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


def latent_dim_rows(metrics_of) -> list:
    """Two rows, latent_dim 2 and 4, differing in nothing else; `metrics_of(z)` gives each one's metrics."""
    from vaepipe.compare.rows import Row
    from vaepipe.tracking.search import RunRecord

    return [Row(RunRecord(f"id{z}", f"z{z}", "FINISHED", 0, "0", {"model.latent_dim": str(z)}, {}, {}),
                {"model.latent_dim": str(z)}, metrics_of(z))
            for z in (2, 4)]


@pytest.mark.parametrize("count", [1, 4, 5])
def test_metrics_against_a_param_draws_one_panel_per_metric(count):
    """As many panels as metrics (vaepipe.metrics's drawn ones by default), two to a row."""
    names = list(METRICS[:count])
    rows = latent_dim_rows(lambda z: {name: float(z + index) for index, name in enumerate(names)})
    figure = metrics_against(rows, "model.latent_dim", tuple(names))
    assert [axes.get_ylabel() for axes in figure.axes] == names
    assert all(len(axes.get_lines()) == 1 for axes in figure.axes)


def test_the_legend_is_on_the_first_panel_with_lines_when_no_run_has_the_first_metric():
    """Runs logged before a drawn metric existed (docs/extending.md, the evaluate metric recipe) leave its
    panel empty; the legend is still drawn, on the first panel that has lines."""
    names = list(METRICS[:3])
    rows = latent_dim_rows(lambda z: {name: float(z) for name in names[1:]})
    figure = metrics_against(rows, "model.latent_dim", tuple(names))
    assert [len(axes.get_lines()) for axes in figure.axes] == [0, 1, 1]
    assert [axes.get_legend() is not None for axes in figure.axes] == [False, True, False]
    assert legend_texts(figure) == ["all runs"]


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


# ---------------------------------------------------------------- never ranking unlike runs together

FULL_TEST = {"data.dataset": "mnist", "data.limit": "null", "data.binarize": "none", "evaluate.mc_samples": 10,
             "data.val_size": 10000, "data.split_seed": 0}


def test_runs_on_different_test_protocols_get_one_ranked_table_each(store, tmp_path, capsys):
    """`make compare LAST=3` once ranked a run scored on 5000 test images with 10 importance samples above
    runs scored on all 10000 with 1000: its lower numbers are of another test, not a better model."""
    protocol = {**BASE, **FULL_TEST, "evaluate.iw_samples": 1000}
    store.add("full-z2", {**protocol, "model.latent_dim": 2}, result(5.0, 160.0), curve=[190, 180])
    store.add("full-z4", {**protocol, "model.latent_dim": 4}, result(9.0, 140.0), curve=[180, 170])
    # Lower test numbers than either, on an easier protocol: 5000 test images, 10 importance samples.
    store.add("quick-z8", {**protocol, "model.latent_dim": 8, "data.limit": 5000, "data.val_size": 1000,
                           "evaluate.iw_samples": 10}, result(4.0, 100.0), curve=[150, 120])
    out = tmp_path / "reports"
    assert main(["--out", str(out)]) == 0

    rows = read_csv(out)
    full = "mnist, 10000 test images, binarize none, mc_samples 10, iw_samples 1000"
    quick = "mnist, 5000 test images, binarize none, mc_samples 10, iw_samples 10"
    # Each protocol ranked on its own (rank 1 twice), the larger group first; never one ranking of three.
    assert [(row["protocol"], row["rank"], row["run"]) for row in rows] == [
        (full, "1", "full-z4"), (full, "2", "full-z2"), (quick, "1", "quick-z8")]
    # Within a group only what differs there is a column: the protocol is the group's key, not a param.
    assert rows[0]["model.latent_dim"] == "4" and "data.limit" not in rows[0] and "evaluate.iw_samples" not in rows[0]
    md = (out / "compare.md").read_text()
    first, second = md.split(f"## Test protocol 1: {full}")[1].split(f"## Test protocol 2: {quick}")
    assert "| full-z4 |" in first and "| full-z2 |" in first and "quick-z8" not in first
    assert "| quick-z8 |" in second and "full-z" not in second.split("![")[0]
    page = (out / "compare.html").read_text()
    assert page.count("<table>") == 2 and page.count("Ranked among these") == 2
    assert page.index(f"Test protocol 1: {full}") < page.index("full-z4") < page.index(f"Test protocol 2: {quick}") \
        < page.index("quick-z8")
    assert "within each of 2 test protocols (never ranked across them)" in page
    # Figures of test metrics per protocol; the validation curves per validation protocol (other images).
    assert {p.name for p in out.glob("*.png")} == {"rate_distortion-p1.png", "metrics_vs_model.latent_dim-p1.png",
                                                   "val_loss_curves-v1.png", "val_loss_curves-v2.png"}
    assert Image.open(out / "rate_distortion-p1.png").text["Description"] == "points=2"
    assert "val_loss_curves.png (validation protocol: mnist, limit all, val_size 10000, split_seed 0, binarize none)" \
        in page and "val_loss_curves.png (validation protocol: mnist, limit 5000, val_size 1000" in page
    printed = capsys.readouterr().out
    assert f"test protocol: {full}" in printed and f"test protocol: {quick}" in printed
    assert "2 test protocols: each ranked apart" in printed


def test_one_test_protocol_is_shown_with_its_table(store, tmp_path):
    store.add("a", {**BASE, **FULL_TEST, "data.binarize": "static"}, result(1.0, 2.0))
    store.add("b", {**BASE, **FULL_TEST, "data.binarize": "static", "train.seed": 1}, result(1.0, 3.0))
    assert main(["--out", str(tmp_path)]) == 0
    assert "## Test protocol: mnist, 10000 test images, binarize static, mc_samples 10, iw_samples 10" in \
        (tmp_path / "compare.md").read_text()
    assert {row["rank"] for row in read_csv(tmp_path)} == {"1", "2"}


def test_a_name_that_matches_nothing_lists_the_sweeps_and_studies(store, tmp_path, capsys):
    store.add("s1-a", BASE, result(1.0, 2.0), sweep="lr-grid")
    store.add("s1-b", BASE, result(1.0, 3.0), sweep="lr-grid")
    store.add("s2-a", BASE, result(1.0, 4.0), sweep="beta")
    store.add("trial-0", BASE, {"val_loss": 3.0}, tags={"vaepipe.study": "rd", "vaepipe.trial": "0"})
    out = tmp_path / "reports"
    for args in (["--sweep", "lr-gird"], ["--filter", "params.`model.arch` = 'conv'"]):
        assert main(["--out", str(out), *args]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "no FINISHED run matches" in err, err
        assert "sweeps (SWEEP=): beta (1 run), lr-grid (2 runs)" in err and "studies with runs (STUDY=): rd (1 run)" in err
        assert "make run" not in err and not out.exists()
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    assert main(["--out", str(out), "--study", "rdd", "--storage", storage]) == 2
    err = capsys.readouterr().err
    assert "study 'rdd'" in err and "studies with runs (STUDY=): rd (1 run)" in err and "studies in sqlite:///" in err


def tick_values(axis) -> list[float]:
    axis.axes.figure.canvas.draw()
    low, high = sorted(axis.get_view_interval())
    return [tick for tick in axis.get_majorticklocs() if low <= tick <= high]


def test_epochs_and_integer_params_get_integer_ticks(store):
    """Three epochs and latent sizes 2 and 3: matplotlib's default ticks would read epoch 1.5, latent_dim 2.25."""
    store.add("z2", {**BASE, "model.latent_dim": 2, "train.beta": 0.5}, result(5.0, 170.0), curve=[3.0, 2.0, 1.5])
    store.add("z3", {**BASE, "model.latent_dim": 3, "train.beta": 0.75}, result(6.0, 160.0), curve=[2.5, 2.0, 1.8])
    rows = build_rows(tracking.search.search_runs(), "test_loss")
    epochs = tick_values(validation_curves(rows).axes[0].xaxis)
    assert len(epochs) >= 2 and all(tick == int(tick) for tick in epochs), epochs
    for axes in metrics_against(rows, "model.latent_dim").axes:
        ticks = tick_values(axes.xaxis)
        assert len(ticks) >= 2 and all(tick == int(tick) for tick in ticks), ticks
    # A float param keeps matplotlib's own ticks (0.5 .. 0.75 needs fractions).
    betas = tick_values(metrics_against(rows, "train.beta").axes[0].xaxis)
    assert any(tick != int(tick) for tick in betas), betas
    # Latent sizes 2..32 on the log axis: ticks at powers of two, labelled as plain integers.
    store.add("z32", {**BASE, "model.latent_dim": 32, "train.beta": 0.5}, result(7.0, 150.0))
    wide = metrics_against(build_rows(tracking.search.search_runs(), "test_loss"), "model.latent_dim").axes[0]
    wide.figure.canvas.draw()
    labels = [label.get_text() for label in wide.xaxis.get_majorticklabels() if label.get_text()]
    assert labels and all(label.isdigit() for label in labels), labels


def test_reports_hold_only_the_current_compare(store, tmp_path):
    for dim in (2, 4):
        store.add(f"z{dim}", {**BASE, "model.latent_dim": dim}, result(dim, 100.0 / dim), curve=[2.0, 1.0])
    store.add("only-train", {**BASE, "model.latent_dim": 8}, {"val_loss": 1.0}, curve=[2.0, 1.0])
    out = tmp_path / "reports"
    assert main(["--out", str(out)]) == 0
    first = {p.name for p in out.iterdir()}
    assert {"rate_distortion.png", "metrics_vs_model.latent_dim.png", "compare_train_only.csv"} <= first
    (out / "notes.md").write_text("mine")  # a user's own files are not compare's to remove
    (out / "diagram.png").write_bytes(b"mine")
    assert main(["--out", str(out), "--filter", "attributes.run_name = 'z2'"]) == 0
    assert {p.name for p in out.iterdir()} == {"compare.md", "compare.csv", "compare.html", "val_loss_curves.png",
                                               "notes.md", "diagram.png"}
    assert [row["run"] for row in read_csv(out)] == ["z2"]
