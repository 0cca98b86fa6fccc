"""Named presets: `presets/<name>.yaml` holds a partial params.yaml (same nesting), validated by the one
params schema laid over params.yaml. `make exp PRESET=conv` runs it as a DVC experiment:

    python -m vaepipe.presets --list                        # each preset and its one-line description
    python -m vaepipe.presets run conv [--queue] [-S train.epochs=5 ...]
        # = dvc exp run -n conv-<short hash> -S model.arch=conv ... (the preset's values, then the -S extras)

The experiment's name is the preset's and a short hash of its overrides (extras included), so two runs
of one preset with different extras are two experiments, and `dvc exp show` says which preset each ran.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

import yaml

from vaepipe import paths
from vaepipe.config import flatten, merge_overrides, nest, parse_partial, raw_params, read_yaml, read_yaml_file
from vaepipe.errors import ConfigError

NAME_PATTERN = r"^[A-Za-z0-9_-]{1,48}$"


def preset_file(name: str) -> Path:
    return paths.PRESETS_DIR / f"{name}.yaml"


def preset_names() -> list[str]:
    """The presets in presets/, by name."""
    return sorted(path.stem for path in paths.PRESETS_DIR.glob("*.yaml"))


def load_preset(name: str) -> dict[str, Any]:
    """The preset's overrides (nested, as in params.yaml), after checking them against the params schema
    laid over params.yaml; a ConfigError names the file and the key."""
    path = preset_file(name)
    source = f"presets/{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"preset {name!r}: no file {source}; the presets are: {', '.join(preset_names()) or 'none'}")
    raw = read_yaml_file(path, "preset file", shown_as=source) or {}
    if isinstance(raw, dict) and "tune" in raw:
        raise ConfigError(f"{source}: tune = {raw['tune']!r}: the tune section is set by `make tune` on its trials, "
                          "not by a preset")
    parse_partial(raw, source=source)
    return raw


def describe(name: str) -> str:
    """The preset file's first comment line (its one-line description)."""
    for line in preset_file(name).read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("#").strip()
    return ""


def format_value(value: Any) -> str:
    """A params value as `dvc exp run -S key=VALUE` spells it so that params.yaml reads it back with the
    same type: floats always with a decimal point (YAML 1.1 reads 1e-05 as text), lists without spaces."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float):
        text = repr(value)
        if "e" in text and "." not in text.split("e")[0]:
            mantissa, exponent = text.split("e")
            text = f"{mantissa}.0e{exponent}"
        return text
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_value(item) for item in value) + "]"
    return str(value)


def set_options(overrides: dict[str, Any]) -> list[str]:
    """`-S key=value` for every leaf of a nested overrides mapping."""
    options: list[str] = []
    for key, value in flatten(overrides).items():
        options += ["-S", f"{key}={format_value(value)}"]
    return options


def parse_set(assignments: list[str], source: str = "-S") -> dict[str, Any]:
    """["train.epochs=5", ...] -> nested overrides, values read as `dvc exp run -S` reads them (YAML, and
    1e-4 as a number)."""
    dotted: dict[str, Any] = {}
    for assignment in assignments:
        key, sep, value = assignment.partition("=")
        if not sep or "." not in key:
            raise ConfigError(f"{source} {assignment!r}: expected section.key=value, e.g. train.epochs=5")
        try:
            parsed = read_yaml(value)
        except yaml.YAMLError:
            raise ConfigError(f"{source} {assignment!r}: the value is not valid YAML") from None
        if isinstance(parsed, str):  # DVC's -S (Hydra's grammar) reads 1e-4 as a number, where YAML 1.1 does not
            try:
                parsed = float(parsed)
            except ValueError:
                pass
        dotted[key.strip()] = parsed
    return nest(dotted)


def experiment_name(name: str, overrides: dict[str, Any]) -> str:
    """<preset>-<7 hex digits of the overrides and the base params.yaml>."""
    text = json.dumps([overrides, raw_params()], sort_keys=True, default=str)
    return f"{name}-{hashlib.sha256(text.encode()).hexdigest()[:7]}"


def exp_run_command(name: str, extra: list[str], queue: bool = False) -> list[str]:
    """The `dvc exp run` command of preset `name` with extra `-S` assignments, all values validated first."""
    overrides = load_preset(name)
    extras = parse_set(extra)
    if "tune" in extras:
        raise ConfigError("-S tune.*: the tune section is set by `make tune` on its trials")
    merged = merge_overrides(overrides, extras)
    parse_partial(merged, source=f"presets/{name}.yaml with -S {' '.join(extra)}" if extra else f"presets/{name}.yaml")
    return ["dvc", "exp", "run", *(["--queue"] if queue else []), "-n", experiment_name(name, merged),
            *set_options(merged)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vaepipe.presets", description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="list the presets, one line each")
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="run a preset as a DVC experiment (make exp PRESET=...)")
    run.add_argument("name")
    run.add_argument("--queue", action="store_true", help="queue it (dvc exp run --queue) instead of running it")
    run.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE", help="an extra override")
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            command = exp_run_command(args.name, args.set, queue=args.queue)
            print(">> " + shlex.join(command), flush=True)
            os.execvp(command[0], command)
        names = preset_names()
        for name in names:
            load_preset(name)  # a bad preset is reported, and nothing listed
        width = max((len(name) for name in names), default=0)
        for name in names:
            print(f"{name:<{width}}  {describe(name)}")
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
