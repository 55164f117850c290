"""Run the analysis suite on one or two model sources and write tables, figures and a report.

`analyze` is what `depthcurse analyze SOURCE` runs and `compare` what
`depthcurse compare A B` runs. Both write into one output folder:

- `tables/`: each analysis table as parquet and CSV (a `model` column names
  the model);
- `figures/`: every figure as PDF and PNG (see `depthcurse.figures`);
- `cache/` (unless another cache folder is given): results keyed by model
  hash, analysis and options, so a second run computes nothing;
- `report.md` (compare only): the summary metrics of both models side by side.

Models of different depth are compared on relative depth l / L (layer index
over the number of layers, see `depthcurse.plots.compare`). Each
model reads validation prompts tokenized by its own tokenizer. The
cross-model linear map needs both models to read the same token ids, so it
runs only when the tokenizers are identical.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from depthcurse.suite import SuiteOptions, check_analyses


@dataclass
class Analysis:
    """Output of `analyze` or `compare`: the tables and the files written."""

    out: Path
    tables: dict[str, pd.DataFrame]
    figures: list[Path] = field(default_factory=list)
    report: Path | None = None
    notes: list[str] = field(default_factory=list)


def source_digest(source: str | Path) -> str:
    """Return the hash of the weights a source resolves to (a run folder: its chosen checkpoint)."""
    from depthcurse.cache import model_hash
    from depthcurse.sources import resolve

    return model_hash(resolve(source).path)


MODEL_DTYPES = ("float32", "bfloat16")
"""Dtypes a model can be analysed in. Metrics are float32 either way. On a CPU with AVX-512
BF16, bfloat16 ran smollm2's layers and unembedding about twice as fast as float32
(benchmarks/model_dtype.py)."""


def torch_dtype(name: str) -> Any:
    """Return the torch dtype of a name in `MODEL_DTYPES`, or raise ValueError naming the choices."""
    import torch

    if name not in MODEL_DTYPES:
        raise ValueError(f"model dtype {name!r} is not supported; choose one of {MODEL_DTYPES}")
    return getattr(torch, name)


def cache_digest(source: str | Path, dtype: str = "float32") -> str:
    """Return the cache key of a source's weights analysed in `dtype`, as `run_suite` forms it."""
    from depthcurse.suite import dtype_digest

    return dtype_digest(source_digest(source), dtype)


def source_label(source: str | Path, model: Any) -> str:
    """Return a short model name: the bundled name, else `depthcurse.sources.checkpoint_label`."""
    from depthcurse.sources import BUNDLED, checkpoint_label

    if str(source) in BUNDLED:
        return str(source)
    return checkpoint_label(model.depthcurse_info.source)


def distinct_labels(label_a: str, label_b: str) -> tuple[str, str]:
    """Return the two labels, prefixed "A " and "B " when they are equal."""
    if label_a == label_b:
        return f"A {label_a}", f"B {label_b}"
    return label_a, label_b


def _suite(
    model: Any,
    source: str | Path,
    label: str,
    only: tuple[str, ...],
    options: SuiteOptions,
    cache_dir: Path,
    progress: Callable[[str], None] | None,
) -> dict[str, pd.DataFrame]:
    from depthcurse.cache import ResultCache
    from depthcurse.suite import run_suite

    def report(name: str) -> None:
        if progress is not None:
            progress(f"{label}: {name}")

    return run_suite(
        model,
        only=only,
        options=options,
        label=label,
        cache=ResultCache(cache_dir),
        model_digest=source_digest(source),
        progress=report,
    )


def _write(
    result: Analysis, draw: bool, progress: Callable[[str], None] | None
) -> Analysis:
    from depthcurse.figures import make_figures
    from depthcurse.suite import save_tables

    save_tables(result.tables, result.out / "tables")
    if draw:
        if progress is not None:
            progress("drawing figures")
        result.figures = make_figures(result.tables, result.out / "figures", strict=False)
    return result


def analyze(
    source: str | Path,
    out: str | Path,
    *,
    only: Iterable[str] | None = None,
    options: SuiteOptions | None = None,
    cache_dir: str | Path | None = None,
    label: str | None = None,
    figures: bool = True,
    progress: Callable[[str], None] | None = None,
    dtype: str = "float32",
) -> Analysis:
    """Run the suite (or the analyses in `only`) on one model source and write its results to `out`.

    `dtype` is the dtype the model runs in, one of `MODEL_DTYPES`; metrics stay float32.
    """
    import depthcurse

    names = check_analyses(only)
    options = options or SuiteOptions()
    out = Path(out)
    model = depthcurse.load(source, dtype=torch_dtype(dtype))
    label = label or source_label(source, model)
    cache_dir = Path(cache_dir) if cache_dir is not None else out / "cache"
    tables = _suite(model, source, label, names, options, cache_dir, progress)
    return _write(Analysis(out, tables), figures, progress)


def same_tokenizer(model_a: Any, model_b: Any) -> tuple[bool, str]:
    """Return whether two models map text to the same token ids, and why not when they differ."""
    vocab_a, vocab_b = model_a.tokenizer.get_vocab(), model_b.tokenizer.get_vocab()
    if len(vocab_a) != len(vocab_b):
        return False, f"vocabularies differ in size: {len(vocab_a)} and {len(vocab_b)} tokens"
    if vocab_a != vocab_b:
        return False, "vocabularies of equal size map tokens to different ids"
    sample = "In the beginning God created the heaven and the earth. To be, or not to be."
    if model_a.tokenizer.encode(sample) != model_b.tokenizer.encode(sample):
        return False, "the same vocabulary splits text differently (different merges)"
    return True, ""


def compare(
    source_a: str | Path,
    source_b: str | Path,
    out: str | Path,
    *,
    only: Iterable[str] | None = None,
    options: SuiteOptions | None = None,
    cache_dir: str | Path | None = None,
    labels: tuple[str, str] | None = None,
    figures: bool = True,
    progress: Callable[[str], None] | None = None,
    dtype: str = "float32",
) -> Analysis:
    """Run the suite on two model sources with the same options and write side-by-side results.

    Both models run in `dtype` (one of `MODEL_DTYPES`); metrics stay float32.

    Tables contain both models' rows, distinguished by the `model` column. The linear map from
    A's residual stream to B's is added as table `linear_map` when the two
    tokenizers agree; otherwise the report says it was skipped and why.
    """
    import depthcurse
    from depthcurse.cache import ResultCache
    from depthcurse.suite import suite_prompts

    names = check_analyses(only)
    options = options or SuiteOptions()
    out = Path(out)
    cache_dir = Path(cache_dir) if cache_dir is not None else out / "cache"
    model_a = depthcurse.load(source_a, dtype=torch_dtype(dtype))
    model_b = depthcurse.load(source_b, dtype=torch_dtype(dtype))
    if labels is None:
        labels = (source_label(source_a, model_a), source_label(source_b, model_b))
    labels = distinct_labels(*labels)
    tables_a = _suite(model_a, source_a, labels[0], names, options, cache_dir, progress)
    tables_b = _suite(model_b, source_b, labels[1], names, options, cache_dir, progress)
    tables = {
        name: pd.concat([tables_a[name], tables_b[name]], ignore_index=True) for name in tables_a
    }
    result = Analysis(out, tables)

    shared, reason = same_tokenizer(model_a, model_b)
    if shared:
        from depthcurse.analyses.linear_map import linear_map

        if progress is not None:
            progress("linear map")
        prompts = suite_prompts(model_a, options)
        digest = cache_digest(source_a, dtype) + cache_digest(source_b, dtype)
        arguments = {"options": options.to_dict(), "labels": list(labels)}
        table = ResultCache(cache_dir).get_or_compute(
            digest, "linear_map", arguments,
            lambda: linear_map(model_a, model_b, prompts, seed=options.seed, batch_size=options.batch_size),
        )
        table["source_model"], table["target_model"] = labels
        table["model"] = f"{labels[0]} → {labels[1]}"
        tables["linear_map"] = table
    else:
        result.notes.append(
            f"The cross-model linear map was skipped: it needs both models to read the same "
            f"token ids, but their tokenizers differ. The {reason}."
        )
        result.notes.append(
            "Held-out NLL is in nats per token of each model's own tokenizer, so it is not "
            "comparable between these two models."
        )
    _write(result, figures, progress)
    result.report = write_report(result, labels, (model_a, model_b))
    return result


# ---------------------------------------------------------------------------
# Summary metrics and the comparison report


def _row(model: str, metric: str, value: float, low: float = np.nan, high: float = np.nan) -> dict:
    return {"model": model, "metric": metric, "value": float(value), "ci_low": low, "ci_high": high}


def _halves(table: pd.DataFrame, metric: str, name: str) -> list[dict]:
    """Return summary rows: a per-layer metric's mean over each half of relative depth l / L.

    With an odd number of layers L the middle layer straddles relative depth 0.5, so it
    belongs to neither half, as in `depthcurse.analyses.compare_halves`.
    """
    from depthcurse.plots.compare import layer_counts

    rows = []
    chosen = table[(table["metric"] == metric) & (table["statistic"] == "mean")]
    for model, group in chosen.groupby("model", sort=False):
        n_layers = int(layer_counts(group).iloc[0])
        half = n_layers // 2
        first = group[group["layer"] < half]["value"].mean()
        second = group[group["layer"] >= n_layers - half]["value"].mean()
        rows.append(_row(model, f"{name}, first half (mean over layers)", first))
        rows.append(_row(model, f"{name}, second half (mean over layers)", second))
        rows.append(_row(model, f"{name}, second half / first half", second / first))
    return rows


def summary_metrics(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Return one row per (model, summary metric): value and, where known, its 95% interval."""
    rows: list[dict] = []

    if "heldout_nll" in tables:
        for r in tables["heldout_nll"].itertuples():
            rows.append(_row(r.model, "held-out NLL (nats/token)", r.nll, r.nll_low, r.nll_high))

    if "contributions" in tables:
        rows += _halves(tables["contributions"], "layer", "relative contribution ‖a+m‖/‖h‖")

    if "depth_score" in tables:
        for r in tables["depth_score"].itertuples():
            rows.append(_row(r.model, f"depth score, {r.prompt_set}, {r.source}", r.value, r.ci_low, r.ci_high))

    if "logit_lens" in tables:
        lens = tables["logit_lens"]
        for model, group in lens[lens["metric"] == "kl"].groupby("model", sort=False):
            inner = group[group["layer"] < group["layer"].max()]
            rows.append(_row(model, "logit-lens KL, mean over layers before the output", inner["value"].mean()))

    if "skip_effects" in tables:
        skips = tables["skip_effects"]
        chosen = skips[(skips["metric"] == "output_change") & (skips["part"] == "layer")]
        for model, group in chosen.groupby("model", sort=False):
            rows.append(_row(model, "output change of a layer skip, mean over layers", group["value"].mean()))

    if "pruning" in tables:
        pruning = tables["pruning"]
        for model, group in pruning[pruning["metric"] == "delta_nll_remove"].groupby("model", sort=False):
            rows.append(_row(model, "Δ NLL of removing one layer, mean over layers", group["value"].mean()))
            rows.append(_row(model, "Δ NLL of removing one layer, max over layers", group["value"].max()))

    if "perturbations" in tables:
        perturbations = tables["perturbations"]
        chosen = perturbations[(perturbations["metric"] == "delta_nll") & (perturbations["kind"] == "swap")]
        for (model, level), group in chosen.groupby(["model", "level"], sort=False):
            rows.append(_row(model, f"Δ NLL of a {level} swap, mean over positions", group["value"].mean()))

    if "evaluation" in tables:
        for (model, task), group in tables["evaluation"].groupby(["model", "task"], sort=False):
            rows.append(_row(model, f"{task} accuracy, mean over levels", group["accuracy"].mean()))

    if "symmetry" in tables:
        symmetry = tables["symmetry"]
        for r in symmetry[symmetry["region"] == "all"].itertuples():
            rows.append(_row(r.model, f"mirror asymmetry of {r.matrix} similarity", r.value))

    return pd.DataFrame(rows, columns=["model", "metric", "value", "ci_low", "ci_high"])


def _verdict(a: Any, b: Any) -> str:
    if np.isfinite([a.ci_low, a.ci_high, b.ci_low, b.ci_high]).all():
        disjoint = a.ci_high < b.ci_low or b.ci_high < a.ci_low
        return "yes, intervals disjoint" if disjoint else "no, intervals overlap"
    scale = max(abs(a.value), abs(b.value))
    relative = abs(b.value - a.value) / scale if scale > 0 else 0.0
    return f"{100 * relative:.0f}% apart, no interval"


def _cell(row: Any) -> str:
    if np.isfinite([row.ci_low, row.ci_high]).all():
        return f"{row.value:.4g} [{row.ci_low:.4g}, {row.ci_high:.4g}]"
    return f"{row.value:.4g}"


def comparison_table(summary: pd.DataFrame, labels: tuple[str, str]) -> list[str]:
    """Return Markdown lines: one row per metric with both models, B − A and a verdict."""
    lines = [
        f"| metric | {labels[0]} | {labels[1]} | B − A | differ? |",
        "|---|---|---|---|---|",
    ]
    for metric, group in summary.groupby("metric", sort=False):
        by_model = {row.model: row for row in group.itertuples()}
        if labels[0] not in by_model or labels[1] not in by_model:
            continue
        a, b = by_model[labels[0]], by_model[labels[1]]
        lines.append(
            f"| {metric} | {_cell(a)} | {_cell(b)} | {b.value - a.value:+.4g} | {_verdict(a, b)} |"
        )
    return lines


def _depth_ranges(labels: tuple[str, str], n_layers: tuple[int, int], offset: int) -> str:
    """Return each model's depth-score range 0 to L − offset as "A (LABEL): 0 to N, B (LABEL): ..."."""
    return ", ".join(
        f"{name} ({label}): 0 to {layers - offset}"
        for name, label, layers in zip(("A", "B"), labels, n_layers, strict=True)
    )


def metric_definitions(
    summary: pd.DataFrame,
    tables: dict[str, pd.DataFrame],
    labels: tuple[str, str],
    n_layers: tuple[int, int],
) -> list[str]:
    """Return a Markdown bullet defining each term of the summary's metric names that needs one.

    Only terms that occur in `summary` are defined: the depth score from layer effects
    (`layer_effect`) and from output effects (`output_effect`), and mirror asymmetry.
    """
    metrics = set(summary["metric"])
    lines = []
    if any(metric.endswith(", layer_effect") for metric in metrics):
        scores = tables.get("depth_score")
        settings = ""
        if scores is not None and {"mode", "reduction", "statistic"} <= set(scores.columns):
            first = scores.iloc[0]
            settings = (
                f" Here layers are skipped in {first['mode']} mode, and effects are reduced by "
                f"{first['reduction']} over positions and by {first['statistic']} over prompts."
            )
        lines.append(
            "- **depth score, *prompt set*, layer_effect**: the depth score of Csordás et al. "
            "(2025, arXiv 2505.13898) on that prompt set, from layer effects. Skipping layer s changes "
            "the update Δ_j that each later layer j adds to the residual stream by "
            "E[s, j] = ‖Δ_j^clean − Δ_j^skip‖₂ / ‖Δ_j^clean‖₂. With e_s the mean of E[s, j] over "
            "j > s, the score Σ_s s·e_s / Σ_s e_s is the centre of mass of e_s over the 0-based "
            f"layers s. It runs from 0 to L − 2 ({_depth_ranges(labels, n_layers, 2)}). A higher "
            f"score means that skipping late layers changes more, so the model uses its depth "
            f"more.{settings}"
        )
    if any(metric.endswith(", output_effect") for metric in metrics):
        lines.append(
            "- **depth score, *prompt set*, output_effect**: the same centre of mass, with e_s = "
            "‖p_skip − p_clean‖₂, the L2 distance between the next-token distributions with "
            "and without layer s (not a KL). It runs from 0 to L − 1 "
            f"({_depth_ranges(labels, n_layers, 1)})."
        )
    if any(metric.startswith("mirror asymmetry of ") for metric in metrics):
        lines.append(
            "- **mirror asymmetry of *M* similarity**: ‖S − J S J‖_F / ‖S‖_F, where S is the "
            "L × L matrix of cosine similarities between the flattened M weights of every "
            "pair of layers, and J reverses the layer order. M = all concatenates each layer's "
            "seven weight matrices (q, k, v, o, gate, up, down). It is 0 when S is mirrored "
            "about the middle layer, a pattern that LIDAS growth is reported to leave, and at "
            "most 2."
        )
    return lines


def write_report(result: Analysis, labels: tuple[str, str], models: tuple[Any, Any]) -> Path:
    """Write `report.md` into the output folder: the models, their summary metrics, the notes."""
    summary = summary_metrics(result.tables)
    summary.to_csv(result.out / "summary.csv", index=False)
    lines = [f"# Comparison of {labels[0]} (A) and {labels[1]} (B)", "", "## Models", ""]
    for label, model in zip(labels, models, strict=True):
        lines.append(f"- **{label}**: {model.cfg.n_layers} layers, d_model {model.cfg.d_model}; "
                     f"{model.depthcurse_info.describe()}")
    lines += [
        "",
        "Per-layer curves are drawn on relative depth l / L, layer index l over the number of "
        "layers L (the output at 1), because the models may differ in depth. Each model reads "
        "validation prompts tokenized by its own tokenizer. "
        "Intervals are 95% bootstrap intervals where the analysis computes one. "
        "\"differ?\" compares intervals where both exist and otherwise gives the relative gap.",
        "",
        "## Summary metrics",
        "",
    ]
    n_layers = (int(models[0].cfg.n_layers), int(models[1].cfg.n_layers))
    definitions = metric_definitions(summary, result.tables, labels, n_layers)
    if definitions:
        lines += ["Terms in the metric names:", "", *definitions, ""]
    lines += [*comparison_table(summary, labels), ""]
    if "linear_map" in result.tables:
        table = result.tables["linear_map"]
        best = table.loc[table.groupby("source_layer")["value"].idxmin()]
        matched = ", ".join(f"{int(r.source_layer)}→{int(r.target_layer)}" for r in best.itertuples())
        lines += [
            "## Linear map",
            "",
            f"Lowest relative error target layer of B for each source layer of A: {matched}; "
            f"mean of those errors {best['value'].mean():.3f}.",
            "",
        ]
    if result.notes:
        lines += ["## Notes", "", *[f"- {note}" for note in result.notes], ""]
    if result.figures:
        lines += ["## Figures", "", *[f"- `figures/{p.name}`" for p in result.figures if p.suffix == ".png"], ""]
    path = result.out / "report.md"
    path.write_text("\n".join(lines))
    return path
