"""Named presets: every presets/*.yaml is a valid partial params.yaml; a bad one is refused naming the file
and the key; the `dvc exp run` command a preset makes carries exactly its values."""

from __future__ import annotations

import pytest

from vaepipe import paths, presets
from vaepipe.config import flatten, merge_overrides, parse_partial, raw_params
from vaepipe.errors import ConfigError

DOCUMENTED = {"mlp", "conv", "conv-kerasio", "nll", "iwae"}  # the presets of docs/results.md


def test_the_documented_presets_are_files():
    assert DOCUMENTED <= set(presets.preset_names())
    text = (paths.ROOT / "docs" / "results.md").read_text()
    for name in DOCUMENTED:
        assert f"presets/{name}.yaml" in text


@pytest.mark.parametrize("name", presets.preset_names())
def test_every_preset_file_is_valid_and_describes_itself(name):
    overrides = presets.load_preset(name)
    assert overrides, f"presets/{name}.yaml sets nothing"
    params = parse_partial(overrides, source=name)
    flat = {f"{section}.{key}": value for section, values in params.model_dump().items() for key, value in values.items()}
    for key, value in flatten(overrides).items():
        assert flat[key] == value, key  # the schema kept the preset's value, not a default
    assert presets.describe(name)


def test_known_values_of_the_presets():
    assert presets.load_preset("conv") == {"model": {"arch": "conv", "conv_dense": 128},
                                           "train": {"lr_schedule": "cosine", "batch_size": 128, "beta": 1.0},
                                           "evaluate": {"iw_samples": 50}}
    nll = parse_partial(presets.load_preset("nll"), "nll")
    assert (nll.data.val_size, nll.model.hidden, nll.model.latent_dim, nll.train.epochs) == (0, [200, 200], 50, 800)


BAD = [
    ("model:\n  arch: rnn\n", ["presets/broken.yaml", "model.arch", "'rnn'"]),
    ("model:\n  latnet_dim: 3\n", ["presets/broken.yaml", "model.latnet_dim", "unknown key"]),
    ("trian:\n  epochs: 3\n", ["presets/broken.yaml", "trian"]),
    ("train:\n  learning_rate: 0.0\n", ["presets/broken.yaml", "train.learning_rate", "greater than 0"]),
    ("model: conv\n", ["presets/broken.yaml", "model", "section"]),
    ("tune:\n  trial: 3\n", ["presets/broken.yaml", "tune", "make tune"]),
    ("model: [\n", ["presets/broken.yaml", "not valid YAML"]),
]


@pytest.mark.parametrize("text, words", BAD, ids=[words[1] for _, words in BAD])
def test_a_bad_preset_is_refused_naming_file_and_key(text, words, tmp_path, monkeypatch):
    (tmp_path / "broken.yaml").write_text(text)
    monkeypatch.setattr(paths, "PRESETS_DIR", tmp_path)
    with pytest.raises(ConfigError) as caught:
        presets.load_preset("broken")
    for word in words:
        assert word in str(caught.value), str(caught.value)


def test_an_unknown_preset_names_the_known_ones():
    with pytest.raises(ConfigError, match="no file presets/convv.yaml.*conv-kerasio"):
        presets.load_preset("convv")


def test_the_command_sets_the_preset_then_the_extras():
    command = presets.exp_run_command("nll", ["train.epochs=3", "train.learning_rate=1e-4"])
    # --temp: the experiment runs in DVC's temporary copy, so the workspace's params.yaml is never rewritten
    assert command[:5] == ["dvc", "exp", "run", "--temp", "-n"] and command[5].startswith("nll-")
    sets = dict(option.split("=", 1) for option in command[7::2])
    assert command[6::2] == ["-S"] * len(sets)
    assert sets["model.hidden"] == "[200,200]" and sets["data.val_size"] == "0"
    assert sets["train.epochs"] == "3"  # the extra wins over the preset's 800
    assert sets["train.learning_rate"] == "0.0001"
    queued = presets.exp_run_command("mlp", [], queue=True)
    assert "--queue" in queued and "--temp" not in queued
    # Different extras, different experiment names; the same ones, the same name.
    assert presets.exp_run_command("nll", [])[5] != command[5]
    assert presets.exp_run_command("nll", ["train.epochs=3", "train.learning_rate=1e-4"])[5] == command[5]


def test_a_bad_extra_is_refused_before_dvc_runs():
    with pytest.raises(ConfigError, match="train.epochs = 0"):
        presets.exp_run_command("mlp", ["train.epochs=0"])
    with pytest.raises(ConfigError, match="section.key=value"):
        presets.exp_run_command("mlp", ["epochs"])


@pytest.mark.parametrize("value", [1e-5, 0.001, 2.0, 3, True, None, "tanh", [200, 200], 1.5e-10,
                                   "off", "010", "1e-4", "x y", "it's"])
def test_a_formatted_value_reads_back_as_itself_with_dvcs_set_grammar(value):
    """What `make exp` hands DVC's -S is read by DVC (Hydra's grammar) as the preset's own value."""
    assert presets.parse_set([f"s.k={presets.format_value(value)}"]) == {"s": {"k": value}}


@pytest.mark.parametrize("given, value", [("1e-4", 1e-4), ("off", "off"), ("010", "010"), ("[1,2]", [1, 2]),
                                          ("null", None), ("'5'", "5")])
def test_extras_are_read_with_dvcs_set_grammar(given, value):
    assert presets.parse_set([f"train.x={given}"]) == {"train": {"x": value}}


def test_a_sweep_in_an_extra_is_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"a sweep of values.*dvc exp run --queue"):
        presets.parse_set(["model.latent_dim=2,4"])


def test_floats_read_as_dvc_writes_them(tmp_path, monkeypatch):
    # `dvc exp run -S train.learning_rate=1e-7` writes `1e-07` into params.yaml (YAML 1.2): a number.
    (tmp_path / "small.yaml").write_text("train:\n  learning_rate: 1e-07\n")
    monkeypatch.setattr(paths, "PRESETS_DIR", tmp_path)
    assert presets.load_preset("small") == {"train": {"learning_rate": 1e-07}}


def test_merge_is_what_dvc_exp_run_set_does():
    base = raw_params()
    merged = merge_overrides(base, {"model": {"hidden": [7]}})
    assert merged["model"]["hidden"] == [7] and merged["model"]["arch"] == base["model"]["arch"]
    assert base["model"]["hidden"] == [512]  # the base is not changed
