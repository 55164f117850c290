"""Draw every figure from saved analysis tables, with no model loaded.

`make_figures(tables_or_folder, out_dir)` looks up each table name in the
registry of `FigureSpec`s (`_registry`), draws its figures and writes each
as PDF and PNG. How a table is drawn depends on what it holds:

- one model: the analysis' own plot (`depthcurse.plots.stream`, `lens`,
  `interventions`, `runs`);
- several models: per-layer curves overlaid on relative depth l / L (layer
  index over the number of layers, so the output h_L is at 1), matrices and bar
  charts once per model, and for exactly two models a difference heat map;
- a `step` (or `stage`) column with several values per model: the per-layer
  curves once more with one line per checkpoint, and every other figure from
  each model's last checkpoint.

A folder may also contain training runs (`metrics.jsonl` with `run.json`),
found at any depth, which give the loss-against-compute figure.

Every figure carries a caption built from the table's convention columns:
position 0 excluded or not, model and metric dtype, KL direction, TransformerLens
weight processing, and each model's note (for GGUF models, the quantization).
"""

from __future__ import annotations

import logging
import re
import textwrap
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

log = logging.getLogger(__name__)

FORMATS = ("pdf", "png")
PAPER_STYLE = {
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 6,
    "savefig.dpi": 200,
    "pdf.fonttype": 42,
    "text.usetex": False,
}
STAGE_COLUMNS = ("step", "stage")


@dataclass(frozen=True)
class FigureSpec:
    """Description of one figure: the table it reads and the plot functions that draw it."""

    name: str
    """File stem of the figure."""
    table: str
    """Name of the table it is drawn from."""
    draw: Callable[[pd.DataFrame], Figure]
    """Plot of one model's rows (or of all models when `all_models`)."""
    overlay: Callable[[pd.DataFrame], Figure] | None = None
    """Plot of several models' rows in one figure; None draws `draw` once per model."""
    stages: Callable[[pd.DataFrame, str], Figure] | None = None
    """Plot of one model's rows over checkpoints, given the step or stage column."""
    difference: Callable[[pd.DataFrame, tuple[str, str]], Figure] | None = None
    """Plot of the difference between exactly two models."""
    all_models: bool = False
    """`draw` takes rows of any number of models."""
    last_checkpoint: bool = True
    """Draw only each model's last step when the table has several (False: all rows)."""
    heading: str = ""
    """Report heading of the analysis; figures with the same heading are shown together."""
    caption: str = ""
    """One line for the report: what is plotted and which direction means more use of depth."""


def _curves(metrics: list[str], title: str, log_scale: bool = False) -> Callable:
    from depthcurse.plots.compare import plot_relative_depth

    def draw(table: pd.DataFrame) -> Figure:
        return plot_relative_depth(table, metrics, title=title, log=log_scale)

    return draw


def _stage_curves(metrics: list[str]) -> Callable:
    from depthcurse.plots.runs import plot_over_stages

    def draw(table: pd.DataFrame, by: str) -> Figure:
        return plot_over_stages(table, metrics, by=by)

    return draw


def _lens(table: pd.DataFrame) -> Figure:
    from depthcurse.plots.lens import plot_lens

    return plot_lens(table, ("kl", "top5_overlap", "top1_agreement", "accuracy"))


def _lens_overlay(table: pd.DataFrame) -> Figure:
    from depthcurse.plots.compare import plot_relative_depth

    return plot_relative_depth(
        table, ["kl", "top5_overlap", "accuracy"], title="Lens read-outs", group="lens"
    )


# Axis names of the long tables' index columns, as the single-model figures write them.
AXIS_NAMES = {
    ("skip_layer", "layer"): ("skipped layer s", "effect at layer j"),
    ("layer", "other_layer"): ("layer", "layer"),
}


def _matrix_difference(
    metric_column: str, metric: str, row: str, column: str, title: str, **filters: str
) -> Callable:
    from depthcurse.plots.compare import layer_matrix, plot_difference

    def draw(table: pd.DataFrame, models: tuple[str, str]) -> Figure:
        rows = table[table[metric_column] == metric]
        for key, value in filters.items():
            rows = rows[rows[key] == value]
        if rows.empty:
            raise ValueError(f"no {metric} rows to compare")
        matrices = [layer_matrix(rows[rows["model"] == m], row, column) for m in models]
        names = AXIS_NAMES.get((row, column), (row, column))
        return plot_difference(*matrices, models, title=title, axis_labels=names)

    return draw


def _skip_difference(table: pd.DataFrame, models: tuple[str, str]) -> Figure:
    statistic = "max" if (table["statistic"] == "max").any() else str(table["statistic"].iloc[0])
    draw = _matrix_difference(
        "metric", "relative_change", "skip_layer", "layer",
        f"Layer skip effects ({statistic})", part="layer", statistic=statistic,
    )
    return draw(table, models)


def _registry() -> tuple[FigureSpec, ...]:
    from depthcurse.plots import interventions, runs, stream

    norms = ["norm_h", "norm_a", "norm_m"]
    shares = ["attn", "mlp", "layer"]
    return (
        FigureSpec(
            "residual_norms", "residual_norms", stream.plot_residual_norms,
            overlay=_curves(norms, "Residual stream norms", log_scale=True),
            stages=_stage_curves(norms), heading="Residual stream norms",
            caption="Mean L2 norm of the residual stream h_l and of the attention (a_l) and MLP "
            "(m_l) outputs per layer, log scale. Layer outputs that keep pace with a growing "
            "‖h_l‖ in late layers mean more use of depth.",
        ),
        FigureSpec(
            "contributions", "contributions", stream.plot_contributions,
            # Log scale: layer 0 often writes tens of times the embedding's norm, which
            # flattens every later layer on a linear axis.
            overlay=_curves(shares, "Relative contribution to the residual stream", log_scale=True),
            stages=_stage_curves(shares), heading="Relative contributions",
            caption="Mean ‖a_l‖/‖h_l‖ (attn), ‖m_l‖/‖h_l+a_l‖ (mlp) and ‖a_l+m_l‖/‖h_l‖ (layer) "
            "per layer, log scale. Higher values in the second half of the layers mean more use "
            "of depth.",
        ),
        FigureSpec(
            "cosines", "cosines", stream.plot_cosines,
            overlay=_curves([], "Cosine similarities"), stages=_stage_curves([]),
            heading="Cosine similarities",
            caption="Mean cosine between each layer's updates and the residual stream they are "
            "added to, and between h_{l+1} and h_l. cos(h_next,h) near 1 in late layers means "
            "they barely turn the stream (less use of depth).",
        ),
        FigureSpec(
            "lens", "lens", _lens, overlay=_lens_overlay,
            stages=_stage_curves(["kl"]), heading="Logit and tuned lens",
            caption="KL divergence to the final output, top-5 overlap and accuracy of the "
            "prediction the logit and tuned lens read from h_l. A lens that matches the output "
            "only near the last layer means late layers still change the prediction (more use "
            "of depth).",
        ),
        FigureSpec(
            "layer_similarity", "layer_similarity", stream.plot_layer_similarity,
            difference=_matrix_difference(
                "metric", "delta", "layer", "other_layer", "Similarity of layer updates"
            ),
            heading="Layer similarity",
            caption="Cosine similarity of the updates (delta) and residual streams (resid) of "
            "every pair of layers. A bright block of late layers means they write similar "
            "updates (less use of depth).",
        ),
        FigureSpec(
            "weight_similarity", "weight_similarity", stream.plot_layer_similarity,
            heading="Weight similarity",
            caption="Cosine similarity of each weight matrix between every pair of layers. "
            "Layers copied by growth show as bright off-diagonal entries; this shows how a "
            "model was grown, not how much it uses its depth.",
        ),
        FigureSpec(
            "skip_effects", "skip_effects", interventions.plot_skip_matrix,
            difference=_skip_difference, heading="Layer skipping",
            caption="Relative change of layer j's output (columns) when layer s (rows) is "
            "skipped. Large effects in late rows mean later layers build on late layers (more "
            "use of depth).",
        ),
        FigureSpec(
            "output_change", "skip_effects", interventions.plot_output_change,
            heading="Layer skipping",
            caption="Change ‖p_skip − p_clean‖₂ of the output distribution when each layer is "
            "skipped. Large values for late layers mean the output depends on them (more use of "
            "depth).",
        ),
        FigureSpec(
            "depth_score", "depth_score", interventions.plot_depth_scores,
            heading="Depth score",
            caption="Depth score Σ_s s·e_s / Σ_s e_s, the centre of mass over skipped layers s "
            "of their skip effects e_s, per prompt set with a bootstrap 95% interval. From "
            "layer effects, e_s is the mean relative change of the updates of the later layers "
            "j > s when layer s is skipped, and the score runs from 0 to L − 2. From output "
            "effects, e_s is ‖p_skip − p_clean‖₂, the change of the next-token distribution, "
            "and the score runs from 0 to L − 1. Higher means more use of depth.",
        ),
        FigureSpec(
            "perturbations", "perturbations", interventions.plot_perturbations,
            heading="Layer and block perturbations",
            caption="Δ NLL (nats/token) of each perturbation (rows) at each layer or block "
            "position (columns). A large Δ NLL at late positions means the model relies on its "
            "late layers (more use of depth).",
        ),
        FigureSpec(
            "pruning", "pruning", interventions.plot_pruning, heading="Pruning metrics",
            caption="Block influence 1 − cos(h_l, h_{l+1}) per layer, Δ NLL of removing each "
            "layer, and the angular distance between h_l and h_{l+n}. Low values for late "
            "layers mean they could be removed at little cost (less use of depth).",
        ),
        FigureSpec(
            "looping", "looping", interventions.plot_loop, heading="Looping a block",
            caption="Each metric against the number of passes through the looped middle block "
            "at inference.",
        ),
        FigureSpec(
            "periodicity", "periodicity", interventions.plot_periodicity,
            heading="Periodicity",
            caption="Autocorrelation over lag of the attention, MLP and layer contributions, "
            "with each sequence's dominant period. A peak at lag b (the growth block size) is "
            "the signature of depth growth, not a measure of use of depth.",
        ),
        FigureSpec(
            "symmetry", "symmetry", interventions.plot_symmetry, heading="Weight symmetry",
            caption="Mirror asymmetry ‖S − JSJ‖_F/‖S‖_F (0 to 2) of each module's "
            "weight-similarity matrix S, where J reverses the layer order. 0 means a pattern "
            "mirrored about the middle layer, which LIDAS growth is reported to leave.",
        ),
        FigureSpec(
            "linear_map", "linear_map", interventions.plot_linear_map, all_models=True,
            heading="Linear map between models",
            caption="Mean relative error of a ridge linear map from model A's residual stream "
            "at each layer to model B's, on held-out tokens. Low error means B's layer holds "
            "what A's layer holds.",
        ),
        FigureSpec(
            "evaluation", "evaluation", runs.plot_evaluation, all_models=True,
            heading="Reasoning primitives",
            caption="Accuracy on generated reasoning tasks per level, harder to the right, with "
            "95% intervals and chance.",
        ),
        FigureSpec(
            "heldout_nll", "heldout_nll", runs.plot_heldout_nll, all_models=True,
            heading="Held-out NLL",
            caption="Held-out NLL per model with its bootstrap interval; lower is better.",
        ),
        FigureSpec(
            "loss_vs_compute", "training_curves", runs.plot_loss_vs_compute, all_models=True,
            last_checkpoint=False, heading="Loss against compute",
            caption="Training and held-out loss against the training FLOPs spent so far, log "
            "scale. A curve left of and below the baseline's reaches that loss with less "
            "compute.",
        ),
    )


@dataclass(frozen=True)
class FigureDescription:
    """Report heading, one-line caption and report order of one figure file."""

    heading: str
    caption: str
    order: int


def describe_figure(stem: str) -> FigureDescription:
    """Return the heading and caption of a figure file stem that `make_figures` wrote.

    Stems are ``NAME``, ``NAME-MODEL``, ``NAME-difference`` or ``NAME-over-step-MODEL``
    (or ``-over-stage-``), where NAME is a `FigureSpec` name and contains no hyphen.
    """
    specs = _registry()
    name, _, rest = stem.partition("-")
    order = next((index for index, spec in enumerate(specs) if spec.name == name), None)
    if order is None:
        return FigureDescription("Other figures", "", len(specs))
    caption = specs[order].caption
    over = re.fullmatch(r"over-(step|stage)-(.+)", rest)
    if over:
        caption = f"{over.group(2)}, one line per checkpoint {over.group(1)}. {caption}"
    elif rest == "difference":
        caption = f"The two models and their difference. {caption}"
    elif rest:
        caption = f"{rest}. {caption}"
    return FigureDescription(specs[order].heading, caption, order)


def figure_caption(table: pd.DataFrame) -> str:
    """Return the conventions stored in a table's columns as one caption."""
    first = table.iloc[0]
    parts = []
    if "exclude_pos0" in table.columns:
        excluded = bool(first["exclude_pos0"])
        parts.append("position 0 " + ("excluded" if excluded else "included"))
    if "dtype" in table.columns:
        dtypes = ", ".join(map(str, table["dtype"].dropna().unique()))
        metric = first.get("metric_dtype", None)
        parts.append(f"model dtype {dtypes}" + (f", metrics in {metric}" if metric else ""))
    has_kl = "metric" in table.columns and (table["metric"] == "kl").any()
    if has_kl and "kl_direction" in table.columns and first["kl_direction"] not in (None, "n/a"):
        direction = str(first["kl_direction"]).replace("||", " ‖ ")
        parts.append(f"KL({direction})")
    if "weight_processing" in table.columns:
        processed = bool(table["weight_processing"].fillna(False).astype(bool).any())
        parts.append("TransformerLens weight processing " + ("on" if processed else "off"))
    if "mode" in table.columns and "reduction" in table.columns:
        parts.append(f"skip mode {first['mode']}, {first['reduction']} over positions")
    if "flops" in table.columns:
        parts.append(
            "training FLOPs per token = 6 × (layer and unembedding parameters) "
            "+ 12 × depth × seq_len × d_model, summed over the tokens trained at each depth"
        )
    if "note" in table.columns and "model" in table.columns:
        notes = table[["model", "note"]].dropna().drop_duplicates()
        for model, note in notes.itertuples(index=False):
            if str(note).strip():
                parts.append(f"{model}: {note}")
    return textwrap.fill("; ".join(parts), width=140)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text)).strip("_") or "model"


def _stage_column(table: pd.DataFrame) -> str | None:
    for column in STAGE_COLUMNS:
        if column in table.columns and table.groupby("model")[column].nunique().max() > 1:
            return column
    return None


def _last_checkpoint(table: pd.DataFrame, column: str) -> pd.DataFrame:
    """Keep each model's rows of its last checkpoint, and all rows of models without one."""
    last = table.groupby("model")[column].transform("max")
    return table[(table[column] == last) | last.isna()]


def prepare_tables(tables: Mapping[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Return the tables with derived ones added: `lens` joins the logit and tuned lens."""
    prepared = {name: table for name, table in tables.items() if not table.empty}
    lenses = [prepared[name] for name in ("logit_lens", "tuned_lens") if name in prepared]
    if lenses:
        prepared["lens"] = pd.concat(lenses, ignore_index=True)
    for name, table in prepared.items():
        if "model" not in table.columns:
            prepared[name] = table.assign(model="model")
    return prepared


def planned_figures(tables: Mapping[str, pd.DataFrame]) -> list[tuple[str, Callable[[], Figure], pd.DataFrame]]:
    """Return (file stem, drawing call, table for the caption) for every figure the tables allow."""
    plans = []
    for spec in _registry():
        table = tables.get(spec.table)
        if table is None:
            continue
        by = _stage_column(table) if spec.last_checkpoint else None
        if by is not None and spec.stages is not None:
            for model, rows in table.groupby("model", sort=False):
                if rows[by].nunique() < 2:
                    continue
                stem = f"{spec.name}-over-{by}-{_slug(model)}"
                plans.append((stem, lambda s=spec, r=rows, b=by: s.stages(r, b), rows))
        if by is not None:
            table = _last_checkpoint(table, by)
        models = list(dict.fromkeys(table["model"]))
        if spec.all_models or len(models) == 1:
            plans.append((spec.name, lambda s=spec, t=table: s.draw(t), table))
        elif spec.overlay is not None:
            plans.append((spec.name, lambda s=spec, t=table: s.overlay(t), table))
        else:
            for model in models:
                rows = table[table["model"] == model]
                plans.append((f"{spec.name}-{_slug(model)}", lambda s=spec, r=rows: s.draw(r), rows))
        if spec.difference is not None and len(models) == 2:
            pair = (models[0], models[1])
            plans.append(
                (f"{spec.name}-difference", lambda s=spec, t=table, p=pair: s.difference(t, p), table)
            )
    return plans


def save_figure(
    fig: Figure, stem: Path, caption: str = "", formats: tuple[str, ...] = FORMATS
) -> list[Path]:
    """Write `fig` with `caption` under it as `stem.pdf` and `stem.png`, then close it."""
    import matplotlib.pyplot as plt

    if caption:
        # Drop captions the plot functions drew themselves, so there is exactly one.
        for text in list(fig.texts):
            if text is not getattr(fig, "_suptitle", None):
                text.remove()
        fig.text(0.5, 0.0, caption, ha="center", va="top", fontsize=6, wrap=False)
    paths = []
    for suffix in formats:
        path = stem.with_suffix(f".{suffix}")
        fig.savefig(path, bbox_inches="tight", pad_inches=0.05)
        paths.append(path)
    plt.close(fig)
    return paths


def find_training_runs(folder: Path) -> list[Path]:
    """Return every folder under `folder` that contains run.json and metrics.jsonl."""
    return sorted(
        path.parent for path in folder.rglob("metrics.jsonl") if (path.parent / "run.json").is_file()
    )


def load_results(folder: str | Path) -> dict[str, pd.DataFrame]:
    """Read the tables saved in `folder` (or its `tables/` subfolder) and its training runs."""
    from depthcurse.plots.runs import training_curves
    from depthcurse.suite import load_tables

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"results folder {folder} does not exist; pass the --out folder of an analysis")
    tables: dict[str, pd.DataFrame] = {}
    for candidate in (folder, folder / "tables"):
        if candidate.is_dir() and any(candidate.glob("*.parquet")):
            tables.update(load_tables(candidate))
    runs = find_training_runs(folder)
    if runs and "training_curves" not in tables:
        tables["training_curves"] = training_curves(runs, root=folder)
    if not tables:
        raise FileNotFoundError(
            f"{folder} contains no .parquet tables (there or in tables/) and no training runs; "
            "run `depthcurse analyze` or `depthcurse reproduce` first"
        )
    return tables


def make_figures(
    tables_or_folder: Mapping[str, pd.DataFrame] | str | Path,
    out_dir: str | Path,
    *,
    strict: bool = True,
    formats: tuple[str, ...] = FORMATS,
) -> list[Path]:
    """Draw every figure the tables allow into `out_dir` as PDF and PNG; return the files.

    `tables_or_folder` is {table name: table} or a results folder (see
    `load_results`). With `strict=False` a figure that fails is logged and
    skipped instead of raising.
    """
    import matplotlib

    if isinstance(tables_or_folder, (str, Path)):
        tables = load_results(tables_or_folder)
    else:
        tables = dict(tables_or_folder)
    if not tables:
        raise ValueError("no tables given; nothing to draw")
    tables = prepare_tables(tables)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    with matplotlib.rc_context(PAPER_STYLE):
        for stem, draw, table in planned_figures(tables):
            try:
                fig = draw()
            except (ValueError, KeyError, TypeError, IndexError) as err:
                if strict:
                    raise ValueError(f"figure {stem} failed: {err}") from err
                log.warning("skipped figure %s: %s", stem, err)
                continue
            written += save_figure(fig, out_dir / stem, figure_caption(table), formats)
    return written
