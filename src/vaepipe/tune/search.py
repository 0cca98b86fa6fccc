"""The search file (search.yaml at the root, or SEARCH=path): what a study searches, checked before any
trial runs, and the mapping from a trial's values to its DVC experiment's params overrides.

    study: latent-lr
    preset: null                      # or a presets/ name: the base every trial starts from
    fixed: {train.epochs: 10}         # the same for every trial
    space:                            # per params key: {int: [lo, hi]}, {float: [lo, hi]} (log: true), {choice: [...]}
      model.latent_dim: {int: [2, 16]}
      train.learning_rate: {float: [1.0e-4, 1.0e-2], log: true}
    objective: {val_loss: minimize}   # validation metrics only (vaepipe.metrics; val_metrics.json's)
    trials: 20                        # trials that end COMPLETE or PRUNED
    jobs: 2                           # trials running at once (per `make tune` process)
    sampler: tpe                      # tpe | random | nsga2 (default: tpe, nsga2 for several objectives)
    pruner: median                    # none | median | hyperband
    final: 1                          # chosen trials run in full (evaluate and plot) at the end

Every key and value of `fixed` and `space` goes through the params schema laid over params.yaml and the
preset (each end of a range, each choice), so a typo or an impossible value stops with one line naming
the file and the key before anything runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vaepipe import metrics as registry
from vaepipe.config import format_errors, merge_overrides, nest, parse_partial, raw_params, read_yaml_file
from vaepipe.errors import ConfigError
from vaepipe.presets import format_value, load_preset

Direction = Literal["minimize", "maximize"]


class _SearchFile(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    study: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,48}$", description="letters, digits, '_', '.', '-'; at most 48")
    preset: str | None = None
    fixed: dict[str, Any] = {}
    space: dict[str, Any] = Field(min_length=1)
    objective: dict[str, Direction] = Field(min_length=1, max_length=4)
    trials: int = Field(ge=1, le=10000)
    jobs: int = Field(default=1, ge=1, le=64)
    sampler: Literal["tpe", "random", "nsga2"] | None = None
    pruner: Literal["none", "median", "hyperband"] = "median"
    pruner_startup: int = Field(default=5, ge=0, description="finished trials before the median pruner prunes")
    final: int = Field(default=1, ge=0)
    seed: int | None = Field(default=None, ge=0, description="the sampler's seed")


@dataclass(frozen=True)
class Dimension:
    """One searched params key: an int or float range (optionally log-scaled), or a list of choices."""

    key: str
    kind: Literal["int", "float", "choice"]
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: int | None = None
    choices: tuple = ()


@dataclass(frozen=True)
class Search:
    path: Path
    study: str
    preset: str | None
    preset_overrides: dict[str, Any]
    fixed: dict[str, Any]  # dotted keys
    space: tuple[Dimension, ...]
    objective: dict[str, str]  # metric -> minimize | maximize, in the file's order
    trials: int
    jobs: int
    sampler: str
    pruner: str
    pruner_startup: int
    final: int
    seed: int | None

    @property
    def metrics(self) -> list[str]:
        return list(self.objective)

    @property
    def directions(self) -> list[str]:
        return list(self.objective.values())

    def base(self) -> dict[str, Any]:
        """Every trial's params overrides before its own values: the preset, then `fixed`."""
        return merge_overrides(self.preset_overrides, nest(self.fixed))


def load_search(path: Path) -> Search:
    """Read and check a search file; ConfigError naming the file and the key for anything wrong."""
    return parse_search(read_yaml_file(path, "search file", "SEARCH=path names another"), path)


def parse_search(raw: Any, path: Path) -> Search:
    source = path.name
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping (study, space, objective, trials, ...), got {type(raw).__name__}")
    objective = raw.get("objective")
    if isinstance(objective, dict):
        _check_objective(objective, source)
    try:
        parsed = _SearchFile.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(format_errors(error, source)) from None
    try:
        preset_overrides = load_preset(parsed.preset) if parsed.preset else {}
    except ConfigError as error:
        raise ConfigError(f"{source}: {error}") from None
    base = merge_overrides(raw_params(), preset_overrides)
    fixed = _dotted(parsed.fixed, source, "fixed")
    base = merge_overrides(base, nest(fixed))
    params = parse_partial({}, source=f"{source} (fixed{', preset ' + parsed.preset if parsed.preset else ''})", base=base)
    space = tuple(_dimension(key, spec, source, base) for key, spec in _dotted(parsed.space, source, "space").items())
    if params.data.val_size == 0:
        raise ConfigError(f"{source}: data.val_size = 0 (from params.yaml, the preset or fixed): a search's objectives "
                          "are validation metrics, so the trials need a validation split (data.val_size > 0)")
    if any(dim.key == "data.val_size" and 0 in (dim.low, *dim.choices) for dim in space):
        raise ConfigError(f"{source}: space data.val_size reaches 0: the trials need a validation split")
    if params.train.distribute != "none" or any(dim.key == "train.distribute" for dim in space):
        raise ConfigError(f"{source}: train.distribute = {params.train.distribute!r}: a search's trials train in "
                          "one process (the pruning callback runs in Keras's fit): keep train.distribute none")
    if len(parsed.objective) > 1 and parsed.pruner != "none":
        raise ConfigError(f"{source}: pruner = {parsed.pruner!r} with {len(parsed.objective)} objectives: Optuna prunes "
                          "single-objective studies only; set pruner: none")
    sampler = parsed.sampler or ("nsga2" if len(parsed.objective) > 1 else "tpe")
    return Search(path=path, study=parsed.study, preset=parsed.preset, preset_overrides=preset_overrides,
                  fixed=fixed, space=space, objective=dict(parsed.objective), trials=parsed.trials, jobs=parsed.jobs,
                  sampler=sampler, pruner=parsed.pruner, pruner_startup=parsed.pruner_startup, final=parsed.final,
                  seed=parsed.seed)


def _check_objective(objective: dict, source: str) -> None:
    """Each objective must be a metric the registry allows (val_metrics.json's): a test metric never, since
    evaluate reads the test split, and the search runs it only for the chosen trials at the end."""
    allowed = registry.objective_names()
    for name in objective:
        given = f"{source}: objective {name} = {objective[name]!r}"
        try:
            metric = registry.get(str(name))
        except KeyError:
            raise ConfigError(f"{given}: unknown metric; the train stage's val_metrics.json has "
                              f"{', '.join(allowed)}") from None
        if metric.objective:
            continue
        if metric.where == registry.TEST:
            raise ConfigError(f"{given}: a search optimises validation metrics only; {name} is a test metric "
                              f"({metric.label}) that evaluate measures on the test split, which the search reads "
                              f"only for the chosen trials at the end. Use one of {', '.join(allowed)}")
        summaries = [m.name for m in registry.of(registry.VALIDATION) if m.column == metric.val_column]
        raise ConfigError(f"{given}: {name} is an epoch metric of the training split, not in val_metrics.json"
                          + (f" (its validation summary: {', '.join(summaries)})" if summaries else "")
                          + f"; a search optimises validation metrics only: use one of {', '.join(allowed)}")


def _dotted(mapping: dict[str, Any], source: str, where: str) -> dict[str, Any]:
    """Keys of `fixed` / `space` must be `section.key` (as `dvc exp run -S` names them), not tune.*."""
    for key in mapping:
        if not isinstance(key, str) or key.count(".") != 1:
            raise ConfigError(f"{source}: {where} key {key!r}: expected a params key as section.key, e.g. train.epochs")
        if key.startswith("tune."):
            raise ConfigError(f"{source}: {where} key {key}: the tune section is set by `make tune` itself")
    return dict(mapping)


def _dimension(key: str, spec: Any, source: str, base: dict[str, Any]) -> Dimension:
    where = f"{source}: space {key}"
    if not isinstance(spec, dict):
        raise ConfigError(f"{where} = {spec!r}: expected {{int: [lo, hi]}}, {{float: [lo, hi]}} or {{choice: [...]}}")
    kinds = [kind for kind in ("int", "float", "choice") if kind in spec]
    extra = set(spec) - {"int", "float", "choice", "log", "step"}
    if len(kinds) != 1 or extra:
        raise ConfigError(f"{where} = {spec!r}: expected exactly one of int, float, choice (with log: true or step: N "
                          f"for a range)" + (f"; unknown {', '.join(map(str, sorted(extra)))}" if extra else ""))
    kind = kinds[0]
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: log = {log!r}: expected true or false")
    if kind == "choice":
        choices = spec["choice"]
        if not isinstance(choices, list) or not choices or set(spec) != {"choice"}:
            raise ConfigError(f"{where} = {spec!r}: expected choice: [a non-empty list of values] alone")
        values = list(choices)
        dim = Dimension(key, "choice", choices=tuple(tuple(c) if isinstance(c, list) else c for c in choices))
    else:
        bounds = spec[kind]
        numeric = (int,) if kind == "int" else (int, float)
        if (not isinstance(bounds, list) or len(bounds) != 2
                or any(isinstance(b, bool) or not isinstance(b, numeric) for b in bounds)):
            raise ConfigError(f"{where}: {kind} = {bounds!r}: expected [low, high], two {kind}s"
                              + (" (numbers, without quotes)" if kind == "float" else ""))
        low, high = (bounds if kind == "int" else [float(b) for b in bounds])
        if low > high or (kind == "float" and low == high):
            raise ConfigError(f"{where}: {kind} = {bounds!r}: low must be below high")
        if log and low <= 0:
            raise ConfigError(f"{where}: {kind} = {bounds!r} with log: true: the range must be above 0")
        step = spec.get("step")
        if step is not None and (kind != "int" or not isinstance(step, int) or step < 1 or log):
            raise ConfigError(f"{where}: step = {step!r}: a positive int, for an int range without log only")
        values = [low, high]
        dim = Dimension(key, kind, low=low, high=high, log=log, step=step)
    for value in values:  # each end of the range, each choice, through the params schema
        parse_partial(nest({key: value}), source=f"{where} = {format_value(value)}", base=base)
    return dim


def suggest(trial, search: Search) -> dict[str, Any]:
    """Ask the Optuna trial for a value of every dimension; {dotted key: params value}."""
    values: dict[str, Any] = {}
    for dim in search.space:
        if dim.kind == "int":
            values[dim.key] = trial.suggest_int(dim.key, int(dim.low), int(dim.high), step=dim.step or 1, log=dim.log)
        elif dim.kind == "float":
            values[dim.key] = trial.suggest_float(dim.key, float(dim.low), float(dim.high), log=dim.log)
        else:
            values[dim.key] = from_choice(dim, trial.suggest_categorical(dim.key, [choice_label(c) for c in dim.choices]))
    return values


def choice_label(choice: Any) -> Any:
    """Optuna's categorical values are scalars: a list choice (e.g. model.hidden [256, 256]) goes by its text."""
    return format_value(list(choice)) if isinstance(choice, tuple) else choice


def from_choice(dim: Dimension, label: Any) -> Any:
    for choice in dim.choices:
        if choice_label(choice) == label:
            return list(choice) if isinstance(choice, tuple) else choice
    raise ConfigError(f"space {dim.key}: the study holds the value {label!r}, which is not one of the search file's "
                      "choices (was the search file changed under a running study?)")


def params_values(search: Search, optuna_params: dict[str, Any]) -> dict[str, Any]:
    """A finished trial's Optuna params -> {dotted key: params value} (list choices decoded)."""
    values = {}
    for dim in search.space:
        if dim.key in optuna_params:
            value = optuna_params[dim.key]
            values[dim.key] = from_choice(dim, value) if dim.kind == "choice" else value
    return values


def trial_overrides(search: Search, values: dict[str, Any], number: int, final: bool = False) -> dict[str, Any]:
    """The params overrides of trial `number` (nested): the preset, `fixed`, the trial's values, and the
    tune section naming the study and the trial (final: its full run at the end)."""
    tune = {"tune": {"study": search.study, "trial": number, **({"final": True} if final else {})}}
    return merge_overrides(merge_overrides(search.base(), nest(values)), tune)
