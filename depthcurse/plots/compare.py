"""Figures that put several models side by side on relative depth l / (L − 1).

Models of different depth share an x axis once each layer index l is divided
by its model's last layer index L − 1, so layer 0 sits at 0 and the last layer
at 1. Matrices of different size are compared after nearest-neighbour
resampling onto a common relative-depth grid.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from depthcurse.plots.layout import legend_outside


def relative_depth(table: pd.DataFrame, column: str = "layer") -> pd.Series:
    """Return `column` divided by each model's largest value of it, so every model spans 0 to 1."""
    top = table.groupby("model")[column].transform("max").astype(float)
    return table[column].astype(float) / top.where(top > 0, 1.0)


def plot_relative_depth(
    table: pd.DataFrame,
    metrics: list[str] | None = None,
    *,
    statistic: str = "mean",
    title: str = "",
    log: bool = False,
    group: str | None = None,
    xlabel: str = "relative depth l / (L − 1)",
) -> Figure:
    """Draw one panel per metric, one line per model (and per `group` value) on relative depth.

    Each model's layer index is divided by its largest one in the table, so the
    lens tables, whose last row is the output (l = L), span l / L instead.
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
    for ax, metric in zip(axes, metrics, strict=True):
        chosen = rows[rows["metric"] == metric].copy()
        chosen["depth"] = relative_depth(chosen)
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
    """Resample a square matrix to `size` × `size` by nearest relative depth."""
    n = matrix.shape[0]
    index = np.rint(np.linspace(0, n - 1, size)).astype(int)
    return matrix[np.ix_(index, index)]


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

    Matrices of different size are both resampled to the larger size, and the
    axes then show relative depth instead of layer indices.
    """
    relative = first.shape != second.shape
    size = max(first.shape[0], second.shape[0])
    if relative:
        first, second = resample(first, size), resample(second, size)
    difference = second - first
    fig = Figure(figsize=(10, 3), layout="constrained")
    axes = fig.subplots(1, 3)
    low = float(np.nanmin([np.nanmin(first), np.nanmin(second)]))
    high = float(np.nanmax([np.nanmax(first), np.nanmax(second)]))
    extent = (-0.5 / size, 1 + 0.5 / size, 1 + 0.5 / size, -0.5 / size) if relative else None
    for ax, matrix, label in zip(axes[:2], (first, second), labels, strict=True):
        image = ax.imshow(matrix, vmin=low, vmax=high, cmap="viridis", extent=extent)
        ax.set_title(label, fontsize=8)
        fig.colorbar(image, ax=ax, shrink=0.85)
    bound = float(np.nanmax(np.abs(difference))) or 1.0
    image = axes[2].imshow(difference, vmin=-bound, vmax=bound, cmap="RdBu_r", extent=extent)
    axes[2].set_title(f"{labels[1]} − {labels[0]}", fontsize=8)
    fig.colorbar(image, ax=axes[2], shrink=0.85)
    prefix = "relative depth of " if relative else ""
    for ax in axes:
        ax.set_xlabel(prefix + axis_labels[1], fontsize=7)
        ax.set_ylabel(prefix + axis_labels[0], fontsize=7)
    fig.suptitle(title, fontsize=9)
    return fig
