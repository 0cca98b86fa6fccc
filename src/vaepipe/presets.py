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

from vaepipe import paths
from vaepipe.config import flatten, merge_overrides, nest, parse_partial, raw_params, read_yaml_file
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
    """A params value as `dvc exp run -S key=VALUE` spells it so that DVC's -S grammar (Hydra's) reads back
    the same value: floats with a decimal point, lists without spaces, a string quoted when unquoted it
    would read as something else (`'1e-4'`, `'x y'`)."""
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
    text = str(value)
    if isinstance(value, str) and _read_back(text) != value:
        return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return text


_UNREADABLE = object()


def _read_back(text: str) -> Any:
    """What DVC's -S reads `key=text` as (_UNREADABLE if it cannot read it unquoted)."""
    try:
        return parse_set([f"s.k={text}"])["s"]["k"]
    except ConfigError:
        return _UNREADABLE


def set_options(overrides: dict[str, Any]) -> list[str]:
    """`-S key=value` for every leaf of a nested overrides mapping."""
    options: list[str] = []
    for key, value in flatten(overrides).items():
        options += ["-S", f"{key}={format_value(value)}"]
    return options


def parse_set(assignments: list[str], source: str = "-S") -> dict[str, Any]:
    """["train.epochs=5", ...] -> nested overrides, each value read with the grammar `dvc exp run -S` itself
    uses (Hydra's override grammar: `1e-4` a number, `off` and `010` words), so what is validated here is
    what DVC writes into the experiment's params.yaml. A sweep (`a=1,2`, `range(...)`) belongs to
    `dvc exp run --queue`, not to one experiment, and is refused."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    dotted: dict[str, Any] = {}
    for assignment in assignments:
        key, sep, _ = assignment.partition("=")
        if not sep or "." not in key:
            raise ConfigError(f"{source} {assignment!r}: expected section.key=value, e.g. train.epochs=5")
        try:
            override = parser.parse_override(assignment)
        except HydraException as error:
            reason = " ".join(str(error).split())[:200]
            raise ConfigError(f"{source} {assignment!r}: not a value DVC's -S reads ({reason})") from None
        if override.is_sweep_override():
            raise ConfigError(f"{source} {assignment!r}: a sweep of values; one experiment takes one value "
                              "(queue a grid with `dvc exp run --queue -S ...`)")
        dotted[override.key_or_group] = override.value()
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
    # --temp: DVC runs it in a temporary copy and keeps it as an experiment (`dvc exp show`; `dvc exp apply
    # NAME` brings it into the workspace when asked); a workspace run would rewrite params.yaml.
    return ["dvc", "exp", "run", "--queue" if queue else "--temp", "-n", experiment_name(name, merged),
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
