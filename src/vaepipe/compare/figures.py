"""The figures of `make compare`, as PNG bytes: validation-loss curves, the rate-distortion plane, and the
main metrics against each numeric param that differs. A figure that needs two runs is left out with one."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from vaepipe.compare.rows import Row

BETA = "train.beta"
PARAM_METRICS = ("test_loss", "test_nll_iw", "test_kl", "knn_accuracy")
MAX_LEGEND = 25  # more lines than this: no legend (it would cover the plot)


def draw_all(rows: list[Row]) -> dict[str, bytes]:
    figures = {}
    if any(row.curve for row in rows):
        figures["val_loss_curves.png"] = _png(validation_curves(rows))
    points = [row for row in rows if {"test_kl", "test_recon"} <= row.metrics.keys()]
    if len(points) >= 2:
        figures["rate_distortion.png"] = _png(rate_distortion(points))
    for name in numeric_differing(rows):
        figures[f"metrics_vs_{name}.png"] = _png(metrics_against(rows, name))
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


def validation_curves(rows: list[Row]):
    figure, axes = plt.subplots(figsize=(8, 5))
    for row in rows:
        if row.curve:
            steps, values = zip(*row.curve, strict=True)
            axes.plot(steps, values, marker="." if len(steps) < 30 else None, label=row.label)
    axes.set(xlabel="epoch", ylabel="val_loss (negative ELBO, nats)", title="validation loss per epoch")
    _legend(axes, rows)
    return figure


def rate_distortion(rows: list[Row]):
    figure, axes = plt.subplots(figsize=(7, 5.5))
    lines = beta_lines(rows)
    joined = {id(row) for line in lines for row in line}
    for line in lines:
        others = ", ".join(f"{k}={v}" for k, v in line[0].differing.items() if k != BETA) or "beta"
        axes.plot([r.metrics["test_kl"] for r in line], [r.metrics["test_recon"] for r in line], marker="o", label=others)
        for row in line:
            axes.annotate(f"β={row.run.params.get(BETA, '?')}", (row.metrics["test_kl"], row.metrics["test_recon"]),
                          textcoords="offset points", xytext=(4, 4), fontsize=8)
    single = [row for row in rows if id(row) not in joined]
    for row in single:
        axes.plot(row.metrics["test_kl"], row.metrics["test_recon"], marker="s", linestyle="none", label=row.label)
    axes.set(xlabel="rate: test_kl (nats)", ylabel="distortion: test_recon (nats)",
             title="rate-distortion plane (lines join runs that differ only in train.beta)")
    _legend(axes, rows)
    return figure


def metrics_against(rows: list[Row], name: str):
    """PARAM_METRICS against param `name`, one line per combination of the other differing params."""
    figure, grid = plt.subplots(2, 2, figsize=(10, 7.5))
    groups: dict[str, list[Row]] = {}
    for row in rows:
        label = ", ".join(f"{k}={v}" for k, v in row.differing.items() if k != name) or "all runs"
        groups.setdefault(label, []).append(row)
    xs = [_float(row.differing[name]) for row in rows]
    for axes, metric in zip(grid.flat, PARAM_METRICS, strict=True):
        for label, group in groups.items():
            points = sorted((_float(r.differing[name]), r.metrics[metric]) for r in group if metric in r.metrics)
            if points:
                axes.plot(*zip(*points, strict=True), marker="o", label=label)
        if min(xs) > 0 and max(xs) / min(xs) >= 8:  # latent sizes 2..64 read better on a log axis
            axes.set_xscale("log", base=2)
        axes.set(xlabel=name, ylabel=metric)
    _legend(grid.flat[0], groups)
    figure.suptitle(f"metrics against {name}")
    figure.tight_layout()
    return figure


def _legend(axes, lines) -> None:
    if 0 < len(lines) <= MAX_LEGEND:
        axes.legend(fontsize=7)


def _float(text: str) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _png(figure) -> bytes:
    """The figure as PNG; its Description text chunk counts the data points drawn (what tests read back)."""
    points = sum(len(line.get_xdata()) for axes in figure.axes for line in axes.get_lines())
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight", metadata={"Description": f"points={points}"})
    plt.close(figure)
    return buffer.getvalue()
