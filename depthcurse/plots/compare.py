"""Figures that put several models side by side on relative depth l / L.

Relative depth is one convention for every table and figure: a row's `layer`
index l divided by its model's number of layers L. Layer l (0..L − 1) and its
input residual h_l share the value l / L, and the final residual h_L, which
the logit lens and the residual norms also report, sits at 1. Matrices of
different size are compared after resampling onto a common relative-depth grid.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from depthcurse.plots.layout import legend_outside

RELATIVE_DEPTH_LABEL = "relative depth l / L (L layers, output at 1)"
# Metrics whose `layer` is a residual index l = 0..L (h_L is the final residual). The rows
# of a lens table (with a `lens` column) are residual indices too. Every other `layer` is
# a layer index l = 0..L − 1.
# NOTE: a new table with residual-indexed rows must be listed here or carry an `n_layers`
# column, or its curves are drawn at l / (L + 1).
RESIDUAL_METRICS = ("norm_h",)


def residual_rows(table: pd.DataFrame) -> pd.Series:
    """Return, per row, whether its `layer` indexes the residual stream h_0..h_L."""
    residual = pd.Series(False, index=table.index)
    if "metric" in table.columns:
        residual |= table["metric"].isin(RESIDUAL_METRICS)
    if "lens" in table.columns:
        residual |= table["lens"].notna()
    return residual


def layer_counts(table: pd.DataFrame, column: str = "layer") -> pd.Series:
    """Return, per row, the number of layers L of its model.

    An `n_layers` column is used where present. Otherwise L is one more than the
    model's largest layer index, where a residual row h_l counts as index l − 1.
    """
    if "n_layers" in table.columns and table["n_layers"].notna().all():
        return table["n_layers"].astype(float)
    last_layer = table[column].astype(float) - residual_rows(table).astype(float)
    return last_layer.groupby(table["model"]).transform("max") + 1


def relative_depth(table: pd.DataFrame, column: str = "layer") -> pd.Series:
    """Return `column` divided by each model's number of layers L (see `layer_counts`)."""
    return table[column].astype(float) / layer_counts(table, column).clip(lower=1)


def plot_relative_depth(
    table: pd.DataFrame,
    metrics: list[str] | None = None,
    *,
    statistic: str = "mean",
    title: str = "",
    log: bool = False,
    group: str | None = None,
    xlabel: str = RELATIVE_DEPTH_LABEL,
) -> Figure:
    """Draw one panel per metric, one line per model (and per `group` value) on relative depth.

    Each row's layer index l is divided by its model's number of layers L
    (`relative_depth`), so every panel shares one x axis.
    """
    if table.empty or not {"model", "layer", "metric", "value"} <= set(table.columns):
        raise ValueError("expected a per-layer table with model, layer, metric and value columns")
    rows = table[table["statistic"] == statistic] if "statistic" in table.columns else table
    if rows.empty:
        raise ValueError(f"the table has no rows with statistic {statistic!r}")
    metrics = metrics or list(dict.fromkeys(rows["metric"]))
    fig = Figure(figsize=(min(2.8 * len(metrics), 11), 2.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(metrics)))
    keys = ["model"] if group is None else ["model", group]
    depth = relative_depth(rows)
    for ax, metric in zip(axes, metrics, strict=True):
        chosen = rows[rows["metric"] == metric].copy()
        chosen["depth"] = depth[chosen.index]
        for key, curve in chosen.groupby(keys, sort=False):
            label = " / ".join(map(str, key)) if isinstance(key, tuple) else str(key)
            curve = curve.sort_values("depth")
            ax.plot(curve["depth"], curve["value"], marker="o", markersize=2.5, label=label)
        ax.set_title(metric_title(table, metric), fontsize=8)
        ax.set_xlabel(xlabel)
        if log:
            ax.set_yscale("log")
    axes[0].set_ylabel(f"{statistic} over tokens")
    legend_outside(axes[-1], fontsize=6)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def metric_title(table: pd.DataFrame, metric: str) -> str:
    """Return the panel title that the single-model figures give `metric`."""
    from depthcurse.plots.lens import panel_title
    from depthcurse.plots.stream import METRIC_NAMES

    if metric in METRIC_NAMES:
        return METRIC_NAMES[metric]
    if "lens" in table.columns:
        return panel_title(table, metric)
    return metric


def resample(matrix: np.ndarray, size: int) -> np.ndarray:
    """Resample an L × L layer matrix to `size` × `size` cells on relative depth.

    Layer l spans relative depth [l / L, (l + 1) / L), and cell k, which starts at
    k / size, takes the layer whose span contains that start.
    """
    n = matrix.shape[0]
    index = np.minimum(np.arange(size) * n // size, n - 1)
    return matrix[np.ix_(index, index)]


MAX_GRID = 1024
"""Maximum cells per axis of a resampled matrix."""


def common_grid(n_first: int, n_second: int) -> int:
    """Return the cells per axis on which matrices of `n_first` and `n_second` layers align.

    That is lcm(n_first, n_second), where every layer covers whole cells. Above `MAX_GRID`
    it is the larger size, and a layer's drawn span may then be off by up to one cell.
    """
    grid = math.lcm(n_first, n_second)
    return grid if grid <= MAX_GRID else max(n_first, n_second)


def layer_matrix(table: pd.DataFrame, row: str, column: str) -> np.ndarray:
    """Return a square matrix from a long table's `row`, `column` and `value` columns."""
    n = int(max(table[row].max(), table[column].max())) + 1
    matrix = np.full((n, n), np.nan)
    matrix[table[row].to_numpy(int), table[column].to_numpy(int)] = table["value"].to_numpy(float)
    return matrix


def plot_difference(
    first: np.ndarray,
    second: np.ndarray,
    labels: tuple[str, str],
    *,
    title: str,
    axis_labels: tuple[str, str] = ("layer", "layer"),
) -> Figure:
    """Draw two matrices and their difference (second − first) side by side.

    Matrices of different size L_A and L_B are both resampled to lcm(L_A, L_B) cells,
    so each layer covers whole cells and its span [l / L, (l + 1) / L) is drawn exactly.
    The axes then show relative depth instead of layer indices.
    """
    relative = first.shape != second.shape
    size = common_grid(first.shape[0], second.shape[0])
    if relative:
        first, second = resample(first, size), resample(second, size)
    difference = second - first
    fig = Figure(figsize=(10, 3), layout="constrained")
    axes = fig.subplots(1, 3)
    low = float(np.nanmin([np.nanmin(first), np.nanmin(second)]))
    high = float(np.nanmax([np.nanmax(first), np.nanmax(second)]))
    # Cell k spans relative depth [k / size, (k + 1) / size), as `resample` reads it.
    extent = (0.0, 1.0, 1.0, 0.0) if relative else None
    for ax, matrix, label in zip(axes[:2], (first, second), labels, strict=True):
        image = ax.imshow(matrix, vmin=low, vmax=high, cmap="viridis", extent=extent)
        ax.set_title(label, fontsize=8)
        fig.colorbar(image, ax=ax, shrink=0.85)
    bound = float(np.nanmax(np.abs(difference))) or 1.0
    image = axes[2].imshow(difference, vmin=-bound, vmax=bound, cmap="RdBu_r", extent=extent)
    axes[2].set_title(f"{labels[1]} − {labels[0]}", fontsize=8)
    fig.colorbar(image, ax=axes[2], shrink=0.85)
    prefix = "relative depth l / L of " if relative else ""
    for ax in axes:
        ax.set_xlabel(prefix + axis_labels[1], fontsize=7)
        ax.set_ylabel(prefix + axis_labels[0], fontsize=7)
    fig.suptitle(title, fontsize=9)
    return fig
