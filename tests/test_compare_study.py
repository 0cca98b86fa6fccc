"""`make compare STUDY=name` against a real Optuna study (in a real SQLite or journal storage) whose trials'
runs are real MLflow runs in a real SQLite store, tagged per the search contract: the study's runs only,
trials apart from the ranked final runs, the trials table, and Optuna's figures with the Pareto front on
the rate-distortion plane."""

from __future__ import annotations

import csv
import re

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState
from PIL import Image
from test_compare import BASE, Store, read_csv, result

from vaepipe.compare.__main__ import main
from vaepipe.tune import figures as study_figures
from vaepipe.tune.driver import open_study
from vaepipe.tune.search import parse_search
from vaepipe.tune.status import status
from vaepipe.tune.storage import OBJECTIVE_ATTR

SPACE = {"model.latent_dim": IntDistribution(2, 16), "train.beta": FloatDistribution(0.1, 4.0, log=True)}
# (latent_dim, beta) -> (val_recon, val_kl): four non-dominated trials (0, 1, 2, 5), two dominated (3, 4).
TRIALS = [((2, 2.0), (150.0, 5.0)), ((3, 1.5), (140.0, 8.0)), ((4, 1.0), (120.0, 15.0)), ((6, 1.2), (130.0, 20.0)),
          ((2, 3.0), (160.0, 6.0)), ((8, 0.5), (110.0, 30.0))]


@pytest.fixture
def store(tmp_path, monkeypatch, new_mlflow_db) -> Store:
    """test_compare's store: a fresh SQLite MLflow store reached through MLFLOW_TRACKING_URI."""
    path = new_mlflow_db(tmp_path / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{path}")
    return Store(path)


def non_dominated(points: dict[int, tuple[float, float]]) -> set[int]:
    """The trials no other trial beats in both objectives (both minimised): brute force."""
    return {n for n, (a, b) in points.items()
            if not any(x <= a and y <= b and (x, y) != (a, b) for m, (x, y) in points.items() if m != n)}


def add_trial_run(store, study: str, number: int, params: dict, recon: float, kl: float, **tags: str) -> str:
    beta = params["train.beta"]
    return store.add(f"exp-{study}-{number} (tutorial-z{params['model.latent_dim']})", {**BASE, **params},
                     {"val_recon": recon, "val_kl": kl}, curve=[recon + beta * kl + 20, recon + beta * kl],
                     tags={"vaepipe.study": study, "vaepipe.trial": str(number),
                           "vaepipe.dvc_experiment": f"exp-{study}-{number}", **tags})


def make_rd_study(store, storage: str, name: str = "rd") -> optuna.Study:
    """A two-objective study (val_recon, val_kl) of TRIALS plus one pruned trial, each with its MLflow run,
    and a final run (test metrics) of trial 2."""
    study = optuna.create_study(study_name=name, storage=storage, directions=["minimize", "minimize"])
    study.set_metric_names(["val_recon", "val_kl"])  # as the driver does (tune.driver.open_study)
    for (dim, beta), (recon, kl) in TRIALS:
        study.enqueue_trial({"model.latent_dim": dim, "train.beta": beta})
        trial = study.ask(SPACE)
        run_id = add_trial_run(store, name, trial.number, trial.params, recon, kl)
        trial.set_user_attr("dvc_experiment", f"exp-{name}-{trial.number}")
        trial.set_user_attr("mlflow_run_id", run_id)
        study.tell(trial, [recon, kl])
    trial = study.ask(SPACE)
    run_id = add_trial_run(store, name, trial.number, trial.params, 190.0, 1.0, **{"vaepipe.pruned": "true"})
    trial.set_user_attr("dvc_experiment", f"exp-{name}-{trial.number}")
    trial.set_user_attr("mlflow_run_id", run_id)
    study.tell(trial, state=TrialState.PRUNED)
    store.add("final-2", {**BASE, "model.latent_dim": 4, "train.beta": 1.0, "train.epochs": 30}, result(14.0, 118.0),
              tags={"vaepipe.study": name, "vaepipe.trial": "2", "vaepipe.final": "true"})
    return study


def test_a_two_objective_study_compares_with_its_trials_and_a_pareto_front(store, tmp_path, capsys):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    make_rd_study(store, storage)
    store.add("not-in-the-study", {**BASE, "model.latent_dim": 5}, result(1.0, 100.0))
    store.add("other-study", {**BASE, "model.latent_dim": 5}, {"val_recon": 1.0, "val_kl": 1.0},
              tags={"vaepipe.study": "other", "vaepipe.trial": "0"})
    out = tmp_path / "reports"

    assert main(["--study", "rd", "--storage", storage, "--out", str(out)]) == 0

    assert [row["run"] for row in read_csv(out)] == ["final-2"]  # ranked: the one run with test metrics
    with (out / "compare_train_only.csv").open() as handle:
        apart = list(csv.DictReader(handle))
    assert sorted(row["trial"] for row in apart) == [str(n) for n in range(7)]
    assert {row["pruned"] for row in apart if row["trial"] == "6"} == {"pruned"}
    with (out / "study_trials.csv").open() as handle:
        trials = list(csv.DictReader(handle))
    # The objectives are named by the study's metric names.
    assert list(trials[0])[:6] == ["trial", "state", "val_recon", "val_kl", "model.latent_dim", "train.beta"]
    assert [row["state"] for row in trials] == ["COMPLETE"] * 6 + ["PRUNED"]
    assert [(row["val_recon"], row["val_kl"]) for row in trials[:6]] == [
        (f"{r:g}", f"{k:g}") for _, (r, k) in TRIALS]
    assert trials[6]["val_recon"] == "" and trials[2]["final run"] == "final-2" and trials[0]["final run"] == ""
    assert trials[3]["dvc_experiment"] == "exp-rd-3" and trials[3]["run"].startswith("exp-rd-3 ")
    figures = {"study_history_val_recon.png", "study_history_val_kl.png", "study_importances.png",
               "study_pareto_front.png"}
    assert figures <= {path.name for path in out.glob("*.png")}
    # The Pareto front: the six completed trials as points, the four non-dominated ones joined by a line.
    assert Image.open(out / "study_pareto_front.png").text["Description"] == "points=10"
    page = (out / "compare.html").read_text()
    assert "<script" not in page and "<link" not in page
    sources = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,', page)
    assert figures <= set(sources)
    assert "Study rd: trials" in page and page.count("<table>") == 3
    assert "study rd: 7 trial(s) (6 COMPLETE, 1 PRUNED), minimize val_recon, minimize val_kl" in capsys.readouterr().out


def test_the_pareto_points_are_exactly_the_non_dominated_trials_on_the_rate_distortion_plane(store, tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = make_rd_study(store, storage)
    points = {n: (kl, recon) for n, (_, (recon, kl)) in enumerate(TRIALS)}  # x = rate, y = distortion
    figure = study_figures.pareto_front(study, ("rate: val_kl (nats)", "distortion: val_recon (nats)"), points)
    axes = figure.axes[0]
    drawn = {collection.get_label(): {tuple(p) for p in collection.get_offsets()} for collection in axes.collections}
    best = non_dominated({n: (recon, kl) for n, (_, (recon, kl)) in enumerate(TRIALS)})
    assert best == {0, 1, 2, 5}
    assert drawn["Best Trial"] == {points[n] for n in best}
    assert drawn["Trial"] == {points[n] for n in set(points) - best}
    assert axes.get_xlabel().startswith("rate: val_kl") and axes.get_ylabel().startswith("distortion: val_recon")
    [line] = axes.get_lines()  # the front, joined in order of rate
    assert list(zip(line.get_xdata(), line.get_ydata(), strict=True)) == sorted(points[n] for n in best)


def test_a_single_objective_study_blanks_params_its_arch_does_not_read(store, tmp_path):
    """metric names set by the study; model.hidden sampled for every trial but read only by mlp."""
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="loss", storage=storage, direction="minimize")
    study.set_metric_names(["val_loss"])
    space = {"model.arch": CategoricalDistribution(["tutorial", "mlp"]),
             "model.hidden": CategoricalDistribution(["[256]", "[512]"]), **SPACE}
    for number, (arch, hidden, loss) in enumerate([("tutorial", "[256]", 170.0), ("mlp", "[512]", 150.0),
                                                   ("tutorial", "[512]", 165.0), ("mlp", "[256]", 155.0)]):
        study.enqueue_trial({"model.arch": arch, "model.hidden": hidden, "model.latent_dim": 2 + number,
                             "train.beta": 1.0})
        trial = study.ask(space)
        run_id = add_trial_run(store, "loss", trial.number, trial.params, loss - 10, 10.0)
        trial.set_user_attr("mlflow_run_id", run_id)
        trial.set_user_attr("dvc_experiment", f"exp-loss-{trial.number}")
        study.tell(trial, loss)
    out = tmp_path / "reports"
    assert main(["--study", "loss", "--storage", storage, "--out", str(out)]) == 0
    with (out / "study_trials.csv").open() as handle:
        trials = list(csv.DictReader(handle))
    assert [row["model.hidden"] for row in trials] == ["", "[512]", "", "[256]"]
    assert [row["val_loss"] for row in trials] == ["170", "150", "165", "155"]
    pngs = {path.name for path in out.glob("study_*.png")}
    assert pngs == {"study_history_val_loss.png", "study_importances.png"}  # no Pareto front of one objective
    with (out / "compare_train_only.csv").open() as handle:
        apart = {row["trial"]: row for row in csv.DictReader(handle)}
    assert apart["0"]["model.hidden"] == "" and apart["1"]["model.hidden"] == "[512]"
    assert not read_csv(out)  # no final run: the ranked table is empty
    assert "No run of this selection has test metrics." in (out / "compare.html").read_text()


def study_header(out) -> list[str]:
    with (out / "study_trials.csv").open() as handle:
        return next(csv.reader(handle))


def test_a_best_val_loss_study_is_labelled_best_val_loss_when_every_last_epoch_is_the_best(store, tmp_path):
    """Issue 27: the driver set no metric names and compare named the objective by the run metric its values
    equal, so with every trial's last epoch its best (val_loss = best_val_loss) it said val_loss."""
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    search = parse_search({"study": "best", "space": {"model.latent_dim": {"int": [2, 16]}},
                           "objective": {"best_val_loss": "minimize"}, "trials": 3, "pruner": "none"},
                          tmp_path / "search.yaml")
    study = open_study(search, storage)  # what `make tune` creates
    for curve in ([180.0, 170.0], [175.0, 160.0], [190.0, 165.0]):  # each run's last epoch is its best
        trial = study.ask(SPACE)
        run_id = add_trial_run(store, "best", trial.number, trial.params, curve[-1] - 10, 10.0)
        store.client.log_metric(run_id, "best_val_loss", curve[-1])
        for step, value in enumerate(curve, start=1):
            store.client.log_metric(run_id, "val_loss", value, step=step)
        trial.set_user_attr("mlflow_run_id", run_id)
        study.tell(trial, curve[-1])
    out = tmp_path / "reports"
    assert main(["--study", "best", "--storage", storage, "--out", str(out)]) == 0
    assert study_header(out)[:3] == ["trial", "state", "best_val_loss"]
    assert (out / "study_history_best_val_loss.png").exists()
    text = status("best", storage)
    assert "objective best_val_loss (minimize)" in text and " val_loss " not in text
    assert status("best", storage, as_json=True).count('"best_val_loss"') == 1
    assert open_study(search, storage).metric_names == ["best_val_loss"]  # reopened: the same names


def test_a_study_from_before_metric_names_is_labelled_from_its_user_attribute(store, tmp_path):
    """Older `make tune` recorded the objective only as a user attribute; a study with neither is
    labelled "objective 0", not guessed from values that match a run metric."""
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    for name, attr in (("old", ["val_kl"]), ("bare", None)):
        study = optuna.create_study(study_name=name, storage=storage, direction="minimize")
        if attr:
            study.set_user_attr(OBJECTIVE_ATTR, attr)
        trial = study.ask(SPACE)
        trial.set_user_attr("mlflow_run_id", add_trial_run(store, name, trial.number, trial.params, 120.0, 7.0))
        study.tell(trial, 7.0)  # equals the run's val_kl
    out = tmp_path / "reports"
    assert main(["--study", "old", "--storage", storage, "--out", str(out)]) == 0
    assert study_header(out)[:3] == ["trial", "state", "val_kl"]
    assert "objective val_kl (minimize)" in status("old", storage)
    assert main(["--study", "bare", "--storage", storage, "--out", str(out)]) == 0
    assert study_header(out)[:3] == ["trial", "state", "objective 0"]
    assert "objective value0 (minimize)" in status("bare", storage)


def test_the_default_journal_and_an_unknown_study_are_one_clear_line(store, tmp_path, monkeypatch, capsys):
    """Without --storage, the study is looked up where `make tune` keeps it: .optuna/journal.log at the root."""
    repo = tmp_path / "repo"
    (repo / ".optuna").mkdir(parents=True)
    (repo / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.chdir(repo)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    out = tmp_path / "reports"
    assert main(["--study", "rd", "--out", str(out)]) != 0  # no journal yet
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'rd'" in err and not out.exists()

    journal = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
        str(repo / ".optuna" / "journal.log")))
    make_rd_study(store, journal)
    assert main(["--study", "nope", "--out", str(out)]) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'nope'" in err and "Traceback" not in err and not out.exists()
    assert main(["--study", "rd", "--out", str(out)]) == 0  # the default journal, as `make tune` writes it
    assert (out / "study_pareto_front.png").exists()


def test_storage_without_a_study_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--storage", "sqlite:///x.db"])
    assert exit_info.value.code != 0 and "give --study NAME too" in capsys.readouterr().err


