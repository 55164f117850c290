"""Figures of the residual-stream analyses; each function takes only the analysis table.

Every figure states the table's conventions (position 0 excluded or not, model
dtype, metrics in float32) in a caption line under the title.
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

from depthcurse.plots.layout import integer_ticks, legend_outside


def caption(table: pd.DataFrame) -> str:
    """Return one line naming the conventions stored in a table's columns."""
    row = table.iloc[0]
    parts = [
        f"pos 0 {'excluded' if row.get('exclude_pos0') else 'included'}",
        f"model dtype {row.get('dtype')}, metrics {row.get('metric_dtype', 'float32')}",
    ]
    if row.get("kl_direction") not in (None, "n/a"):
        parts.append(f"KL({row['kl_direction'].replace('||', ' || ')})")
    if row.get("note"):
        parts.append(str(row["note"]))
    return "; ".join(parts)


def _require(table: pd.DataFrame, analysis: str) -> None:
    if table.empty:
        raise ValueError(f"the {analysis} table is empty; nothing to plot")
    found = table.attrs.get("analysis")
    if found is not None and found != analysis:
        raise ValueError(f"expected a {analysis} table, got a {found} table")


# Legend names of the metrics drawn as lines; other metrics keep their table name.
METRIC_NAMES = {
    "norm_h": "‖h_l‖ (residual in)",
    "norm_a": "‖a_l‖ (attention out)",
    "norm_m": "‖m_l‖ (MLP out)",
    "attn": "attention ‖a‖/‖h‖",
    "mlp": "MLP ‖m‖/‖h+a‖",
    "layer": "layer ‖a+m‖/‖h‖",
}

WEIGHT_METRICS = ("W_Q", "W_K", "W_V", "W_O", "gate", "up", "down")


def _lines_by_layer(
    table: pd.DataFrame, metrics: list[str], statistic: str, ylabel: str, title: str, log: bool
) -> Figure:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for (model, metric), group in table[table["statistic"] == statistic].groupby(
        ["model", "metric"], sort=False
    ):
        if metric not in metrics:
            continue
        group = group.sort_values("layer")
        name = METRIC_NAMES.get(metric, metric)
        label = name if table["model"].nunique() == 1 else f"{model}: {name}"
        ax.plot(group["layer"], group["value"], marker="o", markersize=3, label=label)
    ax.set_xlabel("layer l")
    integer_ticks(ax.xaxis)
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    legend_outside(ax, fontsize=7)
    ax.set_title(title, fontsize=10)
    fig.text(0.5, 0.005, caption(table), ha="center", fontsize=7)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return fig


def plot_residual_norms(table: pd.DataFrame, statistic: str = "mean") -> Figure:
    """Plot the norms of h_l, a_l and m_l against layer on a log scale."""
    _require(table, "residual_norms")
    return _lines_by_layer(
        table,
        ["norm_h", "norm_a", "norm_m"],
        statistic,
        f"{statistic} L2 norm",
        "Residual stream norms",
        log=True,
    )


def plot_contributions(table: pd.DataFrame, statistic: str = "mean") -> Figure:
    """Plot the relative contributions ‖a‖/‖h‖, ‖m‖/‖h+a‖, ‖a+m‖/‖h‖ against layer on a log scale."""
    _require(table, "contributions")
    return _lines_by_layer(
        table,
        ["attn", "mlp", "layer"],
        statistic,
        f"{statistic} relative contribution",
        "Relative contribution to the residual stream",
        log=True,
    )


def plot_cosines(table: pd.DataFrame) -> Figure:
    """Plot token-averaged cosines against layer, marking undefined (NaN) layers with a red x."""
    _require(table, "cosines")
    metrics = list(dict.fromkeys(table["metric"]))
    fig = _lines_by_layer(table, metrics, "mean", "mean cosine", "Cosine similarities", log=False)
    ax = fig.axes[0]
    undefined = table[table["undefined"]]
    if not undefined.empty:
        ax.scatter(
            undefined["layer"],
            [0.0] * len(undefined),
            marker="x",
            color="red",
            label="undefined (zero vector)",
        )
        legend_outside(ax, fontsize=7)
    ax.axhline(0.0, color="grey", linewidth=0.5)
    return fig


def plot_layer_similarity(table: pd.DataFrame, metrics: list[str] | None = None) -> Figure:
    """Plot one layer x layer heat map per metric (delta, resid, W_Q, ...)."""
    _require(table, "layer_similarity")
    metrics = metrics or list(dict.fromkeys(table["metric"]))
    columns = min(4, len(metrics))
    rows = math.ceil(len(metrics) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3 * columns, 2.8 * rows), squeeze=False)
    for ax, metric in zip(axes.flat, metrics, strict=False):
        matrix = table[table["metric"] == metric].pivot(
            index="layer", columns="other_layer", values="value"
        )
        image = ax.imshow(matrix.to_numpy(), vmin=-1, vmax=1, cmap="RdBu_r", origin="lower")
        ax.set_title(metric, fontsize=9)
        ax.set_xlabel("layer")
        ax.set_ylabel("layer")
    for ax in list(axes.flat)[len(metrics) :]:
        ax.axis("off")
    fig.colorbar(image, ax=axes, shrink=0.8, label="cosine")
    if all(metric in WEIGHT_METRICS for metric in metrics):
        fig.suptitle("Weight similarity: cosine of flattened per-layer weights", fontsize=10)
    else:
        fig.suptitle("Layer similarity", fontsize=10)
    fig.text(0.5, 0.005, caption(table), ha="center", fontsize=7)
    return fig


def plot_norms_over_run(
    table: pd.DataFrame, metric: str = "norm_h", statistic: str = "mean"
) -> Figure:
    """Plot a norm against layer with one line per checkpoint step (from `residual_norms_over_run`)."""
    _require(table, "residual_norms")
    if "step" not in table.columns:
        raise ValueError("table has no step column; build it with residual_norms_over_run")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    chosen = table[(table["metric"] == metric) & (table["statistic"] == statistic)]
    steps = sorted(chosen["step"].unique())
    colors = plt.cm.viridis([i / max(len(steps) - 1, 1) for i in range(len(steps))])
    for color, step in zip(colors, steps, strict=True):
        group = chosen[chosen["step"] == step].sort_values("layer")
        stage = group["stage"].iloc[0]
        ax.plot(
            group["layer"],
            group["value"],
            color=color,
            marker="o",
            markersize=3,
            label=f"step {step}" + (f" (stage {stage})" if stage is not None else ""),
        )
    ax.set_yscale("log")
    ax.set_xlabel("layer l")
    integer_ticks(ax.xaxis)
    ax.set_ylabel(f"{statistic} {metric}")
    legend_outside(ax, fontsize=7)
    ax.set_title("Residual norms over training", fontsize=10)
    fig.text(0.5, 0.005, caption(table), ha="center", fontsize=7)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return fig


def plot_copy_divergence(table: pd.DataFrame, metric: str = "cosine") -> Figure:
    """Plot each copied layer's cosine (or relative distance) to its source against step, per module."""
    _require(table, "copy_divergence")
    chosen = table[table["metric"] == metric]
    modules = list(dict.fromkeys(chosen["module"]))
    fig, axes = plt.subplots(
        1, len(modules), figsize=(2.4 * len(modules), 2.8), sharey=True, squeeze=False
    )
    for ax, module in zip(axes[0], modules, strict=True):
        for layer_id, group in chosen[chosen["module"] == module].groupby("layer_id"):
            group = group.sort_values("step")
            ax.plot(
                group["step"],
                group["value"],
                marker="o",
                markersize=3,
                label=f"id {layer_id} <- {group['source_id'].iloc[0]}",
            )
        ax.set_title(module, fontsize=9)
        ax.set_xlabel("step")
    axes[0][0].set_ylabel(metric)
    legend_outside(axes[0][-1], fontsize=6)
    fig.suptitle("Copied layers against their sources", fontsize=10)
    fig.tight_layout()
    return fig
