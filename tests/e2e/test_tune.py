"""`make tune` end to end, in a copy of one small reproduced repository (the session's `quick` one) whose
baseline results (metrics.json with test numbers) are committed, as the project's are: trials as DVC
experiments up to train, told their val_metrics.json, MLflow runs tagged; no trial has test metrics; the
final run of the best trial has them; Ctrl-C and a rerun; two processes on one storage; pruning; two
objectives, whose study `make compare STUDY=` draws with its Pareto front in a page checked offline in
Chromium; and a preset run as an experiment whose params are the preset's. Each study has the fewest
trials that show its property."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import optuna
import pytest
import yaml
from PIL import Image
from pipeline_repo import PROJECT, QUICK_PARAMS, VENV_BIN, copy_repo, make_repo, stage_env, tiny_dvc_repo, wait_for
from test_browser import offline_page

from vaepipe.experiments import experiment_run_id

pytestmark = pytest.mark.e2e

TEST_METRICS = ("test_loss", "test_recon", "test_kl", "test_nll_iw", "knn_accuracy")


@pytest.fixture(scope="module")
def tune_repo(quick, tmp_path_factory) -> Path:
    """A reproduced small repo (all four stages: a copy of the session's `quick` repo, 192 training and 64
    validation images, no XLA, as a new latent size would recompile) with its results committed, presets/ included."""
    repo = copy_repo(quick, tmp_path_factory.mktemp("tune-base") / "repo")
    shutil.copytree(PROJECT / "presets", repo / "presets")
    env = stage_env()
    subprocess.run(["git", "add", "-A"], cwd=repo, env=env, check=True, capture_output=True)
    subprocess.run(["git", "commit", "-qm", "baseline results"], cwd=repo, env=env, check=True, capture_output=True)
    assert "test_loss" in json.loads((repo / "metrics.json").read_text())
    return repo


def write_search(repo: Path, name: str = "search.yaml", **fields) -> Path:
    search = {"study": "s", "fixed": {"train.epochs": 2},
              "space": {"model.latent_dim": {"int": [2, 8]},
                        "train.learning_rate": {"float": [1.0e-4, 1.0e-2], "log": True}},
              "objective": {"val_loss": "minimize"}, "trials": 2, "jobs": 1, "pruner": "none", "final": 0,
              "seed": 0, **fields}
    path = repo / name
    path.write_text(yaml.safe_dump(search, sort_keys=False))
    return path


def tune_command(search: Path, *extra: str) -> list[str]:
    return [str(VENV_BIN / "python"), "-m", "vaepipe.tune", "--search", str(search), *extra]


def run_tune(repo: Path, search: Path, *extra: str, timeout: float = 1500, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(tune_command(search, *extra), cwd=repo, env=stage_env(PYTHONPATH="src", **env),
                          capture_output=True, text=True, timeout=timeout)


def journal(repo: Path) -> optuna.storages.JournalStorage:
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(str(repo / ".optuna" / "journal.log")))


def experiments(repo: Path) -> dict[str, dict]:
    """{experiment name: {"params": params.yaml, "metrics": metrics.json, "val": val_metrics.json}}, as
    `dvc exp show --json` reports them."""
    shown = json.loads(subprocess.run(["dvc", "exp", "show", "--json"], cwd=repo, env=stage_env(),
                                      capture_output=True, text=True, check=True).stdout)
    found: dict[str, dict] = {}

    def walk(node) -> None:
        if isinstance(node, dict):
            data = node.get("data") or {}
            if node.get("name") and "params" in data:
                metrics = data.get("metrics") or {}
                found[node["name"]] = {"params": (data["params"].get("params.yaml") or {}).get("data", {}),
                                       "metrics": (metrics.get("metrics.json") or {}).get("data", {}),
                                       "val": (metrics.get("val_metrics.json") or {}).get("data", {})}
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(shown)
    return found


def mlflow_table(repo: Path) -> dict[str, dict]:
    """{run id: {"status", "tags", "metrics"}} from the repo's SQLite MLflow store."""
    runs: dict[str, dict] = {}
    with sqlite3.connect(repo / "mlflow.db") as conn:
        for run_id, status in conn.execute("SELECT run_uuid, status FROM runs WHERE lifecycle_stage = 'active'"):
            runs[run_id] = {"status": status, "tags": {}, "metrics": set()}
        for run_id, key, value in conn.execute("SELECT run_uuid, key, value FROM tags"):
            if run_id in runs:
                runs[run_id]["tags"][key] = value
        for run_id, key in conn.execute("SELECT DISTINCT run_uuid, key FROM metrics"):
            if run_id in runs:
                runs[run_id]["metrics"].add(key)
    return runs


def counted(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.get_trials() if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]


def test_ctrl_c_in_the_second_trial_then_tune_again_finishes_the_count(tune_repo, tmp_path):
    """A study of two trials: Ctrl-C while the second trains (one finished before it), then `make tune` again."""
    repo = copy_repo(tune_repo, tmp_path / "repo")
    search = write_search(repo, study="stop", trials=2, jobs=1)
    env = stage_env(PYTHONPATH="src")
    out = (tmp_path / "first.log").open("w")
    first = subprocess.Popen(tune_command(search), cwd=repo, env=env, stdout=out, stderr=subprocess.STDOUT,
                             start_new_session=True)
    try:
        def second_trial_training() -> bool:  # its train stage has opened its MLflow run
            assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            return any(run["tags"].get("vaepipe.trial") == "1" and run["status"] == "RUNNING"
                       for run in mlflow_table(repo).values())

        wait_for(second_trial_training, timeout=900, interval=0.5, what="trial 1's train stage")
        os.killpg(first.pid, signal.SIGINT)  # as Ctrl-C in a terminal
        assert first.wait(timeout=180) == 130, (tmp_path / "first.log").read_text()[-3000:]
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
        out.close()
    log = (tmp_path / "first.log").read_text()
    assert "trial 1 interrupted" in log, log[-3000:]
    study = optuna.load_study(study_name="stop", storage=journal(repo))
    assert [(t.number, t.state.name, t.user_attrs.get("interrupted")) for t in study.get_trials()] == [
        (0, "COMPLETE", None), (1, "FAIL", True)]
    assert not [run for run in mlflow_table(repo).values() if run["status"] == "RUNNING"]
    assert "stop-t1" not in experiments(repo)  # nothing committed for the killed trial

    again = run_tune(repo, search)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    study = optuna.load_study(study_name="stop", storage=journal(repo))
    assert len(counted(study)) == 2 and [t.number for t in counted(study)] == [0, 2]
    runs = mlflow_table(repo)
    assert not [run for run in runs.values() if run["status"] == "RUNNING"]
    trial_runs = [run["tags"]["vaepipe.trial"] for run in runs.values() if run["tags"].get("vaepipe.study") == "stop"]
    assert sorted(trial_runs) == ["0", "1", "2"]  # each trial ran once (trial 1's run is KILLED)
    assert sorted(name for name in experiments(repo) if name.startswith("stop-")) == ["stop-t0", "stop-t2"]


def test_one_trials_dvc_process_runs_its_own_experiment_only(tmp_path):
    """DVC's `exp run --temp` goes on taking stash entries after its own; an entry another trial's launch has
    just stashed would then run twice (two train stages, two MLflow runs for one trial). Launched through
    vaepipe.tune.dvc_one, it runs its own entry and leaves the other one in the stash."""
    from dvc.repo import Repo

    env = stage_env(PYTHONPATH=str(PROJECT / "src"))
    repo = tiny_dvc_repo(tmp_path / "repo", env, {
        "params.yaml": "x: 1\n", ".gitignore": "/out.yaml\n",
        "dvc.yaml": "stages:\n  copy:\n    cmd: cp params.yaml out.yaml\n    params: [x]\n    outs: [out.yaml]\n"})

    def run(*command: str) -> subprocess.CompletedProcess:
        return subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True, check=True)

    run(str(VENV_BIN / "python"), "-c",  # another launch's entry, stashed but not yet taken
        "from dvc.repo import Repo; repo = Repo('.'); "
        "repo.experiments.queue_one(repo.experiments.tempdir_queue, name='other', params={'params.yaml': ['x=3']})")
    run(str(VENV_BIN / "python"), "-m", "vaepipe.tune.dvc_one", "exp", "run", "--temp", "-n", "mine", "-S", "x=2")
    names = {ref.rsplit("/", 1)[-1] for ref in run("git", "for-each-ref", "--format=%(refname)", "refs/exps").stdout.split()
             if ref.count("/") == 4}
    assert names == {"mine"}
    with Repo(str(repo)) as dvc_repo:
        assert [entry.name for entry in dvc_repo.experiments.tempdir_queue.stash.stash_revs.values()] == ["other"]


def test_two_processes_on_one_storage_share_the_count(tune_repo, tmp_path):
    repo = copy_repo(tune_repo, tmp_path / "repo")
    storage = f"sqlite:///{tmp_path / 'studies.db'}"  # an Optuna storage URL, as STORAGE= passes it
    search = write_search(repo, study="shared", trials=3, jobs=1, seed=None)
    env = stage_env(PYTHONPATH="src", VAEPIPE_TUNE_STORAGE=storage)
    logs = [(tmp_path / f"p{index}.log").open("w") for index in range(2)]
    processes = [subprocess.Popen(tune_command(search), cwd=repo, env=env, stdout=log, stderr=subprocess.STDOUT)
                 for log in logs]
    try:
        codes = [process.wait(timeout=1500) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
        for log in logs:
            log.close()
    outputs = [(tmp_path / f"p{index}.log").read_text() for index in range(2)]
    assert codes == [0, 0], outputs
    assert all(output.startswith(f"tune: storage {storage}, study shared") for output in outputs)
    study = optuna.load_study(study_name="shared", storage=storage)
    done = counted(study)
    assert len(done) == 3
    ran = [t for t in study.get_trials() if not t.user_attrs.get("surplus")]
    assert len(ran) == 3  # every trial that ran is counted: none twice, none beyond the count
    both = [sum(f"trial {t.number} starts" in output for output in outputs) for t in done]
    assert both == [1, 1, 1]
    assert all("starts" in output for output in outputs)  # both processes ran trials
    trial_runs = sorted(run["tags"]["vaepipe.trial"] for run in mlflow_table(repo).values()
                        if run["tags"].get("vaepipe.study") == "shared")
    assert trial_runs == sorted(str(t.number) for t in done)
    assert sorted(name for name in experiments(repo) if name.startswith("shared-")) == sorted(
        f"shared-t{t.number}" for t in done)


def test_a_clearly_worse_trial_is_pruned_before_its_last_epoch(tune_repo, tmp_path):
    repo = copy_repo(tune_repo, tmp_path / "repo")
    search = write_search(repo, study="prune", trials=2, jobs=1, pruner="median", pruner_startup=1,
                          fixed={"train.epochs": 3}, space={"train.learning_rate": {"float": [1.0e-7, 1.0e-2],
                                                                                    "log": True}})
    (repo / ".optuna").mkdir()
    study = optuna.create_study(study_name="prune", storage=journal(repo), direction="minimize")
    study.enqueue_trial({"train.learning_rate": 5.0e-3})  # learns: the median's first trial
    study.enqueue_trial({"train.learning_rate": 1.0e-7})  # barely moves: clearly worse after epoch 1
    result = run_tune(repo, search)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    study = optuna.load_study(study_name="prune", storage=journal(repo))
    good, bad = study.get_trials()
    assert (good.state.name, bad.state.name) == ("COMPLETE", "PRUNED"), result.stdout
    assert sorted(bad.intermediate_values) == [0]  # reported epoch 1, then stopped
    exp = experiments(repo)["prune-t1"]  # committed: not an error for DVC
    assert exp["val"]["epochs"] == 1 and exp["val"]["pruned"] is True
    run = mlflow_table(repo)[bad.user_attrs["mlflow_run_id"]]
    assert run["status"] == "FINISHED" and run["tags"].get("vaepipe.pruned") == "true"
    assert "vaepipe.pruned" not in mlflow_table(repo)[good.user_attrs["mlflow_run_id"]]["tags"]


def assert_trials_are_experiments_and_runs(repo: Path, study: optuna.Study, shown: dict, runs: dict) -> None:
    """Every counted trial: its DVC experiment `<study>-t<number>` (the trial's params; no test metrics: the
    baseline's metrics.json replaced by the train-only marker; told exactly what its train stage wrote) and
    its FINISHED MLflow run (tagged with study, trial and experiment; no test metric), found from its own
    experiment."""
    name_of_study = study.study_name
    for trial in counted(study):
        name = trial.user_attrs["dvc_experiment"]
        assert name == f"{name_of_study}-t{trial.number}"
        exp = shown[name]
        assert exp["params"]["tune"] == {"study": name_of_study, "trial": trial.number, "final": False}
        for key, value in trial.params.items():
            section, param = key.split(".")
            assert exp["params"][section][param] == pytest.approx(value), key
        assert exp["metrics"] == {"train_only": True}
        assert experiment_run_id(name, repo) == trial.user_attrs["mlflow_run_id"]
        if trial.state == optuna.trial.TrialState.COMPLETE:
            assert trial.values == [exp["val"][metric] for metric in study.metric_names]
        run = runs[trial.user_attrs["mlflow_run_id"]]
        assert run["status"] == "FINISHED"
        assert {key: run["tags"].get(key) for key in ("vaepipe.study", "vaepipe.trial", "vaepipe.dvc_experiment")} == {
            "vaepipe.study": name_of_study, "vaepipe.trial": str(trial.number), "vaepipe.dvc_experiment": name}
        assert not {m for m in run["metrics"] if m.startswith("test_")}, run["metrics"]


def assert_final_run(repo: Path, study: optuna.Study, number: int, shown: dict, runs: dict, output: str) -> None:
    """The final full run of trial `number`: an experiment with test metrics whose training replays the
    trial's (the same validation values), its MLflow run tagged final, both named in the driver's summary."""
    trial = study.trials[number]
    name = f"{study.study_name}-final-t{number}"
    final = shown[name]
    assert all(isinstance(final["metrics"].get(key), float) for key in TEST_METRICS), final["metrics"]
    assert [final["val"][metric] for metric in study.metric_names] == pytest.approx(trial.values, rel=1e-4)
    final_run = runs[experiment_run_id(name, repo)]
    assert {"vaepipe.study": study.study_name, "vaepipe.trial": str(number), "vaepipe.final": "true"}.items() <= \
        final_run["tags"].items()
    assert set(TEST_METRICS) <= final_run["metrics"]
    label = "best trial" if len(study.directions) == 1 else "chosen trial"
    assert f"{label} {number} ({study.study_name}-t{number})" in output, output[-3000:]
    assert f"test_loss {final['metrics']['test_loss']:.4f}" in output


def test_two_objectives_three_trials_two_at_a_time_give_a_pareto_front_run_in_full(tune_repo, tmp_path):
    """Three trials are the fewest that run two at a time and then one more (a launch beside a running trial,
    and one after the first finished); two objectives; then the chosen ones of the Pareto front in full."""
    repo = copy_repo(tune_repo, tmp_path / "repo")
    search = write_search(repo, study="rd", trials=3, jobs=2, objective={"val_recon": "minimize", "val_kl": "minimize"},
                          final=2)
    started = time.monotonic()
    result = run_tune(repo, search)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.splitlines()[0] == f"tune: storage {repo / '.optuna' / 'journal.log'}, study rd"
    study = optuna.load_study(study_name="rd", storage=journal(repo))
    assert len(study.get_trials()) == 3 and len(counted(study)) == 3 and "sampler nsga2, pruner none" in result.stdout
    assert study.metric_names == ["val_recon", "val_kl"]
    shown = experiments(repo)
    runs = mlflow_table(repo)
    assert_trials_are_experiments_and_runs(repo, study, shown, runs)
    front = {t.number for t in study.best_trials}
    finals = {int(name.rsplit("-t", 1)[1]) for name in shown if name.startswith("rd-final-")}
    assert finals and finals <= front and len(finals) == min(2, len(front))
    for number in finals:
        assert_final_run(repo, study, number, shown, runs, result.stdout)

    status = subprocess.run([str(VENV_BIN / "python"), "-m", "vaepipe.tune", "status", "--study", "rd", "--json"],
                            cwd=repo, env=stage_env(PYTHONPATH="src"), capture_output=True, text=True, timeout=120)
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["storage"] == str(repo / ".optuna" / "journal.log")
    assert [(row["number"], row["dvc_experiment"], row["mlflow_run_id"]) for row in report["trials"]] == [
        (t.number, t.user_attrs["dvc_experiment"], t.user_attrs["mlflow_run_id"]) for t in study.get_trials()]
    assert {number: entry["dvc_experiment"] for number, entry in report["finals"].items()} == {
        str(number): f"rd-final-t{number}" for number in finals}
    print(f"three trials, two at a time, and {len(finals)} final runs: {elapsed:.0f} s")

    # `make compare STUDY=rd`: the finals ranked, the trials apart, the study's trials table and figures
    # (the Pareto front on the rate-distortion plane among them), all loaded in a browser with no network.
    out = tmp_path / "reports"
    compare = subprocess.run([str(VENV_BIN / "python"), "-m", "vaepipe.compare", "--study", "rd", "--out", str(out)],
                             cwd=repo, env=stage_env(PYTHONPATH="src"), capture_output=True, text=True, timeout=300)
    assert compare.returncode == 0, compare.stderr[-3000:]
    assert "ExperimentalWarning" not in compare.stderr
    final_runs = {experiment_run_id(f"rd-final-t{number}", repo) for number in finals}
    with (out / "compare.csv").open() as handle:
        assert {row["run_id"] for row in csv.DictReader(handle)} == final_runs
    with (out / "compare_train_only.csv").open() as handle:
        assert sorted(row["trial"] for row in csv.DictReader(handle)) == ["0", "1", "2"]
    with (out / "study_trials.csv").open() as handle:
        trials = list(csv.DictReader(handle))
    # The objectives are named by the train stage's metrics they equal; the final runs are listed.
    assert list(trials[0])[2:4] == ["val_recon", "val_kl"] and len(trials) == 3
    assert all(bool(row["final run"]) == (int(row["trial"]) in finals) for row in trials), trials
    assert all(row["state"] == "COMPLETE" for row in trials)
    # The Pareto front: the three trials as points on the rate-distortion plane, the non-dominated joined.
    joined = len(front) if len(front) >= 2 else 0
    assert Image.open(out / "study_pareto_front.png").text["Description"] == f"points={3 + joined}"
    figures = ["val_loss_curves.png", "study_history_val_recon.png", "study_history_val_kl.png",
               "study_importances.png", "study_pareto_front.png"]
    assert set(figures) <= set(re.findall(r'<img alt="([^"]+)"', (out / "compare.html").read_text()))
    with offline_page(out / "compare.html", tmp_path) as page:
        loaded = page.evaluate("Object.fromEntries([...document.images].map(image => "
                               "[image.alt, image.complete ? image.naturalWidth : 0]))")
        assert set(figures) <= set(loaded) and all(width > 0 for width in loaded.values()), loaded
        tables = page.locator("table")
        assert tables.count() == 3  # ranked (the finals), train-only (the trials), the study's trials
        assert [tables.nth(i).locator("tbody tr").count() for i in range(3)] == [len(finals), 3, 3]


@pytest.mark.parametrize("change, words", [
    ({"objective": {"test_loss": "minimize"}}, ["objective test_loss", "validation metrics only", "val_loss"]),
    ({"space": {"model.latnet_dim": {"int": [2, 8]}}}, ["space model.latnet_dim", "unknown key"]),
    ({"fixed": {"train.epochs": 0}}, ["train.epochs = 0"]),
    ({"trails": 3}, ["trails", "unknown key"]),
])
def test_a_bad_search_file_is_refused_before_any_trial(tmp_path, change, words):
    repo = make_repo(tmp_path / "repo")
    search = write_search(repo, **change)
    result = run_tune(repo, search, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == ""  # not even the storage line: nothing ran
    error = result.stderr.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("error: search.yaml"), result.stderr
    for word in words:
        assert word in error[0], error[0]
    assert not (repo / ".optuna").exists()


def test_a_preset_runs_as_an_experiment_with_the_presets_params(tune_repo, tmp_path):
    repo = copy_repo(tune_repo, tmp_path / "repo")
    result = subprocess.run([str(VENV_BIN / "python"), "-m", "vaepipe.presets", "run", "mlp", "-S", "train.epochs=1"],
                            cwd=repo, env=stage_env(PYTHONPATH="src"), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    names = [name for name in experiments(repo) if name.startswith("mlp-")]
    assert len(names) == 1
    params = experiments(repo)[names[0]]["params"]
    preset = yaml.safe_load((repo / "presets" / "mlp.yaml").read_text())
    for section, values in preset.items():
        for key, value in values.items():
            assert params[section][key] == value, (section, key)
    assert params["train"]["epochs"] == 1 and params["data"]["limit"] == QUICK_PARAMS["data"]["limit"]  # the extra, the base
    assert "test_loss" in experiments(repo)[names[0]]["metrics"]


def test_make_tune_killed_outright_during_a_trial_and_a_final_run_loses_and_repeats_nothing(tune_repo, tmp_path):
    """SIGKILL to `make tune`'s whole process group (what a closed terminal or a killed CI job does), once
    while trials train (two at a time, the median pruner on) and once during the final run; then `make tune`
    again finishes the study exactly, as a run from start to end would have."""
    repo = copy_repo(tune_repo, tmp_path / "repo")
    search = write_search(repo, study="killed", trials=3, jobs=2, pruner="median", final=1)
    env = stage_env(PYTHONPATH="src")
    logs = []

    def kill_when(predicate, what: str) -> None:
        log = tmp_path / f"run{len(logs)}.log"
        logs.append(log)
        with log.open("w") as out:
            driver = subprocess.Popen(tune_command(search), cwd=repo, env=env, stdout=out, stderr=subprocess.STDOUT,
                                      start_new_session=True)
            try:
                wait_for(lambda: driver.poll() is None and predicate(), timeout=900, interval=0.5, what=what)
                os.killpg(driver.pid, signal.SIGKILL)
                driver.wait(timeout=60)
            finally:
                if driver.poll() is None:
                    os.killpg(driver.pid, signal.SIGKILL)
        # The trials' own process groups notice and stop themselves: their runs end KILLED, not RUNNING.
        wait_for(lambda: not [run for run in mlflow_table(repo).values() if run["status"] == "RUNNING"],
                 timeout=120, interval=0.5, what="the orphaned trials to stop and close their runs")

    def training(final: bool) -> bool:
        return any(run["status"] == "RUNNING" and run["tags"].get("vaepipe.study") == "killed"
                   and (run["tags"].get("vaepipe.final") == "true") == final for run in mlflow_table(repo).values())

    kill_when(lambda: training(final=False), "a trial's train stage")
    kill_when(lambda: training(final=True), "the final run's stages")
    again = run_tune(repo, search)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    for text in [again.stdout + again.stderr, *(log.read_text() for log in logs)]:
        assert "Traceback" not in text, text[-3000:]

    study = optuna.load_study(study_name="killed", storage=journal(repo))
    assert len(counted(study)) == 3, [(t.number, t.state.name) for t in study.get_trials()]
    runs = [run for run in mlflow_table(repo).values() if run["tags"].get("vaepipe.study") == "killed"]
    assert not [run for run in runs if run["status"] == "RUNNING"]
    finished = [run for run in runs if run["status"] == "FINISHED" and run["tags"].get("vaepipe.final") != "true"]
    trials = [run["tags"]["vaepipe.trial"] for run in finished]
    assert len(trials) == len(set(trials)) == 3, trials  # no trial with two finished runs
    finals = [run for run in runs if run["status"] == "FINISHED" and run["tags"].get("vaepipe.final") == "true"]
    assert len(finals) == 1, finals  # the test split read once, for the one chosen trial
    shown = experiments(repo)
    assert [name for name in shown if name.startswith("killed-final")] == [f"killed-final-t{study.best_trial.number}"]
    # What a study run start to end gives, the killed trials apart: each counted trial's experiment and run,
    # and the best one's final run, replaying its training, with test metrics.
    runs = mlflow_table(repo)
    assert_trials_are_experiments_and_runs(repo, study, shown, runs)
    assert_final_run(repo, study, study.best_trial.number, shown, runs, again.stdout)
    queue = subprocess.run(["dvc", "queue", "status"], cwd=repo, env=stage_env(), capture_output=True, text=True)
    assert "Running" not in queue.stdout and "Queued" not in queue.stdout, queue.stdout
    leftovers = [path for path in (repo / ".dvc" / "tmp" / "exps").glob("tmp*") if path.is_dir()]
    assert leftovers == [], leftovers
