"""Figures of evaluations, held-out loss, training runs and growth stages.

`training_curves` turns run folders (`metrics.jsonl` and `run.json`, as the
trainer writes them) into a tidy table with the training compute spent so far,
so that loss against compute can be drawn without the models.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure

from depthcurse.plots.layout import integer_ticks, legend_outside, log_ticks


def plot_evaluation(table: pd.DataFrame) -> Figure:
    """Draw accuracy against level with its interval: a panel per task, a colour per model, a line style per form."""
    needed = {"task", "level", "accuracy", "ci_low", "ci_high"}
    if table.empty or not needed <= set(table.columns):
        raise ValueError(f"evaluation table is empty or lacks columns {sorted(needed)}")
    tasks = list(dict.fromkeys(table["task"]))
    models = list(dict.fromkeys(table["model"])) if "model" in table.columns else [None]
    forms = list(dict.fromkeys(table["form"])) if "form" in table.columns else [None]
    styles = ["-", "--", ":", "-."]
    # The legend lists models (colours) and forms (line styles) apart, not every pair,
    # and the figure grows with it: a legend taller than the axes collapses them.
    entries = len(models) + len(forms) + 1
    fig = Figure(figsize=(3 * len(tasks), max(2.8, 0.1 * entries + 0.8)), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(tasks), sharey=True))
    for ax, task in zip(axes, tasks, strict=True):
        rows = table[table["task"] == task]
        for m_index, model in enumerate(models):
            for f_index, form in enumerate(forms):
                curve = rows
                if model is not None:
                    curve = curve[curve["model"] == model]
                if form is not None:
                    curve = curve[curve["form"] == form]
                if curve.empty:
                    continue
                curve = curve.sort_values("level")
                errors = np.vstack(
                    [curve["accuracy"] - curve["ci_low"], curve["ci_high"] - curve["accuracy"]]
                )
                ax.errorbar(
                    curve["level"], curve["accuracy"], yerr=np.abs(errors), color=f"C{m_index}",
                    linestyle=styles[f_index % len(styles)], marker="o", markersize=3,
                    capsize=2, elinewidth=0.6,
                )
        if "chance" in rows.columns:
            chance = rows.groupby("level")["chance"].mean()
            ax.plot(chance.index, chance.to_numpy(), "k:", linewidth=0.8, label="chance")
        ax.set_title(task.replace("_", " "), fontsize=8)
        ax.set_xlabel("level")
        ax.set_xticks(sorted(rows["level"].unique()))
        ax.set_ylim(-0.02, 1.02)
    axes[0].set_ylabel("accuracy")
    # Empty lines on the last panel carry the legend: one per model and one per form.
    for m_index, model in enumerate(models):
        if model is not None:
            axes[-1].plot([], [], color=f"C{m_index}", marker="o", markersize=3, label=str(model))
    for f_index, form in enumerate(forms):
        if form is not None:
            axes[-1].plot([], [], color="0.4", linestyle=styles[f_index % len(styles)],
                          label=f"form: {form}")
    legend_outside(axes[-1], gather=axes[:-1], fontsize=5)
    return fig


def plot_heldout_nll(table: pd.DataFrame) -> Figure:
    """Draw held-out NLL per model with its bootstrap interval."""
    needed = {"model", "nll", "nll_low", "nll_high"}
    if table.empty or not needed <= set(table.columns):
        raise ValueError(f"heldout_nll table is empty or lacks columns {sorted(needed)}")
    fig = Figure(figsize=(max(2.5, 0.9 * len(table) + 1.5), 2.8), layout="constrained")
    ax = fig.subplots()
    values = table["nll"].to_numpy(float)
    errors = np.abs(np.vstack([values - table["nll_low"], table["nll_high"] - values]))
    ax.bar(range(len(values)), values, yerr=errors, capsize=3)
    ax.set_xticks(range(len(values)), table["model"].astype(str), rotation=30, ha="right")
    ax.set_ylabel("held-out NLL (nats/token)")
    return fig


def training_curves(runs: Iterable[str | Path], root: str | Path | None = None) -> pd.DataFrame:
    """Return loss and training FLOPs per logged step of each run folder.

    FLOPs accumulate `depthcurse.growth.flops_per_token` of the depth being
    trained times the tokens trained at that depth, with the depth changing at
    each growth record, so a grown run is charged for its shallower stages at
    their cost. Columns: run, variant, seed, kind (train or eval), step,
    tokens, stage, depth, loss, flops.
    """
    from depthcurse.config import ModelConfig

    frames = []
    for run in runs:
        run = Path(run)
        run_file, metrics_file = run / "run.json", run / "metrics.jsonl"
        if not run_file.is_file() or not metrics_file.is_file():
            raise FileNotFoundError(f"{run} lacks run.json or metrics.jsonl; pass a training run folder")
        info = json.loads(run_file.read_text())
        config = info["config"]
        model_cfg = ModelConfig.from_dict(info["model_config"])
        seq_len = int(config.get("seq_len") or model_cfg.max_seq_len)
        records = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
        rows = _charged_rows(records, partial(flops_per_token_at, model_cfg, seq_len))
        frame = pd.DataFrame(rows, columns=["kind", "step", "tokens", "stage", "depth", "loss", "flops"])
        growth = config.get("growth", "none")
        variant = growth if not model_cfg.ln_scaling else f"{growth}+ln_scaling"
        frame.insert(0, "run", str(run.relative_to(root)) if root is not None else run.name)
        frame.insert(1, "variant", variant)
        frame.insert(2, "seed", config.get("seed"))
        frames.append(frame)
    if not frames:
        raise FileNotFoundError("no training runs given; pass folders that contain metrics.jsonl")
    return pd.concat(frames, ignore_index=True)


def flops_per_token_at(model_cfg: Any, seq_len: int, depth: int) -> float:
    """Return `depthcurse.growth.flops_per_token` with the depth as the last argument."""
    from depthcurse.growth import flops_per_token

    return flops_per_token(model_cfg, depth, seq_len)


def _charged_rows(records: list[dict], per_token: Callable[[int], float]) -> list[tuple]:
    """Return (kind, step, tokens, stage, depth, loss, flops) for each train and eval record."""
    steps = [r for r in records if r.get("kind") in ("train", "eval") and r.get("step")]
    tokens_per_step = steps[0]["tokens"] / steps[0]["step"] if steps else 0.0
    growths = [r for r in records if r.get("kind") == "growth"]
    trains = [r for r in records if r.get("kind") == "train"]
    if growths:
        depth = int(growths[0]["depth_before"])
    elif trains:
        depth = int(trains[0]["depth"])
    else:
        depth = 0
    rows, flops, trained = [], 0.0, 0.0
    for record in records:
        kind = record.get("kind")
        if kind not in ("train", "eval", "growth"):
            continue
        # Growth records carry no token count; every step trains the same number of tokens.
        tokens = float(record.get("tokens", record["step"] * tokens_per_step))
        flops += per_token(depth) * (tokens - trained)
        trained = tokens
        if kind == "growth":
            depth = int(record["depth_after"])
            continue
        loss = record["loss"] if kind == "train" else record["val_loss"]
        rows.append((kind, record["step"], int(tokens), record.get("stage"), depth, loss, flops))
    return rows


def plot_loss_vs_compute(table: pd.DataFrame) -> Figure:
    """Draw training and held-out loss against training FLOPs, one colour per variant."""
    needed = {"run", "variant", "kind", "loss", "flops"}
    if table.empty or not needed <= set(table.columns):
        raise ValueError(f"training_curves table is empty or lacks columns {sorted(needed)}")
    fig = Figure(figsize=(8, 3), layout="constrained")
    axes = fig.subplots(1, 2, sharex=True)
    variants = list(dict.fromkeys(table["variant"]))
    colours = {v: f"C{i}" for i, v in enumerate(variants)}
    for ax, kind in zip(axes, ("train", "eval"), strict=True):
        shown: set[str] = set()
        for _, curve in table[table["kind"] == kind].groupby("run", sort=False):
            variant = curve["variant"].iloc[0]
            ax.plot(
                curve["flops"], curve["loss"], color=colours[variant], linewidth=1,
                marker="o" if kind == "eval" else None, markersize=2.5,
                label=None if variant in shown else variant,
            )
            shown.add(variant)
        ax.set_xscale("log")
        ax.set_xlabel("training FLOPs")
        ax.set_title("training loss" if kind == "train" else "held-out loss", fontsize=8)
    for ax in axes:
        log_ticks(ax.xaxis)
    axes[0].set_ylabel("loss (nats/token)")
    legend_outside(axes[-1], fontsize=6)
    return fig


def plot_over_stages(
    table: pd.DataFrame, metrics: list[str] | None = None, statistic: str = "mean", by: str = "step"
) -> Figure:
    """Draw per-layer curves with one line per checkpoint (`by`: step or stage), one panel per metric.

    Layer indices stay absolute, so a grown model's shorter early stages end
    where their depth ends.
    """
    if by not in table.columns or table.empty:
        raise ValueError(f"table has no {by} column; it needs one row set per checkpoint")
    rows = table[table["statistic"] == statistic] if "statistic" in table.columns else table
    metrics = metrics or list(dict.fromkeys(rows["metric"]))
    fig = Figure(figsize=(min(2.8 * len(metrics), 11), 2.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(metrics)))
    points = sorted(rows[by].dropna().unique())
    cmap = colormaps["viridis"]
    for ax, metric in zip(axes, metrics, strict=True):
        chosen = rows[rows["metric"] == metric]
        for index, point in enumerate(points):
            shade = 0.1 + 0.8 * index / max(len(points) - 1, 1)
            curve = chosen[chosen[by] == point].sort_values("layer")
            ax.plot(curve["layer"], curve["value"], color=cmap(shade), marker="o",
                    markersize=2.5, label=f"{by} {point}")
        ax.set_title(metric, fontsize=8)
        ax.set_xlabel("layer l")
        integer_ticks(ax.xaxis)
    axes[0].set_ylabel(statistic)
    legend_outside(axes[-1], fontsize=6)
    return fig
