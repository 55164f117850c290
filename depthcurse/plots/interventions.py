"""Figures for the intervention analyses; each function takes only the analysis table.

Figures are built with `matplotlib.figure.Figure` (no pyplot state), so they
work under any backend; save them with `fig.savefig(path)`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from depthcurse.plots.layout import integer_ticks, legend_outside, short_labels


def _require(table: pd.DataFrame, columns: set[str], producer: str) -> None:
    missing = columns - set(table.columns)
    if missing:
        raise ValueError(f"table lacks columns {sorted(missing)}; pass the output of {producer}")
    if table.empty:
        raise ValueError(f"table is empty; pass the output of {producer}")


def _one_statistic(table: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    if "statistic" not in table.columns:
        return table, ""
    statistic = "max" if (table["statistic"] == "max").any() else str(table["statistic"].iloc[0])
    return table[table["statistic"] == statistic], statistic


def plot_skip_matrix(table: pd.DataFrame) -> Figure:
    """Draw E[s, j] (skipped layer × later layer) for each part, as in Csordás et al. 2025."""
    _require(table, {"part", "skip_layer", "layer", "metric", "value"}, "skip_effects")
    rows, statistic = _one_statistic(table[table["metric"] == "relative_change"])
    groups = list(rows.groupby([c for c in ("part", "variant", "mode") if c in rows], sort=False))
    n_layers = int(table["skip_layer"].max()) + 1
    fig = Figure(figsize=(4 * len(groups), 3.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(groups)))
    for ax, (key, group) in zip(axes, groups, strict=True):
        matrix = np.full((n_layers, n_layers), np.nan)
        matrix[group["skip_layer"].to_numpy(int), group["layer"].to_numpy(int)] = group["value"]
        image = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis", origin="upper")
        ax.set_title(" / ".join(map(str, key if isinstance(key, tuple) else (key,))))
        ax.set_xlabel("effect at layer j")
        ax.set_ylabel("skipped layer s")
        fig.colorbar(image, ax=ax, label=f"relative change ({statistic})")
    return fig


def plot_output_change(table: pd.DataFrame) -> Figure:
    """Draw the output effect ‖p_skip − p_clean‖₂ per skipped layer, one bar set per part."""
    _require(table, {"part", "skip_layer", "metric", "value"}, "skip_effects")
    rows, statistic = _one_statistic(table[table["metric"] == "output_change"])
    parts = list(rows["part"].unique())
    fig = Figure(figsize=(6, 3), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / max(len(parts), 1)
    for index, part in enumerate(parts):
        group = rows[rows["part"] == part].sort_values("skip_layer")
        ax.bar(group["skip_layer"] + index * width, group["value"], width=width, label=part)
    ax.set_xlabel("skipped layer")
    integer_ticks(ax.xaxis)
    ax.set_ylabel(f"output change norm ({statistic})")
    legend_outside(ax)
    return fig


SOURCE_TITLES = {
    "layer_effect": "from skip effects on later layers",
    "output_effect": "from skip effects on the output",
}


def prompt_set_label(name: str) -> str:
    """Return a tick label for a prompt-set key, e.g. "variable_assignment/level=2" -> "variable assignment, level 2"."""
    return name.replace("/level=", ", level ").replace("_", " ")


def plot_depth_scores(table: pd.DataFrame) -> Figure:
    """Draw the depth score per prompt set with its bootstrap interval, per effect source."""
    _require(table, {"prompt_set", "source", "value", "ci_low", "ci_high"}, "depth_score")
    sources = list(table["source"].unique())
    fig = Figure(figsize=(3.5 * len(sources), 3), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(sources)))
    for ax, source in zip(axes, sources, strict=True):
        group = table[table["source"] == source]
        labels = [prompt_set_label(name) for name in group["prompt_set"].astype(str)]
        values = group["value"].to_numpy(float)
        errors = np.abs(np.vstack([values - group["ci_low"], group["ci_high"] - values]))
        ax.bar(range(len(values)), values, yerr=errors, capsize=3)
        ax.set_xticks(range(len(values)), labels, rotation=30, ha="right")
        ax.set_title(SOURCE_TITLES.get(source, source.replace("_", " ")), fontsize=9)
        ax.set_ylabel("depth score (0-based layer)")
    return fig


def plot_perturbations(table: pd.DataFrame) -> Figure:
    """Draw Δ NLL as a heatmap of perturbation kind × position, one panel per level."""
    _require(table, {"level", "kind", "position", "metric", "value"}, "perturbations")
    rows = table[table["metric"] == "delta_nll"]
    levels = list(rows["level"].unique())
    fig = Figure(figsize=(5 * len(levels), 3), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(levels)))
    for ax, level in zip(axes, levels, strict=True):
        group = rows[rows["level"] == level].copy()
        # Whole-model kinds (identity, reverse_middle) have no position: column "all".
        group["column"] = group["position"].astype("float").fillna(-1).astype(int)
        grid = group.pivot_table(index="kind", columns="column", values="value", aggfunc="mean")
        image = ax.imshow(grid.to_numpy(float), cmap="magma", aspect="auto")
        ax.set_yticks(range(len(grid.index)), grid.index)
        ax.set_xticks(range(len(grid.columns)), ["all" if c < 0 else str(c) for c in grid.columns])
        ax.set_xlabel(f"{level} index")
        ax.set_title(f"{level} level")
        fig.colorbar(image, ax=ax, label="Δ NLL (nats/token)")
    return fig


def plot_pruning(table: pd.DataFrame) -> Figure:
    """Draw block influence, Δ NLL of removing each layer, and the angular-distance grid."""
    _require(table, {"metric", "layer", "span", "value"}, "pruning_metrics")
    fig = Figure(figsize=(12, 3), layout="constrained")
    ax_bi, ax_nll, ax_angle = fig.subplots(1, 3)
    bi = table[table["metric"] == "block_influence"].sort_values("layer")
    ax_bi.bar(bi["layer"], bi["value"])
    ax_bi.set_xlabel("layer")
    ax_bi.set_ylabel("1 − mean cos(h_l, h_(l+1))")
    ax_bi.set_title("block influence", fontsize=9)
    nll = table[table["metric"] == "delta_nll_remove"].sort_values("layer")
    ax_nll.bar(nll["layer"], nll["value"])
    ax_nll.set_xlabel("removed layer")
    ax_nll.set_ylabel("Δ NLL (nats/token)")
    ax_nll.set_title("loss increase when the layer is removed", fontsize=9)
    angle = table[table["metric"] == "angular_distance"]
    grid = angle.pivot_table(index="span", columns="layer", values="value")
    image = ax_angle.imshow(grid.to_numpy(float), cmap="viridis", aspect="auto", vmin=0)
    ax_angle.set_yticks(range(len(grid.index)), [str(n) for n in grid.index])
    ax_angle.set_xlabel("first layer l")
    ax_angle.set_ylabel("span n")
    ax_angle.set_title("angular distance of h_l and h_l+n", fontsize=9)
    fig.colorbar(image, ax=ax_angle, label="angular distance d(l, l+n)")
    return fig


def plot_loop(table: pd.DataFrame) -> Figure:
    """Draw each looping metric against the number of passes through the block."""
    _require(table, {"repeats", "metric", "value"}, "loop_block")
    metrics = [m for m in table["metric"].unique() if m != "nll"]
    fig = Figure(figsize=(3.5 * len(metrics), 3), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(metrics)))
    for ax, metric in zip(axes, metrics, strict=True):
        group = table[table["metric"] == metric].sort_values("repeats")
        ax.plot(group["repeats"], group["value"], marker="o")
        ax.set_xlabel("passes through the block")
        ax.set_ylabel(metric.replace("_", " "))
    return fig


def plot_periodicity(table: pd.DataFrame) -> Figure:
    """Draw the autocorrelation over lag of each sequence, with its dominant period."""
    _require(table, {"sequence", "lag", "metric", "value"}, "periodicity")
    fig = Figure(figsize=(6, 3), layout="constrained")
    ax = fig.subplots()
    groups = list(table.groupby("sequence", sort=False))
    # Sequence names repeat the model label and statistic: keep the parts that differ.
    names = short_labels([str(name) for name, _ in groups])
    for name, (_, group) in zip(names, groups, strict=True):
        curve = group[group["metric"] == "autocorrelation"].sort_values("lag")
        period = group.loc[group["metric"] == "dominant_period", "value"]
        found = "no dominant period" if period.isna().all() else f"period {int(period.iloc[0])}"
        label = f"{name} ({found})"
        ax.plot(curve["lag"].astype(int), curve["value"], marker=".", label=label)
    ax.axhline(0, color="grey", linewidth=0.5)
    ax.set_xlabel("lag (layers)")
    integer_ticks(ax.xaxis)
    ax.set_ylabel("autocorrelation")
    if "model" in table.columns and table["model"].nunique() == 1:
        ax.set_title(str(table["model"].iloc[0]))
    legend_outside(ax, fontsize="small")
    return fig


def plot_symmetry(table: pd.DataFrame) -> Figure:
    """Draw the mirror asymmetry of each similarity matrix, over all layers and the middle."""
    _require(table, {"matrix", "region", "value"}, "symmetry_scores")
    grid = table.pivot_table(index="matrix", columns="region", values="value", sort=False)
    fig = Figure(figsize=(6, 3), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / len(grid.columns)
    for index, region in enumerate(grid.columns):
        ax.bar(np.arange(len(grid)) + index * width, grid[region], width=width, label=region)
    ax.set_xticks(np.arange(len(grid)), grid.index)
    ax.set_xlabel("similarity matrix S (layer × layer)")
    ax.set_ylabel("‖S − JSJ‖ / ‖S‖")
    ax.set_title("Mirror asymmetry (0 = symmetric; J reverses the layer order)", fontsize=9)
    legend_outside(ax)
    return fig


def plot_linear_map(table: pd.DataFrame) -> Figure:
    """Draw the relative error of linear maps, source layer × target layer."""
    _require(table, {"source_layer", "target_layer", "value"}, "linear_map")
    grid = table.pivot_table(index="source_layer", columns="target_layer", values="value")
    fig = Figure(figsize=(5, 4), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(grid.to_numpy(float), cmap="viridis", origin="lower", aspect="auto")
    source, target = "model A", "model B"
    if {"source_model", "target_model"} <= set(table.columns):
        source, target = str(table["source_model"].iloc[0]), str(table["target_model"].iloc[0])
    ax.set_xlabel(f"target layer ({target})")
    ax.set_ylabel(f"source layer ({source})")
    ax.set_title(f"Linear maps {source} → {target} (dark = low error)", fontsize=9)
    fig.colorbar(image, ax=ax, label="relative error ‖ŷ − y‖ / ‖y‖")
    return fig
