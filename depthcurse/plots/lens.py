"""Figures of the logit and tuned lens tables; each function takes only the table."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

from depthcurse.plots.layout import integer_ticks, legend_outside
from depthcurse.plots.stream import caption

LENS_METRICS = ("kl", "top5_overlap", "top1_agreement", "entropy", "accuracy", "loss")
PANEL_TITLES = {
    "top5_overlap": "top-5 overlap with the output",
    "top1_agreement": "top-1 agreement with the output",
    "entropy": "entropy of p_lens (nats)",
    "accuracy": "next-token accuracy",
    "loss": "next-token loss (nats)",
}


def panel_title(table: pd.DataFrame, metric: str) -> str:
    """Return a readable panel title; the KL panel names its direction from the table."""
    if metric == "kl":
        directions = table["kl_direction"].dropna().unique() if "kl_direction" in table else []
        direction = directions[0] if len(directions) == 1 else "lens||final"
        if "||" not in direction:
            direction = "lens||final"
        lens, final = direction.split("||")
        return f"KL(p_{lens} || p_{final}) (nats)"
    return PANEL_TITLES.get(metric, metric)


def plot_lens(table: pd.DataFrame, metrics: tuple[str, ...] = LENS_METRICS) -> Figure:
    """Plot one panel per lens metric against layer.

    Concatenated logit-lens and tuned-lens tables give one line per lens.
    """
    if table.empty or "lens" not in table.columns:
        raise ValueError("expected a logit_lens or tuned_lens table with a 'lens' column")
    fig, axes = plt.subplots(1, len(metrics), figsize=(2.6 * len(metrics), 2.8), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        chosen = table[table["metric"] == metric]
        for (model, lens), group in chosen.groupby(["model", "lens"], sort=False):
            group = group.sort_values("layer")
            label = lens if table["model"].nunique() == 1 else f"{model}: {lens}"
            ax.plot(group["layer"], group["value"], marker="o", markersize=3, label=label)
        ax.set_title(panel_title(table, metric), fontsize=9)
        ax.set_xlabel("layer l (L = output)")
        integer_ticks(ax.xaxis)
    legend_outside(axes[0][-1], fontsize=7)
    fig.suptitle("Lens read-outs of h_l, final norm recomputed on h_l", fontsize=10)
    fig.text(0.5, 0.005, caption(table), ha="center", fontsize=7)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig
