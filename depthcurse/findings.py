"""The study's findings, computed from its tidy tables, each with a number and an interval.

Every finding compares quantities across training seeds: a paired difference
uses the same seed of two variants (same initialisation seed and data order),
and `depthcurse.stats.mean_ci` gives a Student-t interval over the seeds.
Ratios (the curse-of-depth finding) use `depthcurse.stats.ratio_ci` instead:
the geometric mean with a t interval of the log ratios, which stays positive. A
verdict is "supported" when the interval lies on the side the question asks
about, "not supported" when it lies on the other side, and "inconclusive" when
it contains the reference value. With one seed there is no interval and the
verdict says so.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from depthcurse.stats import Estimate, mean_ci, ratio_ci

PUBLIC_VARIANT = "public"

DEPTH_SCORE_DEFINITION = (
    "The depth score (Csordás et al. 2025, arXiv 2505.13898) is the centre of mass of the "
    "layer-skip effects over the skipped layer s: score = Σ_s s·e_s / Σ_s e_s, where e_s is "
    "the mean relative change that skipping layer s causes in the later layers j > s (0-based "
    "layers). From layer effects it runs from 0 to L − 2 for L layers. A higher score means "
    "that skipping late layers changes more, so the model uses its depth more."
)


@dataclass
class Finding:
    """One answered question: its statement with numbers, the verdict and the estimate behind it."""

    key: str
    question: str
    subject: str
    verdict: str
    statement: str
    estimate: Estimate | None = None
    per_seed: list[float] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        est = self.estimate
        return {
            "finding": self.key,
            "question": self.question,
            "subject": self.subject,
            "verdict": self.verdict,
            "value": est.value if est else float("nan"),
            "ci_low": est.low if est else float("nan"),
            "ci_high": est.high if est else float("nan"),
            "n": est.n if est else 0,
            "per_seed": ", ".join(f"{v:.4g}" for v in self.per_seed),
            "statement": self.statement,
        }


def verdict(estimate: Estimate, reference: float, expected: str) -> str:
    """Return the verdict for "the value is `expected` (below/above) `reference`"."""
    if estimate.n == 0 or math.isnan(estimate.value):
        return "no data"
    if estimate.n < 2 or math.isnan(estimate.low):
        side = estimate.value < reference if expected == "below" else estimate.value > reference
        return ("holds" if side else "does not hold") + " for the single model (no interval)"
    if expected == "below":
        if estimate.high < reference:
            return "supported"
        if estimate.low > reference:
            return "not supported"
    else:
        if estimate.low > reference:
            return "supported"
        if estimate.high < reference:
            return "not supported"
    return "inconclusive"


def spread(values: Iterable[float]) -> str:
    """Return the per-seed values, for printing next to a mean."""
    return "per seed: " + ", ".join(f"{v:.3g}" for v in values)


def _est(values: Iterable[float]) -> Estimate:
    return mean_ci([float(v) for v in values])


def _ratio_est(values: Iterable[float]) -> Estimate:
    return ratio_ci([float(v) for v in values])


def _fmt(estimate: Estimate) -> str:
    return estimate.format(3)


def _runs(models: pd.DataFrame, variant: str) -> pd.DataFrame:
    return models[models["variant"] == variant].sort_values("seed")


def final_rows(table: pd.DataFrame, model: Any) -> pd.DataFrame:
    """Return the rows of `model` (a models-table row) from its final checkpoint.

    Residual-stream tables also contain earlier growth stages, which differ in `step`.
    """
    rows = table[table["model"] == model.label]
    if "step" in rows.columns and not pd.isna(model.step):
        rows = rows[rows["step"] == model.step]
    return rows


def _paired(a: dict[Any, float], b: dict[Any, float]) -> tuple[list[Any], list[float]]:
    seeds = sorted(set(a) & set(b))
    return seeds, [float(a[s] - b[s]) for s in seeds]


# ---------------------------------------------------------------------------
# 1. Curse of depth: does the second half of the layers contribute less?


def half_ratios(tables: dict[str, pd.DataFrame], models: pd.DataFrame, layers: str) -> pd.DataFrame:
    """Return second-half over first-half mean relative contribution per model (metric "layer")."""
    from depthcurse.analyses import compare_halves

    table = tables.get("contributions")
    rows = []
    if table is None:
        return pd.DataFrame(columns=["label", "variant", "seed", "ratio"])
    for model in models.itertuples():
        own = final_rows(table, model)
        own = own[own["metric"] == "layer"]
        if own.empty:
            continue
        halves = compare_halves(own, int(model.n_layers), statistic="mean")
        chosen = halves[halves["layers"] == layers]
        if chosen.empty:
            continue
        rows.append(
            {"label": model.label, "variant": model.variant, "seed": model.seed,
             "ratio": float(chosen["value"].iloc[0])}
        )
    return pd.DataFrame(rows, columns=["label", "variant", "seed", "ratio"])


def curse_of_depth(
    tables: dict[str, pd.DataFrame], models: pd.DataFrame, baseline: str
) -> list[Finding]:
    question = (
        "Does the second half of the layers contribute less than the first half "
        "(mean ‖a_l+m_l‖/‖h_l‖, ratio < 1)?"
    )
    caution = {
        "all": (
            " Over all layers, layer 0 dominates the first half: in small models it writes up to a"
            " hundred times its input's norm, so read the layer-0-excluded finding for later layers."
        ),
        "excluding_layer_0": "",
    }
    findings = []
    for layers, where in (("all", "all layers"), ("excluding_layer_0", "layer 0 excluded")):
        ratios = half_ratios(tables, models, layers)
        subjects = [baseline, *[v for v in models["variant"].unique() if v != baseline]]
        base = ratios[ratios["variant"] == baseline].set_index("seed")["ratio"].to_dict()
        for variant in subjects:
            own = ratios[ratios["variant"] == variant]
            if own.empty:
                continue
            values = own["ratio"].tolist()
            est = _ratio_est(values)
            name = own["label"].iloc[0] if variant == PUBLIC_VARIANT else variant
            average = "geometric mean over seeds " if est.n > 1 else ""
            text = (
                f"{name} ({where}): second half / first half = {average}{_fmt(est)}; "
                f"{spread(values)}."
            )
            if variant not in (baseline, PUBLIC_VARIANT) and base:
                _, diffs = _paired(own.set_index("seed")["ratio"].to_dict(), base)
                if diffs:
                    diff = _est(diffs)
                    text += f" Difference to {baseline}, paired by seed: {_fmt(diff)}; {spread(diffs)}."
            findings.append(
                Finding(f"curse_of_depth/{layers}", question + caution[layers], f"{name}, {where}",
                        verdict(est, 1.0, "below"), text, est, values)
            )
    return findings


# ---------------------------------------------------------------------------
# 2. Depth score


def depth_scores(tables: dict[str, pd.DataFrame], models: pd.DataFrame) -> dict[str, dict[int, float]]:
    """Return {variant: {seed: depth score}} on the validation prompts (layer-effect score)."""
    table = tables.get("depth_score")
    result: dict[str, dict[int, float]] = {}
    if table is None:
        return result
    chosen = table[(table["prompt_set"] == "validation") & (table["source"] == "layer_effect")]
    for model in models.itertuples():
        own = final_rows(chosen, model)
        if not own.empty:
            seed = -1 if pd.isna(model.seed) else int(model.seed)
            result.setdefault(model.variant, {})[seed] = float(own["value"].iloc[0])
    return result


def depth_score_findings(
    tables: dict[str, pd.DataFrame], models: pd.DataFrame, baseline: str, grown: list[str]
) -> list[Finding]:
    scores = depth_scores(tables, models)
    if baseline not in scores:
        return []
    n_layers = int(_runs(models, baseline)["n_layers"].iloc[0])
    question = (
        f"Is the grown models' depth score higher than the baseline's? {DEPTH_SCORE_DEFINITION} "
        f"The runs have L = {n_layers} layers, so their scores run from 0 to {n_layers - 2}."
    )
    base = scores[baseline]
    base_est = _est(list(base.values()))
    findings = []
    for variant in grown:
        if variant not in scores:
            continue
        seeds, diffs = _paired(scores[variant], base)
        own = [scores[variant][s] for s in seeds]
        diff = _est(diffs)
        text = (
            f"{variant}: depth score {_fmt(_est(own))} vs {baseline} {_fmt(base_est)}; "
            f"difference {_fmt(diff)} ({spread(diffs)})."
        )
        findings.append(
            Finding("depth_score", question, variant, verdict(diff, 0.0, "above"), text, diff, diffs)
        )
    if PUBLIC_VARIANT in scores:
        value = next(iter(scores[PUBLIC_VARIANT].values()))
        public = models[models["variant"] == PUBLIC_VARIANT].iloc[0]
        label, top = public["label"], int(public["n_layers"]) - 2
        findings.append(
            Finding("depth_score", "Depth score of the public model (for reference)", label,
                    "reference value",
                    f"{label}: depth score {value:.3g} on a scale of 0 to {top} (one model).",
                    _est([value]), [value])
        )
    return findings


# ---------------------------------------------------------------------------
# 3. Periodicity of attention contributions


def periodicity_values(
    tables: dict[str, pd.DataFrame], models: pd.DataFrame, lag: int
) -> pd.DataFrame:
    """Return per model the attention sequence's autocorrelation at `lag` and dominant period."""
    table = tables.get("periodicity")
    rows = []
    if table is None:
        return pd.DataFrame(columns=["variant", "seed", "acf", "period"])
    attn = table[table["sequence"].astype(str).str.split(" | ", regex=False).str[-1] == "attn"]
    for model in models.itertuples():
        own = final_rows(attn, model)
        acf = own[(own["metric"] == "autocorrelation") & (own["lag"] == lag)]["value"]
        period = own[own["metric"] == "dominant_period"]["value"]
        if acf.empty:
            continue
        rows.append(
            {"variant": model.variant, "seed": model.seed, "acf": float(acf.iloc[0]),
             "period": float(period.iloc[0]) if not period.empty else float("nan")}
        )
    return pd.DataFrame(rows, columns=["variant", "seed", "acf", "period"])


def periodicity_findings(
    tables: dict[str, pd.DataFrame], models: pd.DataFrame, baseline: str, grown: list[str], b: int
) -> list[Finding]:
    question = f"Are the grown models' attention contributions periodic with period b = {b}?"
    values = periodicity_values(tables, models, b)
    base = values[values["variant"] == baseline]
    base_text = (
        f" {baseline}: autocorrelation {_fmt(_est(base['acf']))}, dominant periods "
        f"{_periods(base['period'])}." if not base.empty else ""
    )
    findings = []
    for variant in grown:
        own = values[values["variant"] == variant]
        if own.empty:
            continue
        est = _est(own["acf"])
        matches = int((own["period"] == b).sum())
        result = verdict(est, 0.0, "above")
        if result == "supported" and matches * 2 < len(own):
            result = "partly supported"
        text = (
            f"{variant}: autocorrelation of attention contributions at lag {b} = {_fmt(est)} "
            f"({spread(own['acf'].tolist())}); dominant period {_periods(own['period'])}, equal to "
            f"b in {matches} of {len(own)} seeds.{base_text}"
        )
        findings.append(
            Finding("periodicity", question, variant, result, text, est, own["acf"].tolist())
        )
    return findings


def _periods(values: pd.Series) -> str:
    return "[" + ", ".join("no period" if math.isnan(v) else f"{v:g}" for v in values) + "]"


# ---------------------------------------------------------------------------
# 4. Perturbations: block swaps against layer swaps


def swap_costs(tables: dict[str, pd.DataFrame], models: pd.DataFrame) -> pd.DataFrame:
    """Return per model the mean Δ NLL over positions of layer swaps and block swaps."""
    table = tables.get("perturbations")
    rows = []
    if table is None:
        return pd.DataFrame(columns=["variant", "seed", "label", "layer", "block"])
    swaps = table[(table["kind"] == "swap") & (table["metric"] == "delta_nll")]
    for model in models.itertuples():
        own = final_rows(swaps, model)
        by_level = own.groupby("level")["value"].mean()
        if {"layer", "block"} <= set(by_level.index):
            rows.append(
                {"variant": model.variant, "seed": model.seed, "label": model.label,
                 "layer": float(by_level["layer"]), "block": float(by_level["block"])}
            )
    return pd.DataFrame(rows, columns=["variant", "seed", "label", "layer", "block"])


def perturbation_findings(
    tables: dict[str, pd.DataFrame], models: pd.DataFrame, baseline: str, grown: list[str]
) -> list[Finding]:
    costs = swap_costs(tables, models)
    findings = []
    q1 = "Do grown models tolerate block swaps better than layer swaps (lower Δ NLL)?"
    q2 = "Do grown models tolerate block swaps better than the baseline does?"
    base = costs[costs["variant"] == baseline].set_index("seed")
    for variant in [*grown, baseline, PUBLIC_VARIANT]:
        own = costs[costs["variant"] == variant]
        if own.empty:
            continue
        diffs = (own["layer"] - own["block"]).tolist()
        est = _est(diffs)
        name = own["label"].iloc[0] if variant == PUBLIC_VARIANT else variant
        text = (
            f"{name}: mean Δ NLL of a layer swap {_fmt(_est(own['layer']))}, of a block swap "
            f"{_fmt(_est(own['block']))}; layer minus block = {_fmt(est)} ({spread(diffs)}) nats/token."
        )
        key = "block_vs_layer_swaps"
        question = q1 if variant in grown else q1.replace("grown models", "this model")
        findings.append(Finding(key, question, name, verdict(est, 0.0, "above"), text, est, diffs))
    for variant in grown:
        own = costs[costs["variant"] == variant].set_index("seed")
        seeds, diffs = _paired(base["block"].to_dict(), own["block"].to_dict())
        if not diffs:
            continue
        est = _est(diffs)
        text = (
            f"{variant}: block-swap Δ NLL {_fmt(_est(own['block']))} vs {baseline} "
            f"{_fmt(_est(base['block']))}; {baseline} minus {variant} = {_fmt(est)} "
            f"({spread(diffs)}) nats/token."
        )
        findings.append(
            Finding("block_swaps_vs_baseline", q2, variant, verdict(est, 0.0, "above"), text, est, diffs)
        )
    return findings


# ---------------------------------------------------------------------------
# 5. Held-out loss against training compute


def final_losses(curves: pd.DataFrame) -> dict[str, dict[int, float]]:
    """Return {variant: {seed: last held-out loss}} from the eval rows of the training curves."""
    result: dict[str, dict[int, float]] = {}
    for (variant, seed), group in curves.groupby(["variant", "seed"]):
        last = group.sort_values("step").iloc[-1]
        result.setdefault(variant, {})[int(seed)] = float(last["loss"])
    return result


def loss_at_fraction(curve: pd.DataFrame, fraction: float) -> float:
    """Return the held-out loss interpolated at `fraction` of the baseline's training FLOPs."""
    curve = curve.sort_values("compute_fraction")
    x, y = curve["compute_fraction"].to_numpy(), curve["loss"].to_numpy()
    if len(x) == 0 or fraction < x[0]:
        return float("nan")
    return float(np.interp(fraction, x, y))


def compute_findings(curves: pd.DataFrame, baseline: str, grown: list[str]) -> list[Finding]:
    """Compare each grown variant's final held-out loss with the baseline's, two ways.

    Each comparison is its own finding with its own verdict: against the baseline's final
    loss (after all of its compute), and against the baseline's loss interpolated at the
    grown run's compute fraction (equal compute). A negative difference favours the grown
    model, so both verdicts ask whether the difference is below 0.
    """
    question = (
        "Do grown models reach a lower held-out loss than the baseline, both at the end of "
        "training (the grown run spends less compute) and at equal training compute?"
    )
    curves = curves[curves["kind"] == "eval"]
    if curves.empty:
        return []
    losses = final_losses(curves)
    if baseline not in losses:
        return []
    base_curves = curves[curves["variant"] == baseline]
    base_final = _fmt(_est(list(losses[baseline].values())))
    findings = []
    for variant in grown:
        if variant not in losses:
            continue
        own_curves = curves[curves["variant"] == variant]
        fraction = float(own_curves.groupby("seed")["compute_fraction"].max().mean())
        seeds, diffs = _paired(losses[variant], losses[baseline])
        own = [losses[variant][s] for s in seeds]
        est = _est(diffs)
        text = (
            f"{variant} at the end of training: held-out loss {_fmt(_est(own))} ({spread(own)}) "
            f"with {fraction:.3f} of the baseline's training FLOPs, against {baseline} "
            f"{base_final} with all of them. Difference {variant} minus {baseline}: {_fmt(est)} "
            f"({spread(diffs)}) nats/token."
        )
        findings.append(
            Finding("loss_vs_compute", question, f"{variant}, end of training",
                    _loss_verdict(est, "end of training"), text, est, diffs)
        )

        matched = {
            int(seed): loss_at_fraction(group, fraction)
            for seed, group in base_curves.groupby("seed")
        }
        _, diffs_same = _paired(losses[variant], matched)
        if not diffs_same or any(math.isnan(d) for d in diffs_same):
            continue
        same = _est(diffs_same)
        base_same = _fmt(_est(list(matched.values())))
        text = (
            f"{variant} at equal compute ({fraction:.3f} of the baseline's training FLOPs): "
            f"{baseline} reaches {base_same} there, interpolated between its evaluations. "
            f"Difference {variant} minus {baseline}: {_fmt(same)} ({spread(diffs_same)}) "
            "nats/token."
        )
        findings.append(
            Finding("loss_vs_compute", question, f"{variant}, equal compute",
                    _loss_verdict(same, "equal compute"), text, same, diffs_same)
        )
    return findings


def _loss_verdict(diff: Estimate, comparison: str) -> str:
    """Return the verdict on "the grown model's loss is lower" (difference < 0) for `comparison`."""
    result = verdict(diff, 0.0, "below")
    if result == "supported":
        return f"supported at {comparison} (lower loss)"
    if result == "not supported":
        return f"not supported at {comparison} (higher loss)"
    if result == "inconclusive":
        return f"inconclusive at {comparison} (the interval contains 0)"
    return f"{result} at {comparison}"


def all_findings(
    tables: dict[str, pd.DataFrame],
    models: pd.DataFrame,
    curves: pd.DataFrame,
    *,
    baseline: str,
    grown: list[str],
    block_size: int,
) -> list[Finding]:
    """Return every finding of the study in report order."""
    return [
        *curse_of_depth(tables, models, baseline),
        *depth_score_findings(tables, models, baseline, grown),
        *periodicity_findings(tables, models, baseline, grown, block_size),
        *perturbation_findings(tables, models, baseline, grown),
        *compute_findings(curves, baseline, grown),
    ]


def findings_table(findings: list[Finding]) -> pd.DataFrame:
    return pd.DataFrame([f.row() for f in findings])


