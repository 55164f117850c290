"""The main job: train every variant of a study recipe, analyse the runs, write the report.

`reproduce` runs in four phases. The first three print an estimate of the
time left, and draw progress bars only when stderr is a terminal:

1. train every variant x seed into ``OUT/runs/VARIANT-seedS``, reusing
   finished runs and resuming interrupted ones;
2. run the analysis suite on each final checkpoint, the residual-stream
   analyses on the last checkpoint of every growth stage, and copy divergence
   on each grown run (tables cached in ``OUT/cache``);
3. run the suite on the public model;
4. write tidy tables to ``OUT/tables``, figures to ``OUT/figures`` and the
   report to ``OUT/report.md`` and ``OUT/report.html``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from depthcurse.cache import ResultCache
from depthcurse.recipe import StudyRecipe, load_study_recipe
from depthcurse.suite import progress_bars

DEFAULT_RECIPE = Path("analyses/tiny.toml")
DEFAULT_OUT = Path("results/tiny")


@dataclass
class RunRecord:
    """One trained run of the study and how this call obtained it."""

    variant: str
    seed: int
    folder: Path
    status: str  # "reused", "resumed" or "trained"
    seconds: float = 0.0

    @property
    def label(self) -> str:
        return f"{self.variant}-seed{self.seed}"


@dataclass
class StudyResult:
    """Outputs of `reproduce`: runs, tables, findings, report paths and the seconds per phase."""

    out: Path
    runs: list[RunRecord]
    tables: dict[str, pd.DataFrame]
    findings: pd.DataFrame
    figures: list[Path]
    report: Path
    html: Path
    timings: dict[str, float] = field(default_factory=dict)


class Eta:
    """Printed estimate of the time left in a phase from the work done so far in it."""

    def __init__(self, name: str, total: float, echo: Callable[[str], None]) -> None:
        self.name, self.total, self.echo = name, total, echo
        self.done = 0.0
        self.timed_work = 0.0
        self.timed_seconds = 0.0

    def advance(self, work: float, seconds: float | None) -> None:
        """Record `work` units finished in `seconds` (None: reused, so not timed)."""
        self.done += work
        if seconds is not None:
            self.timed_work += work
            self.timed_seconds += seconds
        left = self.total - self.done
        if left <= 1e-9 * self.total:
            self.echo(f"[{self.name}] done")
        elif self.timed_work > 0:
            minutes = left * self.timed_seconds / self.timed_work / 60
            percent = 100 * self.done / self.total
            self.echo(f"[{self.name}] {percent:.0f}% done; about {minutes:.1f} min left (estimate)")


# Relative cost of each analysis on the public model, in minutes of one measured run of the
# default recipe on a shared 2-core CPU (docs/study.md): perturbations 3.2 and the depth score
# 1.8 of 6.3 minutes. Only the ratios enter the estimate, which is scaled by the times
# measured as the phase runs.
# NOTE: analyses without an entry were not timed one by one. DEFAULT_ANALYSIS_COST is a
# guess: loading and the other 7 analyses took 1.3 minutes together.
ANALYSIS_COST = {"perturbations": 3.2, "depth_score": 1.8}
DEFAULT_ANALYSIS_COST = 0.15


class RecordingCache(ResultCache):
    """A result cache that records which analyses it read instead of computing them."""

    def __init__(self, folder: str | Path) -> None:
        super().__init__(folder)
        self.read: set[str] = set()

    def get_or_compute(
        self,
        model_digest: str,
        analysis: str,
        arguments: dict[str, Any],
        compute: Callable[[], pd.DataFrame],
    ) -> pd.DataFrame:
        computed = []

        def run() -> pd.DataFrame:
            computed.append(analysis)
            return compute()

        table = super().get_or_compute(model_digest, analysis, arguments, run)
        if not computed:
            self.read.add(analysis)
        return table


class SuiteProgress:
    """`run_suite` progress callback that prints each analysis and an estimate of the time left.

    The estimate weighs the analyses still to run by `ANALYSIS_COST` and scales the weights by
    the seconds the computed ones took. Tables read from `cache` count as done but not timed.
    """

    def __init__(
        self, phase: str, names: tuple[str, ...], cache: RecordingCache, echo: Callable[[str], None]
    ) -> None:
        self.phase, self.cache, self.echo = phase, cache, echo
        self.costs = {name: ANALYSIS_COST.get(name, DEFAULT_ANALYSIS_COST) for name in names}
        self.eta = Eta(phase, sum(self.costs.values()), echo)
        self.started = time.perf_counter()
        self.current: str | None = None
        self.current_started = 0.0

    def __call__(self, name: str) -> None:
        self.finish()
        self.current, self.current_started = name, time.perf_counter()
        self.echo(f"[{self.phase}] {name} ({self.current_started - self.started:.0f} s so far)")

    def finish(self) -> None:
        """Count the running analysis as done; call once more after `run_suite` returns."""
        if self.current is None:
            return
        name, self.current = self.current, None
        seconds = None if name in self.cache.read else time.perf_counter() - self.current_started
        self.eta.advance(self.costs[name], seconds)


# ---------------------------------------------------------------------------
# Phase 1: training


def run_status(folder: Path, cfg: Any) -> str:
    """Return "new", "finished" or "partial" for the run folder of `cfg`."""
    from depthcurse.train import check_run_folder, latest_checkpoint, saved_config

    if saved_config(folder) is None:
        return "new"
    check_run_folder(folder, cfg.resolved(), resume=True)  # raises if the folder has another run
    last = latest_checkpoint(folder)
    if last is not None and int(last.name.removeprefix("step-")) >= cfg.max_steps:
        return "finished"
    return "partial"


def train_runs(
    recipe: StudyRecipe, out: Path, echo: Callable[[str], None], progress: bool = True
) -> list[RunRecord]:
    """Train (or reuse, or resume) every variant x seed of the recipe."""
    from tqdm.auto import tqdm

    from depthcurse.growth import compute_fraction
    from depthcurse.train import make_stage_plan
    from depthcurse.train import train as run_training

    jobs = []
    for variant in recipe.variants:
        for seed in recipe.seeds:
            cfg = recipe.train_config(variant, seed)
            resolved = cfg.resolved()
            plan = make_stage_plan(resolved, resolved.model_config())
            cost = compute_fraction(resolved.model_config(), plan.depths, plan.lengths, resolved.seq_len)
            jobs.append((variant, seed, cfg, cost))
    eta = Eta("training", sum(cost for *_, cost in jobs), echo)
    records = []
    progress = progress and progress_bars()
    bar = tqdm(jobs, desc="train runs", unit="run", disable=not progress, position=0)
    for variant, seed, cfg, cost in bar:
        folder = out / "runs" / f"{variant}-seed{seed}"
        bar.set_postfix_str(folder.name)
        status = run_status(folder, cfg)
        if status == "finished":
            records.append(RunRecord(variant, seed, folder, "reused"))
            eta.advance(cost, None)
            continue
        cfg.progress = progress
        started = time.perf_counter()
        run_training(cfg, folder, resume=status == "partial")
        seconds = time.perf_counter() - started
        records.append(
            RunRecord(variant, seed, folder, "resumed" if status == "partial" else "trained", seconds)
        )
        eta.advance(cost, seconds)
    bar.close()
    return records


# ---------------------------------------------------------------------------
# Phase 2 and 3: analyses


def stage_checkpoints(run: Path) -> list[tuple[int, int, Path]]:
    """Return (stage, step, folder) of the last checkpoint written in each growth stage."""
    from depthcurse.checkpoint import read_metadata
    from depthcurse.train import checkpoint_folders

    last: dict[int, tuple[int, Path]] = {}
    for step, folder in checkpoint_folders(run):
        stage = int(read_metadata(folder)["stage"])
        if stage not in last or step > last[stage][0]:
            last[stage] = (step, folder)
    return [(stage, step, folder) for stage, (step, folder) in sorted(last.items())]


def _tag(table: pd.DataFrame, **columns: Any) -> pd.DataFrame:
    table = table.copy()
    for name, value in columns.items():
        table[name] = value
    if "seed" in table.columns:
        table["seed"] = table["seed"].astype("Int64")
    return table


class TableCollector:
    """Lists of per-model tables, concatenated by analysis name at the end."""

    def __init__(self) -> None:
        self.parts: dict[str, list[pd.DataFrame]] = {}

    def add(self, name: str, table: pd.DataFrame) -> None:
        self.parts.setdefault(name, []).append(table)

    def add_all(self, tables: dict[str, pd.DataFrame], **columns: Any) -> None:
        for name, table in tables.items():
            self.add(name, _tag(table, **columns))

    def tables(self) -> dict[str, pd.DataFrame]:
        return {name: pd.concat(parts, ignore_index=True) for name, parts in self.parts.items()}


def analyse_runs(
    recipe: StudyRecipe,
    runs: list[RunRecord],
    out: Path,
    collector: TableCollector,
    echo: Callable[[str], None],
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Run the suite on each final checkpoint and the stage analyses on every stage checkpoint."""
    from tqdm.auto import tqdm

    import depthcurse
    from depthcurse.analyses import copy_divergence
    from depthcurse.cache import ResultCache, model_hash
    from depthcurse.suite import run_suite

    cache = ResultCache(out / "cache")
    models = []
    jobs = []
    for run in runs:
        stages = stage_checkpoints(run.folder)
        if not stages:
            raise FileNotFoundError(f"{run.folder} has no complete checkpoint; delete it and rerun")
        for stage, step, folder in stages:
            jobs.append((run, stage, step, folder, folder == stages[-1][2]))
    # A final checkpoint runs the whole suite: count it as several stage checkpoints.
    weight = {True: 1 + len(recipe.only), False: 1}
    eta = Eta("analyses", sum(weight[final] for *_, final in jobs), echo)
    bar = tqdm(
        jobs, desc="analyse checkpoints", unit="ckpt", disable=not (progress and progress_bars()),
        position=0,
    )
    for run, stage, step, folder, final in bar:
        started = time.perf_counter()
        bar.set_postfix_str(f"{run.label} stage {stage}")
        model = depthcurse.load(folder)
        digest = model_hash(folder)
        columns = {"variant": run.variant, "seed": run.seed, "run": run.label}
        if not final:
            # The final checkpoint's rows of these analyses come from the full suite below.
            tables = run_suite(
                model, only=recipe.stage_analyses, options=recipe.options, label=run.label,
                cache=cache, model_digest=digest,
            )
            collector.add_all(tables, stage=stage, step=step, **columns)
        else:
            def show(name: str, run: RunRecord = run) -> None:
                bar.set_postfix_str(f"{run.label}: {name}")

            tables = run_suite(
                model, only=recipe.only, options=recipe.options, label=run.label,
                cache=cache, model_digest=digest, progress=show,
            )
            collector.add_all(tables, step=step, stage=stage, **columns)
            models.append(
                {**columns, "label": run.label, "source": str(folder), "kind": "trained",
                 "n_layers": model.cfg.n_layers, "step": step, "stage": stage,
                 "growth": recipe.train_config(run.variant, run.seed).growth, "note": ""}
            )
            if len(stage_checkpoints(run.folder)) > 1:
                collector.add("copy_divergence", _tag(copy_divergence(run.folder), **columns))
        del model
        eta.advance(weight[final], time.perf_counter() - started)
    bar.close()
    return models


def analyse_public(
    recipe: StudyRecipe, out: Path, collector: TableCollector, echo: Callable[[str], None]
) -> dict[str, Any] | None:
    """Run the public model's suite; return its row of the models table."""
    import depthcurse
    from depthcurse.cache import model_hash
    from depthcurse.sources import resolve
    from depthcurse.suite import check_analyses, run_suite

    public = recipe.public
    if public is None:
        return None
    echo(f"[public model] loading {public.source} ({public.label})")
    model = depthcurse.load(public.source)
    digest = model_hash(resolve(public.source).path)
    cache = RecordingCache(out / "cache")
    progress = SuiteProgress("public model", check_analyses(public.only), cache, echo)
    tables = run_suite(
        model, only=public.only, options=public.options, label=public.label,
        cache=cache, model_digest=digest, progress=progress,
    )
    progress.finish()
    collector.add_all(tables, variant="public", seed=pd.NA, run=public.label)
    info = model.depthcurse_info
    return {
        "variant": "public", "seed": pd.NA, "run": public.label, "label": public.label,
        "source": public.source, "kind": info.kind, "n_layers": model.cfg.n_layers,
        "step": pd.NA, "stage": pd.NA, "growth": "none", "note": info.note,
    }


# ---------------------------------------------------------------------------
# Training curves


def training_curves(recipe: StudyRecipe, runs: list[RunRecord]) -> pd.DataFrame:
    """Return the logged training and held-out losses of every run with their training FLOPs.

    One row per ``train`` or ``eval`` record of ``metrics.jsonl`` (column
    ``kind``; ``loss`` is the training loss or the held-out loss). ``flops``
    counts the FLOPs of every step up to that one at the depth it trained at,
    and ``compute_fraction`` divides them by the full-depth baseline's total.
    """
    from depthcurse.growth import flops_per_token
    from depthcurse.train import METRICS_FILE, make_stage_plan

    rows = []
    for run in runs:
        cfg = recipe.train_config(run.variant, run.seed).resolved()
        model_cfg = cfg.model_config()
        plan = make_stage_plan(cfg, model_cfg)
        tokens_per_step = cfg.batch_size * cfg.grad_accum * cfg.seq_len
        per_step = [
            flops_per_token(model_cfg, depth, cfg.seq_len) * tokens_per_step
            for depth, length in zip(plan.depths, plan.lengths, strict=True)
            for _ in range(length)
        ]
        depth_at = [depth for depth, length in zip(plan.depths, plan.lengths, strict=True) for _ in range(length)]
        cumulative = pd.Series(per_step).cumsum().tolist()
        baseline_total = (
            flops_per_token(model_cfg, model_cfg.n_layers, cfg.seq_len) * tokens_per_step * cfg.max_steps
        )
        for line in (run.folder / METRICS_FILE).read_text().splitlines():
            record = json.loads(line)
            if record.get("kind") not in ("train", "eval"):
                continue
            step = int(record["step"])
            loss = record["loss"] if record["kind"] == "train" else record["val_loss"]
            rows.append(
                {"run": run.label, "variant": run.variant, "seed": run.seed, "kind": record["kind"],
                 "step": step, "tokens": record.get("tokens"), "stage": record.get("stage"),
                 "depth": depth_at[step - 1], "loss": loss, "flops": cumulative[step - 1],
                 "compute_fraction": cumulative[step - 1] / baseline_total}
            )
    columns = ["run", "variant", "seed", "kind", "step", "tokens", "stage", "depth", "loss",
               "flops", "compute_fraction"]
    table = pd.DataFrame(rows, columns=columns)
    table["seed"] = table["seed"].astype("Int64")
    return table


# ---------------------------------------------------------------------------
# The whole job


def draw_figures(tables_dir: Path, figures_dir: Path, echo: Callable[[str], None]) -> tuple[list[Path], str]:
    """Draw every figure with `depthcurse.figures.make_figures`; return (files, problems or "")."""
    import logging

    try:
        from depthcurse.figures import make_figures
    except ImportError as err:
        return [], f"Figures were not drawn: depthcurse.figures is not available ({err})."

    skipped: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            skipped.append(record.getMessage())

    logger = logging.getLogger("depthcurse.figures")
    handler = Collect(level=logging.WARNING)
    logger.addHandler(handler)
    try:
        files = list(make_figures(tables_dir, figures_dir, strict=False))
    except Exception as err:  # noqa: BLE001 - a figure bug must not lose the tables and report
        echo(f"[figures] failed: {type(err).__name__}: {err}")
        return [], f"Drawing the figures failed: {type(err).__name__}: {err}."
    finally:
        logger.removeHandler(handler)
    for message in skipped:
        echo(f"[figures] {message}")
    problem = "Figures not drawn: " + "; ".join(skipped) + "." if skipped else ""
    return files, problem


def _silent(text: str) -> None:
    pass


def reproduce(
    recipe: StudyRecipe | str | Path = DEFAULT_RECIPE,
    out: str | Path = DEFAULT_OUT,
    *,
    seeds: int | None = None,
    progress: bool = True,
    figures: bool = True,
    echo: Callable[[str], None] = print,
) -> StudyResult | None:
    """Run the whole study of `recipe` into folder `out` and return what it wrote.

    `seeds` replaces the recipe's seed list by its first `seeds` seeds (more
    seeds are numbered upwards). `figures=False` skips drawing the figures.
    Finished runs and cached analysis tables are
    reused, so a second call only redraws the figures and the report. Under
    torchrun every process trains (with DDP) and only rank 0 analyses and
    reports; the other ranks return None after training.
    """
    from depthcurse.findings import all_findings, findings_table
    from depthcurse.report import write_report
    from depthcurse.suite import save_tables

    if not isinstance(recipe, StudyRecipe):
        recipe = load_study_recipe(recipe)
    if seeds is not None:
        recipe = recipe.with_seeds(seeds)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    n_runs = len(recipe.variants) * len(recipe.seeds)
    echo(
        f"study {recipe.name}: {len(recipe.variants)} variants x {len(recipe.seeds)} seeds = "
        f"{n_runs} runs into {out}"
    )

    main_process = int(os.environ.get("RANK", "0")) == 0
    started = time.perf_counter()
    runs = train_runs(recipe, out, echo if main_process else _silent, progress and main_process)
    timings["training"] = time.perf_counter() - started
    if not main_process:
        return None

    collector = TableCollector()
    started = time.perf_counter()
    models = analyse_runs(recipe, runs, out, collector, echo, progress)
    timings["analyses of the runs"] = time.perf_counter() - started

    started = time.perf_counter()
    public_row = analyse_public(recipe, out, collector, echo)
    if public_row is not None:
        models.append(public_row)
        timings["public model"] = time.perf_counter() - started

    started = time.perf_counter()
    models_table = pd.DataFrame(models)
    models_table["seed"] = models_table["seed"].astype("Int64")
    curves = training_curves(recipe, runs)
    tables = collector.tables()
    tables["models"] = models_table
    tables["training_curves"] = curves
    grown = [
        v for v in recipe.variants if recipe.train_config(v, recipe.seeds[0]).growth != "none"
    ]
    findings = all_findings(
        tables, models_table, curves, baseline=recipe.baseline, grown=grown,
        block_size=recipe.options.block_size or 1,
    )
    tables["findings"] = findings_table(findings)
    tables_dir = save_tables(tables, out / "tables")
    if figures:
        drawn, figure_problem = draw_figures(tables_dir, out / "figures", echo)
    else:
        drawn, figure_problem = [], "Figures were not drawn: switched off for this call."
    timings["tables, figures and report"] = time.perf_counter() - started
    report, html = write_report(
        out, recipe, runs, models_table, findings, drawn, figure_problem, timings
    )
    echo(f"report: {report} and {html}")
    return StudyResult(out, runs, tables, tables["findings"], drawn, report, html, timings)
