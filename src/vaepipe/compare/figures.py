"""The figures of `make compare`, as PNG bytes: validation-loss curves, the rate-distortion plane, and the
drawn test metrics (vaepipe.metrics, `drawn`) against each numeric param that differs, one panel each. A
figure that needs two runs is left out with one.

Readable with many runs: legends name runs briefly (Row.label: the run name or the trial number; the
tables carry the params), and of more than MAX_CURVES curves the HIGHLIGHT best are drawn in colour,
the others faint. Epochs and integer params (latent_dim, epochs, seed) get integer ticks only."""

from __future__ import annotations

import io
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator  # noqa: E402

from vaepipe import metrics as registry
from vaepipe.compare.rows import EPOCH_CURVE, Row

BETA = "train.beta"
PARAM_METRICS = tuple(metric.name for metric in registry.of(registry.TEST) if metric.drawn)
RATE, DISTORTION = registry.RATE_DISTORTION[registry.TEST]
PANEL_COLUMNS = 2  # metrics_against: panels per row
MAX_LEGEND = 25  # more lines than this: no legend (it would cover the plot)
MAX_CURVES = 10  # more curves than this: only the HIGHLIGHT best in colour, the rest faint
HIGHLIGHT = 5
FAINT = {"color": "0.6", "alpha": 0.35, "linewidth": 0.8}
MAX_LABEL_PARAMS = 2  # a legend names the params of a group of runs only when at most this many differ


def validation_figures(rows: list[Row]) -> dict[str, bytes]:
    """The validation-loss curves of runs validated on the same images (one validation protocol)."""
    return {"val_loss_curves.png": png(validation_curves(rows))} if any(row.curve for row in rows) else {}


def test_figures(rows: list[Row]) -> dict[str, bytes]:
    """The figures of ranked runs of one test protocol (rows with test metrics)."""
    figures = {}
    points = [row for row in rows if {RATE, DISTORTION} <= row.metrics.keys()]
    if len(points) >= 2:
        figures["rate_distortion.png"] = png(rate_distortion(points))
    for name in numeric_differing(rows) if PARAM_METRICS else ():
        figures[f"metrics_vs_{name}.png"] = png(metrics_against(rows, name))
    return figures


def numeric_differing(rows: list[Row]) -> list[str]:
    """Differing params whose every value is a number (latent_dim, beta, epochs; not `hidden: [512]`)."""
    names = list(rows[0].differing) if rows else []
    return [name for name in names
            if all(_float(row.differing[name]) is not None for row in rows)
            and len({_float(row.differing[name]) for row in rows}) > 1]


def beta_lines(rows: list[Row]) -> list[list[Row]]:
    """Runs grouped by every differing param except train.beta, each group ordered by beta: the runs
    that differ only in beta, which the rate-distortion plane joins by a line (Alemi et al. 2018)."""
    groups: dict[tuple, list[Row]] = {}
    for row in rows:
        key = tuple((name, value) for name, value in row.differing.items() if name != BETA)
        groups.setdefault(key, []).append(row)
    return [sorted(group, key=lambda row: _float(row.run.params.get(BETA, "")) or 0.0)
            for group in groups.values() if len(group) >= 2]


def best_curves(rows: list[Row]) -> list[Row]:
    """The runs whose curves stand out: all of them up to MAX_CURVES, else the HIGHLIGHT lowest val_loss."""
    drawn = [row for row in rows if row.curve]
    if len(drawn) <= MAX_CURVES:
        return drawn
    return sorted(drawn, key=lambda row: min(value for _, value in row.curve))[:HIGHLIGHT]


def validation_curves(rows: list[Row]):
    figure, axes = plt.subplots(figsize=(8, 5))
    drawn = [row for row in rows if row.curve]
    best = best_curves(drawn)
    faint = [row for row in drawn if all(row is not other for other in best)]
    for index, row in enumerate(faint):
        steps, values = zip(*row.curve, strict=True)
        axes.plot(steps, values, **FAINT, label=f"{len(faint)} other runs" if index == 0 else "_nolegend_")
    for row in best:
        steps, values = zip(*row.curve, strict=True)
        axes.plot(steps, values, marker="." if len(steps) < 30 else None, label=row.label)
    title = "validation loss per epoch"
    if faint:
        title += f" ({len(best)} lowest of {len(drawn)} runs highlighted)"
    axes.set(xlabel="epoch", ylabel=f"{EPOCH_CURVE} (the training objective, nats)", title=title)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # no epoch 1.5
    _legend(axes, best)
    return figure


def rate_distortion(rows: list[Row]):
    figure, axes = plt.subplots(figsize=(7, 5.5))
    lines = beta_lines(rows)
    joined = {id(row) for line in lines for row in line}
    for line in lines:
        others = _group_label(line, exclude=BETA)
        axes.plot([r.metrics[RATE] for r in line], [r.metrics[DISTORTION] for r in line], marker="o", label=others)
        for row in line:
            axes.annotate(f"β={row.run.params.get(BETA, '?')}", (row.metrics[RATE], row.metrics[DISTORTION]),
                          textcoords="offset points", xytext=(4, 4), fontsize=8)
    single = [row for row in rows if id(row) not in joined]
    for row in single:
        axes.plot(row.metrics[RATE], row.metrics[DISTORTION], marker="s", linestyle="none", label=row.label)
    axes.set(xlabel=f"rate: {RATE} (nats)", ylabel=f"distortion: {DISTORTION} (nats)",
             title="rate-distortion plane (lines join runs that differ only in train.beta)")
    _legend(axes, rows)
    return figure


def metrics_against(rows: list[Row], name: str, metrics: tuple[str, ...] = PARAM_METRICS):
    """Each of `metrics` against param `name`, one panel each (PANEL_COLUMNS to a row, as many rows as they
    need), one line per combination of the other differing params."""
    columns = min(PANEL_COLUMNS, len(metrics))
    grid_rows = math.ceil(len(metrics) / columns)
    figure, grid = plt.subplots(grid_rows, columns, figsize=(5 * columns, 3.75 * grid_rows), squeeze=False)
    for unused in grid.flat[len(metrics):]:  # an odd count leaves the last row's second panel empty
        unused.remove()
    groups: dict[tuple, list[Row]] = {}
    for row in rows:
        groups.setdefault(tuple((k, v) for k, v in row.differing.items() if k != name), []).append(row)
    # A run alone in its group draws no line: such runs share one series, so the legend stays short.
    lines = {_group_label(group, exclude=name): group for group in groups.values() if len(group) >= 2}
    single = [row for group in groups.values() if len(group) == 1 for row in group]
    if single:
        lines["other runs" if lines else "runs"] = single
    xs = [_float(row.differing[name]) for row in rows]
    integral = all(_is_int(row.differing[name]) for row in rows)  # "4", not "4.0" (a float param)
    for axes, metric in zip(grid.flat, metrics, strict=False):
        for label, group in lines.items():
            points = sorted((_float(r.differing[name]), r.metrics[metric]) for r in group if metric in r.metrics)
            if points:
                style = {"linestyle": "none"} if group is single else {}
                axes.plot(*zip(*points, strict=True), marker="o", label=label, **style)
        if min(xs) > 0 and max(xs) / min(xs) >= 8:  # latent sizes 2..64 read better on a log axis
            axes.set_xscale("log", base=2)
            if integral:  # ticks at powers of two, written 8 rather than 2^3
                axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        elif integral:  # no latent_dim 2.25
            axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        better = "higher" if registry.get(metric).direction == "maximize" else "lower"
        axes.set(xlabel=name, ylabel=metric, title=f"{metric} ({better} is better)")
    # On the first panel with lines: runs from before a drawn metric existed leave its panel empty.
    panels_with_lines = [axes for axes in figure.axes if axes.get_lines()]
    if panels_with_lines:
        _legend(panels_with_lines[0], lines)
    figure.suptitle(f"metrics against {name}")
    figure.tight_layout()
    return figure


def _group_label(group: list[Row], exclude: str) -> str:
    """A group of runs that differ only in `exclude`: its other params when few differ, else its runs."""
    others = [(k, v) for k, v in group[0].differing.items() if k != exclude]
    if len(others) <= MAX_LABEL_PARAMS:
        return ", ".join(f"{k}={v}" for k, v in others) or "all runs"
    return f"{group[0].label} and {len(group) - 1} more" if len(group) > 1 else group[0].label


def _legend(axes, lines) -> None:
    if 0 < len(lines) <= MAX_LEGEND:
        axes.legend(fontsize=7)


def _is_int(text: str) -> bool:
    try:
        int(text)
    except (TypeError, ValueError):
        return False
    return True


def _float(text: str) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def png(figure) -> bytes:
    """The figure as PNG; its Description text chunk counts the data points drawn, lines' and scatters'
    (what tests read back)."""
    points = sum(len(line.get_xdata()) for axes in figure.axes for line in axes.get_lines())
    points += sum(len(c.get_offsets()) for axes in figure.axes for c in axes.collections if hasattr(c, "get_offsets"))
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight", metadata={"Description": f"points={points}"})
    plt.close(figure)
    return buffer.getvalue()
