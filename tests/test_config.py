"""params.yaml validation: every bad value stops with one line naming the key, the value and what is allowed."""

import pytest

from vaepipe.config import Params, flat_params, parse_params, training_key
from vaepipe.errors import ConfigError

BAD_PARAMS = [
    # (section, key, value, words the message must contain)
    ("model", "latent_dim", 0, ["model.latent_dim", "0", "greater than or equal to 1"]),
    ("model", "latent_dim", -3, ["model.latent_dim", "-3"]),
    ("model", "latent_dim", 2.5, ["model.latent_dim", "2.5", "integer"]),
    ("model", "latent_dim", "8", ["model.latent_dim", "'8'", "integer"]),
    ("model", "latnet_dim", 3, ["model.latnet_dim", "unknown key"]),
    ("model", "arch", "transformer", ["model.arch", "transformer", "'tutorial', 'mlp' or 'conv'"]),
    ("model", "arch", "seed", ["model.arch", "'seed' is now called 'tutorial'", "model.arch: tutorial"]),  # renamed
    ("model", "hidden", [512, 0], ["model.hidden.1", "0"]),
    ("model", "hidden", [], ["model.hidden", "at least 1"]),
    ("train", "epochs", 0, ["train.epochs", "0"]),
    ("train", "batch_size", -1, ["train.batch_size", "-1"]),
    ("train", "learning_rate", 0.0, ["train.learning_rate", "greater than 0"]),
    ("train", "learning_rate", "1e-3", ["train.learning_rate", "1e-3", "without quotes"]),
    ("train", "beta", -0.1, ["train.beta", "-0.1"]),
    ("train", "seed", True, ["train.seed", "True", "integer"]),
    ("train", "jit_compile", "yes", ["train.jit_compile", "yes", "auto, true or false"]),
    ("train", "jit_compile", 1, ["train.jit_compile", "1", "auto, true or false"]),
    ("train", "lr_schedule", "linear", ["train.lr_schedule", "linear", "'constant', 'cosine' or 'iwae'"]),
    ("evaluate", "iw_samples", 0, ["evaluate.iw_samples", "0"]),
    ("data", "dataset", "cifar10", ["data.dataset", "cifar10", "'mnist' or 'fashion_mnist'"]),
    ("data", "limit", 70000, ["data.limit", "70000", "60000"]),
    ("data", "limit", 0, ["data.limit", "0"]),
    ("data", "binarize", "always", ["data.binarize", "always"]),
    ("data", "colour", "red", ["data.colour", "unknown key"]),
]


@pytest.mark.parametrize("section, key, value, words", BAD_PARAMS, ids=lambda v: str(v))
def test_bad_value_is_named_in_one_line(section, key, value, words):
    with pytest.raises(ConfigError) as caught:
        parse_params({section: {key: value}})
    message = str(caught.value)
    assert len(message.splitlines()) == 1, message
    for word in words:
        assert word in message, f"{word!r} missing from: {message}"
    assert ConfigError.exit_code == 2


def test_unknown_section_is_refused():
    with pytest.raises(ConfigError, match="trian"):
        parse_params({"trian": {"epochs": 3}})


def test_several_problems_are_all_reported():
    with pytest.raises(ConfigError) as caught:
        parse_params({"model": {"latent_dim": 0}, "train": {"epochs": -1}})
    assert len(str(caught.value).splitlines()) == 2


def test_defaults_reproduce_the_tutorial():
    params = parse_params({})
    assert (params.model.arch, params.model.latent_dim) == ("tutorial", 2)
    assert (params.train.epochs, params.train.batch_size, params.train.beta) == (30, 32, 0.5)
    assert params.train.learning_rate == 0.001  # Adam's default
    assert params.data.binarize == "none"


def test_repository_params_file_is_valid():
    from vaepipe.config import load_params
    from vaepipe.paths import ROOT

    assert isinstance(load_params(ROOT / "params.yaml"), Params)


def test_flat_params_use_dotted_names():
    flat = flat_params(parse_params({"model": {"latent_dim": 8}}))
    assert flat["model.latent_dim"] == 8 and flat["train.epochs"] == 30


def test_training_key_changes_with_training_params_only():
    base = parse_params({})
    assert training_key(base) != training_key(parse_params({"model": {"latent_dim": 3}}))
    assert training_key(base) == training_key(parse_params({"evaluate": {"iw_samples": 5}}))


# The smallest sizes the stages support (params.yaml's comments): at the bound accepted, one below refused.
@pytest.mark.parametrize("data, ok, words", [
    ({"limit": 5, "val_size": 0}, True, []),
    ({"limit": 4, "val_size": 0}, False, ["data.limit = 4", "greater than or equal to 5"]),
    ({"limit": 6, "val_size": 1}, True, []),
    ({"limit": 6, "val_size": 2}, False, ["data.val_size = 2", "at most 1 of the 6 training images", "k = 5"]),
    ({"val_size": 59995}, True, []),
    ({"val_size": 59996}, False, ["data.val_size = 59996", "at most 59995"]),
])
def test_the_smallest_training_split_is_the_knn_probes_k(data, ok, words):
    if ok:
        parse_params({"data": data})
        return
    with pytest.raises(ConfigError) as error:
        parse_params({"data": data})
    message = str(error.value)
    assert "\n" not in message and all(word in message for word in words), message


@pytest.mark.parametrize("written, value", [("1e-3", 1e-3), ("1e-07", 1e-7), ("1.0e-3", 1e-3), ("0.002", 0.002)])
def test_params_yaml_reads_exponent_floats_as_numbers_as_dvc_does(tmp_path, written, value):
    """YAML 1.2 (ruamel, DVC's `-S` writer): 1e-3 is a number; PyYAML's YAML 1.1 default reads it as text."""
    from vaepipe.config import load_params

    (tmp_path / "params.yaml").write_text(f"train:\n  learning_rate: {written}\n")
    assert load_params(tmp_path / "params.yaml").train.learning_rate == value


@pytest.mark.parametrize("written, value", [("off", "off"), ("yes", "yes"), ("010", 10), ("0.5", 0.5), ("~", None)])
def test_words_and_numbers_read_as_yaml_1_2_as_dvc_reads_them(written, value):
    """PyYAML (YAML 1.1) reads `off`/`yes` as booleans and `010` as eight; DVC (ruamel, YAML 1.2) does not."""
    from vaepipe.config import read_yaml

    assert read_yaml(f"x: {written}\n") == {"x": value}
    assert type(read_yaml(f"x: {written}\n")["x"]) is type(value)


def test_a_word_yaml_1_1_reads_as_a_boolean_is_refused_as_a_word(tmp_path):
    from vaepipe.config import load_params

    (tmp_path / "params.yaml").write_text("train:\n  jit_compile: off\n")  # YAML 1.1 would take it as false
    with pytest.raises(ConfigError, match=r"train.jit_compile = 'off'"):
        load_params(tmp_path / "params.yaml")


def test_a_duplicated_key_is_refused_naming_file_key_and_lines_in_every_kind_of_file(tmp_path, monkeypatch):
    from vaepipe import paths, presets
    from vaepipe.config import load_params
    from vaepipe.tune.search import load_search

    twice = "train:\n  epochs: 3\n  beta: 1.0\n  epochs: 5\n"
    (tmp_path / "params.yaml").write_text(twice)
    with pytest.raises(ConfigError) as error:
        load_params(tmp_path / "params.yaml")
    assert str(error.value) == (f"{tmp_path / 'params.yaml'}: key 'epochs' is written twice (line 2 and line 4; "
                                "DVC refuses a duplicated key): keep one")

    (tmp_path / "presets").mkdir()
    (tmp_path / "presets" / "twice.yaml").write_text("# a preset\n" + twice)
    monkeypatch.setattr(paths, "PRESETS_DIR", tmp_path / "presets")
    with pytest.raises(ConfigError, match=r"presets/twice.yaml: key 'epochs' is written twice \(line 3 and line 5"):
        presets.load_preset("twice")

    search = tmp_path / "search.yaml"
    search.write_text("study: s\ntrials: 20\nobjective: {val_loss: minimize}\ntrials: 2\n")
    with pytest.raises(ConfigError, match=r"search.yaml: key 'trials' is written twice \(line 2 and line 4"):
        load_search(search)
