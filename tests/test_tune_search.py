"""The search file's schema (every key and value checked against the params schema before anything runs) and
the mapping from a trial's values to its experiment's params overrides and `-S` options."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml

from vaepipe import paths
from vaepipe.config import parse_partial
from vaepipe.errors import ConfigError
from vaepipe.presets import set_options
from vaepipe.tune.search import load_search, params_values, parse_search, suggest, trial_overrides
from vaepipe.tune.storage import resolve_storage, storage_label

GOOD = {
    "study": "latent-lr",
    "preset": None,
    "fixed": {"train.epochs": 10},
    "space": {"model.latent_dim": {"int": [2, 16]},
              "train.learning_rate": {"float": [1.0e-4, 1.0e-2], "log": True},
              "model.activation": {"choice": ["relu", "tanh"]}},
    "objective": {"val_loss": "minimize"},
    "trials": 20, "jobs": 2, "sampler": "tpe", "pruner": "median", "final": 1,
}


def parse(**changes):
    return parse_search({**GOOD, **changes}, Path("search.yaml"))


def test_the_issue_example_and_the_root_search_file_parse():
    search = parse()
    assert (search.study, search.trials, search.jobs, search.sampler, search.pruner, search.final) == (
        "latent-lr", 20, 2, "tpe", "median", 1)
    assert [dim.key for dim in search.space] == ["model.latent_dim", "train.learning_rate", "model.activation"]
    assert search.space[1].log and search.space[0].kind == "int"
    root = load_search(paths.SEARCH_FILE)
    assert root.metrics == ["val_loss"]


def test_defaults_tpe_for_one_objective_nsga2_for_two():
    assert parse(sampler=None).sampler == "tpe"
    two = parse(sampler=None, objective={"val_recon": "minimize", "val_kl": "minimize"}, pruner="none")
    assert two.sampler == "nsga2" and two.directions == ["minimize", "minimize"]


BAD = [
    ({"objective": {"test_loss": "minimize"}}, ["objective test_loss", "validation metrics only", "test split"]),
    ({"objective": {"test_nll_iw": "minimize"}}, ["objective test_nll_iw", "validation metrics only"]),
    ({"objective": {"val_los": "minimize"}}, ["objective val_los", "unknown metric", "best_val_loss"]),
    ({"objective": {"val_loss": "smallest"}}, ["objective.val_loss", "smallest", "minimize"]),
    ({"space": {"model.latnet_dim": {"int": [2, 8]}}}, ["space model.latnet_dim", "unknown key"]),
    ({"space": {"modle.latent_dim": {"int": [2, 8]}}}, ["space modle.latent_dim", "modle"]),
    ({"space": {"model.latent_dim": {"int": [0, 8]}}}, ["space model.latent_dim = 0", "greater than or equal to 1"]),
    ({"space": {"model.latent_dim": {"int": [8, 2]}}}, ["space model.latent_dim", "low must be below high"]),
    ({"space": {"model.latent_dim": {"float": [2.0, 8.0]}}}, ["model.latent_dim", "integer"]),
    ({"space": {"train.learning_rate": {"float": ["1e-4", 0.01]}}}, ["train.learning_rate", "without quotes"]),
    ({"space": {"train.learning_rate": {"float": [0.0, 0.01], "log": True}}}, ["log: true", "above 0"]),
    ({"space": {"model.activation": {"choice": ["relu", "swish"]}}}, ["space model.activation = swish", "'relu'"]),
    ({"space": {"model.activation": {"choices": ["relu"]}}}, ["space model.activation", "exactly one of"]),
    ({"space": {"tune.trial": {"int": [1, 2]}}}, ["tune.trial", "make tune"]),
    ({"space": {"latent_dim": {"int": [1, 2]}}}, ["space key 'latent_dim'", "section.key"]),
    ({"space": {}}, ["space", "at least 1"]),
    ({"fixed": {"train.epochs": 0}}, ["train.epochs = 0"]),
    ({"fixed": {"train.epoch": 3}}, ["train.epoch", "unknown key"]),
    ({"fixed": {"data.val_size": 0}}, ["data.val_size = 0", "validation split"]),
    ({"fixed": {"train.distribute": "mirrored"}}, ["train.distribute", "one process"]),
    ({"trials": 0}, ["trials = 0", "greater than or equal to 1"]),
    ({"sampler": "cmaes"}, ["sampler", "cmaes"]),
    ({"pruner": "asha"}, ["pruner", "asha"]),
    ({"preset": "convv"}, ["preset 'convv'", "presets/convv.yaml"]),
    ({"trails": 20}, ["trails", "unknown key"]),
    ({"study": "a b"}, ["study", "a b"]),
    ({"objective": {"val_recon": "minimize", "val_kl": "minimize"}, "pruner": "median"},
     ["pruner = 'median' with 2 objectives", "pruner: none"]),
]


@pytest.mark.parametrize("changes, words", BAD, ids=[words[0] for _, words in BAD])
def test_a_bad_search_file_is_refused_in_one_line_naming_the_key(changes, words):
    with pytest.raises(ConfigError) as caught:
        parse(**changes)
    message = str(caught.value)
    assert message.startswith("search.yaml"), message
    assert len(message.splitlines()) == 1, message
    for word in words:
        assert word in message, f"{word!r} not in {message}"


def test_the_file_itself_must_exist_and_be_yaml(tmp_path):
    with pytest.raises(ConfigError, match="search file not found"):
        load_search(tmp_path / "nope.yaml")
    (tmp_path / "s.yaml").write_text("study: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_search(tmp_path / "s.yaml")


def test_a_preset_is_the_base_of_every_trial():
    search = parse(preset="mlp", fixed={"train.epochs": 3})
    overrides = trial_overrides(search, {"model.latent_dim": 5, "train.learning_rate": 0.002}, 7)
    assert overrides == {"model": {"arch": "mlp", "hidden": [512], "latent_dim": 5},
                         "train": {"batch_size": 128, "beta": 1.0, "epochs": 3, "learning_rate": 0.002},
                         "tune": {"study": "latent-lr", "trial": 7}}
    params = parse_partial(overrides, "trial")  # what the trial's train stage validates
    assert (params.model.arch, params.model.latent_dim, params.tune.trial, params.tune.final) == ("mlp", 5, 7, False)
    final = trial_overrides(search, {"model.latent_dim": 5}, 7, final=True)
    assert final["tune"] == {"study": "latent-lr", "trial": 7, "final": True}


def test_the_trial_values_become_dvc_set_options_that_read_back():
    search = parse()
    options = set_options(trial_overrides(search, {"model.latent_dim": 3, "train.learning_rate": 1.5e-05,
                                                   "model.activation": "tanh"}, 0))
    assert options[::2] == ["-S"] * (len(options) // 2)
    sets = dict(option.split("=", 1) for option in options[1::2])
    assert sets == {"train.epochs": "10", "model.latent_dim": "3", "train.learning_rate": "1.5e-05", "model.activation": "tanh",
                    "tune.study": "latent-lr", "tune.trial": "0"}
    assert yaml.safe_load(sets["train.learning_rate"]) == 1.5e-05
    one = set_options(trial_overrides(search, {"train.learning_rate": 1e-05}, 0))
    assert "train.learning_rate=1.0e-05" in one  # YAML 1.1 would read 1e-05 as text


def test_suggest_stays_in_the_space_and_list_choices_round_trip():
    search = parse(space={"model.latent_dim": {"int": [2, 4]},
                          "train.learning_rate": {"float": [1.0e-4, 1.0e-2], "log": True},
                          "model.hidden": {"choice": [[64], [32, 32]]}})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = set()
    for _ in range(12):
        trial = study.ask()
        values = suggest(trial, search)
        assert 2 <= values["model.latent_dim"] <= 4 and 1e-4 <= values["train.learning_rate"] <= 1e-2
        assert values["model.hidden"] in ([64], [32, 32])
        seen.add(tuple(values["model.hidden"]))
        study.tell(trial, 1.0)
        assert params_values(search, study.trials[-1].params) == values
        parse_partial(trial_overrides(search, values, trial.number), "trial")
    assert seen == {(64,), (32, 32)}


def test_storage_default_is_the_journal_and_passwords_are_never_printed(monkeypatch):
    monkeypatch.delenv("VAEPIPE_TUNE_STORAGE", raising=False)
    assert resolve_storage() == str(paths.main_repo_root() / ".optuna" / "journal.log")
    monkeypatch.setenv("VAEPIPE_TUNE_STORAGE", "postgresql://tuner:s3cret@db.example:5432/studies")
    assert resolve_storage() == "postgresql://tuner:s3cret@db.example:5432/studies"
    assert storage_label(resolve_storage()) == "postgresql://tuner:***@db.example:5432/studies"
    assert resolve_storage("sqlite:///x.db") == "sqlite:///x.db"


def test_a_continued_seeded_study_proposes_no_configuration_it_has_run(tmp_path):
    """Reopened with the same seed, a sampler would replay its stream: the first proposals again."""
    from vaepipe.tune.driver import open_study

    search = parse(seed=7, sampler="random", pruner="none")
    storage = f"sqlite:///{tmp_path / 'study.db'}"

    def run_trials(count: int) -> list[dict]:
        study = open_study(search, storage)
        proposed = []
        for _ in range(count):
            trial = study.ask()
            proposed.append(suggest(trial, search))
            study.tell(trial, 1.0)
        return proposed

    first = run_trials(3)
    continued = run_trials(3)
    assert not [values for values in continued if values in first], (first, continued)


def test_the_objective_check_accepts_exactly_the_registrys_objective_metrics():
    """vaepipe.metrics decides what a search may optimise: each validation metric is accepted; every
    other metric is refused in one line naming it and listing the allowed ones."""
    from vaepipe import metrics

    allowed = metrics.objective_names()
    assert allowed and set(allowed) == {m.name for m in metrics.registry() if m.where == metrics.VALIDATION}
    for metric in metrics.registry():
        changes = {"objective": {metric.name: metric.direction}, "pruner": "median"}
        if metric.objective:
            assert parse(**changes).metrics == [metric.name]
            continue
        with pytest.raises(ConfigError) as caught:
            parse(**changes)
        message = str(caught.value)
        assert len(message.splitlines()) == 1 and f"objective {metric.name} " in message, message
        assert "validation metrics only" in message and ", ".join(allowed) in message, message
        if metric.where == metrics.TEST:
            assert f"{metric.name} is a test metric" in message and "test split" in message, message


def test_a_test_metric_is_refused_as_an_objective_by_name():
    with pytest.raises(ConfigError) as caught:
        parse(objective={"knn_accuracy": "maximize"})
    assert str(caught.value) == (
        "search.yaml: objective knn_accuracy = 'maximize': a search optimises validation metrics only; knn_accuracy "
        "is a test metric (5-nearest-neighbour label accuracy on test latent means) that evaluate measures on the "
        "test split, which the search reads only for the chosen trials at the end. Use one of val_loss, "
        "best_val_loss, val_recon, val_kl")
