"""The study's loop: ask Optuna for a trial, run it as a DVC experiment up to train, tell the study what
the experiment's train stage wrote (val_metrics.json); `jobs` trials at once, until the study holds
`trials` trials that ended COMPLETE or PRUNED. Then the chosen trials run in full (evaluate and plot):
the only time the search reads the test split.

What counts: COMPLETE and PRUNED trials. A trial whose stage failed is told FAIL (user attribute `error`,
the stage's first error line) and the study goes on; after as many failures as `trials` it gives up. A
trial stopped by Ctrl-C is told FAIL with `interrupted` = true, so `make tune` again continues up to
`trials` counted trials, each trial number run once. The count is the study's (in its storage), so
several processes on one storage share it: before asking, a worker waits while finished + running
trials already reach `trials`, and a trial asked in the same instant as another's beyond the count is
told FAIL (`surplus`) without running.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
import warnings
from typing import Any

import optuna
from optuna.trial import TrialState

from vaepipe import metrics as registry
from vaepipe.errors import ConfigError, SearchFailed
from vaepipe.experiments import RUN_ID_PATH
from vaepipe.tune.pruners import PRUNER_ATTR, make_pruner, running_trial
from vaepipe.tune.search import Search, params_values, suggest, trial_overrides
from vaepipe.tune.storage import objective_names, open_storage, redact, resolve_storage, storage_label
from vaepipe.tune.trials import (
    Experiment,
    experiment_ref,
    final_experiment,
    group_members,
    parse_json,
    read_experiment,
    trial_experiment,
    trial_outcome,
)

COUNTED = (TrialState.COMPLETE, TrialState.PRUNED)
FINAL_ATTR = "vaepipe.final"  # study user attribute: {trial number: its final run's experiment, run id, test metrics}
TEST_SUMMARY = registry.names(registry.TEST)  # a final run's test metrics, as its metrics.json has them
optuna.logging.set_verbosity(optuna.logging.WARNING)  # the driver says what happens, one line a trial


def say(message: str) -> None:
    print(f"tune: {message}", flush=True)


def make_sampler(search: Search, trials_so_far: int = 0) -> optuna.samplers.BaseSampler:
    """The search's sampler. A seeded one continuing a study starts its stream at seed + the trials the study
    already holds: reseeded as at the start, it would propose again the configurations those trials ran."""
    seed = None if search.seed is None else search.seed + trials_so_far
    if search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if search.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    # constant_liar: trials running at once (jobs > 1, several processes) are not all sent to one point
    return optuna.samplers.TPESampler(seed=seed, constant_liar=True, multivariate=True)


def open_study(search: Search, storage: str) -> optuna.Study:
    """The search's study, created on first use; the same directions are required of an existing one."""
    directions = search.directions
    for attempt in range(5):
        try:
            study = optuna.create_study(study_name=search.study, storage=open_storage(storage),
                                        sampler=make_sampler(search),
                                        pruner=make_pruner(search.pruner, search.pruner_startup, _epochs(search)),
                                        directions=directions, load_if_exists=True)
            break
        except Exception as error:  # noqa: BLE001  (two processes creating one new database's tables at once)
            if attempt == 4 or isinstance(error, (ConfigError, ValueError)):
                raise ConfigError(f"cannot open study {search.study!r} in {storage_label(storage)}: "
                                  f"{type(error).__name__}: {redact((str(error).splitlines() or [''])[0], storage)}") from None
            time.sleep(1.0 + attempt)
    if search.seed is not None and study.trials:  # a continued study: a sampler that has not proposed these
        study = optuna.load_study(study_name=search.study, storage=open_storage(storage),
                                  sampler=make_sampler(search, len(study.trials)), pruner=study.pruner)
    have = [direction.name.lower() for direction in study.directions]
    if have != directions:
        raise ConfigError(f"{search.path.name}: objective {search.objective}: study {search.study!r} in "
                          f"{storage_label(storage)} was created with directions {have}; name a new study")
    metrics = objective_names(study)
    if metrics is not None and metrics != search.metrics:
        raise ConfigError(f"{search.path.name}: objective {search.metrics}: study {search.study!r} optimises "
                          f"{metrics}; name a new study")
    if study.metric_names != search.metrics:  # a new study, or one from before the driver set them
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # experimental since 3.2
            study.set_metric_names(search.metrics)
    study.set_user_attr(PRUNER_ATTR, {"kind": search.pruner, "startup": search.pruner_startup,
                                      "epochs": _epochs(search)})
    return study


def _epochs(search: Search) -> int:
    from vaepipe.config import parse_partial

    return parse_partial(search.base(), source=search.path.name).train.epochs


def fail_abandoned(study: optuna.Study, storage: str) -> None:
    """RUNNING trials that a `make tune` on this machine left behind when it was killed outright (SIGKILL,
    a power cut), once every process of theirs is gone: told FAIL (`abandoned`), they do not block the count
    and a new trial takes their place. A trial whose processes still run (its driver just died: its
    watchdog, tune/dvc_one.py, is stopping it) is left RUNNING and checked again on the next look, so it is
    never told FAIL while it trains, nor waited on once it is gone."""
    host = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        attrs = trial.user_attrs
        pid, group = attrs.get("driver_pid"), attrs.get("trial_pgid")
        if isinstance(group, int) and group_members(group):
            continue
        if attrs.get("driver_host") == host and isinstance(pid, int) and not _alive(pid):
            running_trial(study, storage, trial.number).set_user_attr("abandoned", True)
            study.tell(trial.number, state=TrialState.FAIL)
            say(f"trial {trial.number} was left RUNNING by a `make tune` that is gone (pid {pid}): told FAIL")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Driver:
    """Runs the study's trials `jobs` at a time; Ctrl-C (SIGINT or SIGTERM) stops every running trial,
    records each as interrupted, and returns."""

    def __init__(self, search: Search, storage: str, study: optuna.Study):
        self.search, self.storage, self.study = search, storage, study
        self.stopping = threading.Event()
        self.lock = threading.Lock()  # one ask (and its count check) at a time in this process
        self.trial_ended = threading.Event()  # wakes workers that wait for the running trials (or Ctrl-C)
        self.running: dict[int, Experiment] = {}
        self.gave_up: str | None = None

    def counts(self) -> dict[str, int]:
        trials = self.study.get_trials(deepcopy=False)
        failed = [t for t in trials if t.state == TrialState.FAIL
                  and not any(t.user_attrs.get(key) for key in ("interrupted", "surplus", "abandoned"))]
        return {"done": sum(t.state in COUNTED for t in trials),
                "running": sum(t.state == TrialState.RUNNING for t in trials), "failed": len(failed)}

    def run(self) -> None:
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            workers = [threading.Thread(target=self._worker, name=f"tune-job-{job}", daemon=True)
                       for job in range(self.search.jobs)]
            for worker in workers:
                worker.start()
                time.sleep(0.1)
            while any(worker.is_alive() for worker in workers):
                for worker in workers:
                    worker.join(timeout=0.5)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum: int, _frame) -> None:
        if not self.stopping.is_set():
            say(f"{signal.Signals(signum).name}: stopping the {len(self.running)} running trial(s); "
                "`make tune` again continues the study")
        self.stopping.set()
        self.trial_ended.set()
        for experiment in list(self.running.values()):
            experiment.stop()

    def _worker(self) -> None:
        while not self.stopping.is_set():
            asked = self._ask()
            if asked is None:
                return
            if asked == "wait":  # until a trial of this process ends; another process's: look again in 2 s
                self.trial_ended.wait(timeout=2.0)
                continue
            self._run_trial(*asked)

    def _ask(self) -> tuple[optuna.trial.Trial, dict[str, Any]] | str | None:
        with self.lock:
            if self.stopping.is_set():
                return None
            self.trial_ended.clear()  # a trial that ends from here on wakes a worker told to wait
            counts = self.counts()
            if counts["done"] >= self.search.trials:
                return None
            if counts["failed"] >= self.search.trials:
                self.gave_up = f"{counts['failed']} trials failed (as many as `trials`); see their errors in " \
                               "`python -m vaepipe.tune status`"
                self.stopping.set()
                return None
            if counts["done"] + counts["running"] >= self.search.trials:
                fail_abandoned(self.study, self.storage)  # a trial whose processes died meanwhile is replaced, not waited on
                return "wait"  # the running trials (maybe another process's) may still fail
            trial = self.study.ask()
            values = suggest(trial, self.search)
            name = trial_experiment(self.search.study, trial.number)
            for key, value in {"dvc_experiment": name, "driver_host": socket.gethostname(),
                               "driver_pid": os.getpid()}.items():
                trial.set_user_attr(key, value)
            live = sorted(t.number for t in self.study.get_trials(deepcopy=False)
                          if t.state in (*COUNTED, TrialState.RUNNING))
            if live.index(trial.number) >= self.search.trials:  # another process asked in the same instant
                trial.set_user_attr("surplus", True)
                self.study.tell(trial, state=TrialState.FAIL)
                return "wait"
            return trial, values

    def _run_trial(self, trial: optuna.trial.Trial, values: dict[str, Any]) -> None:
        name = trial.user_attrs["dvc_experiment"]
        experiment = Experiment(name, trial_overrides(self.search, values, trial.number), target="train",
                                storage=self.storage)
        shown = " ".join(f"{key}={value}" for key, value in values.items())
        say(f"trial {trial.number} starts: {shown} (DVC experiment {name})")
        self.running[trial.number] = experiment
        try:
            if self.stopping.is_set():
                experiment.interrupted = True
            else:
                experiment.start()
                if experiment.process is not None:  # its process group: alive = the trial is still running
                    trial.set_user_attr("trial_pgid", experiment.process.pid)
                if self.stopping.is_set():
                    experiment.stop()
                experiment.wait()
        except BaseException:
            experiment.kill()
            raise
        finally:
            self.running.pop(trial.number, None)
            try:
                self._tell(trial, experiment)
            finally:
                self.trial_ended.set()

    def _tell(self, trial: optuna.trial.Trial, experiment: Experiment) -> None:
        code = experiment.process.returncode if experiment.process else None
        ref = experiment_ref(experiment.name, experiment.baseline) if code == 0 else None
        summary, run_id = trial_outcome(ref) if ref else (None, None)
        if run_id:
            trial.set_user_attr("mlflow_run_id", run_id)
        elapsed = time.monotonic() - experiment.started
        if experiment.interrupted and summary is None:
            trial.set_user_attr("interrupted", True)
            self.study.tell(trial, state=TrialState.FAIL)
            say(f"trial {trial.number} interrupted after {elapsed:.0f} s: told FAIL (interrupted)")
            return
        if summary is None:
            error = experiment.error_line() if code != 0 else "DVC committed no experiment (no val_metrics.json)"
            trial.set_user_attr("error", error[:500])
            self.study.tell(trial, state=TrialState.FAIL)
            say(f"trial {trial.number} FAILED after {elapsed:.0f} s: {error}")
            return
        if summary.get("pruned"):
            self.study.tell(trial, state=TrialState.PRUNED)
            say(f"trial {trial.number} PRUNED after epoch {summary.get('epochs')} ({elapsed:.0f} s)")
            return
        missing = [metric for metric in self.search.metrics if summary.get(metric) is None]
        if missing:
            trial.set_user_attr("error", f"val_metrics.json lacks {', '.join(missing)}")
            self.study.tell(trial, state=TrialState.FAIL)
            say(f"trial {trial.number} FAILED: val_metrics.json lacks {', '.join(missing)}")
            return
        values = [float(summary[metric]) for metric in self.search.metrics]
        self.study.tell(trial, values)
        shown = ", ".join(f"{metric} {value:.4f}" for metric, value in zip(self.search.metrics, values, strict=True))
        say(f"trial {trial.number} COMPLETE in {elapsed:.0f} s: {shown}")


def chosen_trials(study: optuna.Study, search: Search) -> list[optuna.trial.FrozenTrial]:
    """The trials run in full at the end: the best `final` (single objective), or at most `final` of the
    Pareto front's, ordered by the first objective."""
    if search.final == 0:
        return []
    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not completed:
        return []
    if len(search.metrics) == 1:
        reverse = search.directions[0] == "maximize"
        return sorted(completed, key=lambda t: t.value, reverse=reverse)[:search.final]
    front = study.best_trials
    reverse = search.directions[0] == "maximize"
    return sorted(front, key=lambda t: (t.values[0], t.number), reverse=reverse)[:search.final]


def run_finals(study: optuna.Study, search: Search, storage: str, driver: Driver | None = None) -> list[dict[str, Any]]:
    """Run each chosen trial as a full experiment (evaluate and plot: the test split read for them only),
    once: an existing final experiment is read back, not run again."""
    finals = []
    recorded = dict(study.user_attrs.get(FINAL_ATTR) or {})
    for trial in chosen_trials(study, search):
        name = final_experiment(search.study, trial.number)
        ref = experiment_ref(name)
        if ref is None:
            values = params_values(search, trial.params)
            say(f"final run of trial {trial.number}: DVC experiment {name} (prepare, train, evaluate, plot)")
            experiment = Experiment(name, trial_overrides(search, values, trial.number, final=True), target=None,
                                    storage=storage)
            if driver is not None:
                driver.running[-1 - trial.number] = experiment
            try:
                experiment.start()
                code = experiment.wait()
            finally:
                if driver is not None:
                    driver.running.pop(-1 - trial.number, None)
            if experiment.interrupted or (driver is not None and driver.stopping.is_set()):
                say(f"final run of trial {trial.number} interrupted; `make tune FINAL=1` runs it again")
                break
            ref = experiment_ref(name, experiment.baseline) if code == 0 else None
            if ref is None:
                raise SearchFailed(f"the final run of trial {trial.number} ({name}) failed: {experiment.error_line()}")
        files = read_experiment(ref, "metrics.json", "val_metrics.json", RUN_ID_PATH)
        metrics = parse_json(files["metrics.json"]) or {}
        val = parse_json(files["val_metrics.json"]) or {}
        entry = {"trial": trial.number, "dvc_experiment": name,
                 "mlflow_run_id": (files[RUN_ID_PATH] or "").strip() or None,
                 "values": dict(zip(search.metrics, trial.values, strict=True)),
                 "final_validation": {metric: val.get(metric) for metric in search.metrics},
                 "test": {key: metrics.get(key) for key in TEST_SUMMARY if key in metrics},
                 "params": params_values(search, trial.params)}
        recorded[str(trial.number)] = {key: entry[key] for key in ("dvc_experiment", "mlflow_run_id", "test")}
        finals.append(entry)
    study.set_user_attr(FINAL_ATTR, recorded)
    return finals


def print_summary(study: optuna.Study, search: Search, finals: list[dict[str, Any]]) -> None:
    trials = study.get_trials(deepcopy=False)
    states = {state: sum(t.state == state for t in trials) for state in TrialState}
    say(f"study {search.study}: {len(trials)} trials ({', '.join(f'{n} {s.name}' for s, n in states.items() if n)})")
    if not finals:
        say("no final run (no COMPLETE trial, or final: 0)")
    for entry in finals:
        values = ", ".join(f"{metric} {value:.4f}" for metric, value in entry["values"].items())
        params = " ".join(f"{key}={value}" for key, value in entry["params"].items())
        test = ", ".join(f"{key} {value:.4f}" if isinstance(value, float) else f"{key} {value}"
                         for key, value in entry["test"].items())
        label = "best trial" if len(search.metrics) == 1 and entry is finals[0] else "chosen trial"
        say(f"{label} {entry['trial']} ({trial_experiment(search.study, entry['trial'])}): {values}; params {params}")
        say(f"  its final run {entry['dvc_experiment']} (MLflow run {entry['mlflow_run_id']}): {test or 'no test metrics'}")


def tune(search: Search, storage: str | None = None, final_only: bool = False) -> int:
    """`make tune`: run the study up to its trial count, then the chosen trials in full; 0 when done, 130
    after Ctrl-C (the study continues next time)."""
    storage = resolve_storage(storage)
    say(f"storage {storage_label(storage)}, study {search.study}")
    study = open_study(search, storage)
    fail_abandoned(study, storage)
    driver = Driver(search, storage, study)
    if not final_only:
        counts = driver.counts()
        say(f"{counts['done']} of {search.trials} trials counted (COMPLETE or PRUNED); {search.jobs} at a time, "
            f"sampler {search.sampler}, pruner {search.pruner}")
        driver.run()
        if driver.stopping.is_set() and driver.gave_up is None:
            return 130
        if driver.gave_up:
            raise SearchFailed(f"study {search.study}: gave up: {driver.gave_up}")
    elif driver.counts()["done"] < search.trials:
        say(f"FINAL=1: the study has {driver.counts()['done']} of {search.trials} trials; running the chosen ones of those")
    previous = {sig: signal.signal(sig, driver._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        finals = run_finals(study, search, storage, driver)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print_summary(study, search, finals)
    return 130 if driver.stopping.is_set() else 0


