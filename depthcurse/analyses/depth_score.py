"""Depth score: the centre of mass of layer-skip effects over depth (Csordás et al. 2025, arXiv 2505.13898).

From a skip-effect matrix E (rows: skipped layer s, columns: later layer j > s,
see `skip_effects`) with L layers,

    e_s = Σ_{j>s} E[s, j] / max(L − 1 − s, 1),     score = Σ_s s·e_s / Σ_s e_s,

with 0-based layer indices, so a score near L − 1 means that skipping late
layers changes the computation most. The same centre of mass is taken of the
output-effect vector O[s] (`source = "output_effect"`).

Per prompt set (for example one per difficulty level) the matrix is reduced
over prompts by `statistic` (max, as in Csordás et al., or mean). A percentile
bootstrap over prompts gives a confidence interval: prompts are resampled with
replacement, reduced the same way, and scored again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from depthcurse.analyses.engine import model_label, model_note, prompt_set_name, quiet_nan_warnings
from depthcurse.analyses.skip_effects import skip_effect_arrays


def depth_score_of_matrix(effect: np.ndarray) -> float:
    """Return Σ_s s·e_s / Σ_s e_s for an L × L effect matrix; entries with j ≤ s are ignored."""
    effect = np.asarray(effect, dtype=np.float64)
    if effect.ndim != 2 or effect.shape[0] != effect.shape[1]:
        raise ValueError(f"effect matrix must be square L x L, got shape {effect.shape}")
    n_layers = effect.shape[0]
    later = np.triu(np.ones((n_layers, n_layers), dtype=bool), k=1)
    totals = np.where(later, np.nan_to_num(effect), 0.0).sum(axis=1)
    per_layer = totals / np.maximum(n_layers - 1 - np.arange(n_layers), 1)
    return depth_score_of_vector(per_layer)


def depth_score_of_vector(values: np.ndarray) -> float:
    """Return Σ_s s·v_s / Σ_s v_s (NaN when all values are zero)."""
    values = np.nan_to_num(np.asarray(values, dtype=np.float64))
    total = values.sum()
    if total == 0:
        return float("nan")
    return float((np.arange(len(values)) * values).sum() / total)


def _reduce(arrays: np.ndarray, statistic: str) -> np.ndarray:
    with quiet_nan_warnings():
        return np.nanmax(arrays, axis=0) if statistic == "max" else np.nanmean(arrays, axis=0)


def _named_sets(prompt_sets: Any) -> list[tuple[str, Any]]:
    if isinstance(prompt_sets, Mapping):
        return list(prompt_sets.items())
    if isinstance(prompt_sets, Sequence) and not isinstance(prompt_sets, tuple):
        return [(prompt_set_name(p), p) for p in prompt_sets]
    return [(prompt_set_name(prompt_sets), prompt_sets)]


def depth_score(
    model: Any,
    prompt_sets: Any,
    *,
    part: str = "layer",
    mode: str = "future",
    statistic: str = "max",
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    bootstrap_seed: int = 0,
    **skip_options: Any,
) -> pd.DataFrame:
    """Return the depth score of each prompt set with a bootstrap confidence interval.

    `prompt_sets` is one prompt set, a list of them, or a mapping name → prompts.
    `skip_options` go to `skip_effect_arrays` (reduction, n_positions, seed of the
    future-mode positions, `future_at="answer"` for task prompts, ...);
    `bootstrap_seed` seeds the resampling of prompts.
    """
    if statistic not in ("max", "mean"):
        raise ValueError(f"statistic must be 'max' or 'mean', got {statistic!r}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    rng = np.random.default_rng(bootstrap_seed)
    rows = []
    for name, prompts in _named_sets(prompt_sets):
        arrays = skip_effect_arrays(model, prompts, part=part, mode=mode, **skip_options)
        n_prompts = arrays.effect.shape[0]
        for source, per_prompt, score_of in (
            ("layer_effect", arrays.effect, depth_score_of_matrix),
            ("output_effect", arrays.output, depth_score_of_vector),
        ):
            score = score_of(_reduce(per_prompt, statistic))
            resampled = [
                score_of(_reduce(per_prompt[rng.integers(0, n_prompts, n_prompts)], statistic))
                for _ in range(n_bootstrap)
            ]
            low, high = _interval(resampled, confidence)
            rows.append((name, source, score, low, high, n_prompts, arrays.n_layers))
    table = pd.DataFrame(
        rows,
        columns=["prompt_set", "source", "value", "ci_low", "ci_high", "n_prompts", "n_layers"],
    )
    table.insert(0, "model", model_label(model))
    table["metric"] = "depth_score"
    table["statistic"] = statistic
    table["part"] = part
    table["mode"] = mode
    table["future_at"] = skip_options.get("future_at", "grid") if mode == "future" else None
    table["reduction"] = skip_options.get("reduction", "max")
    table["confidence"] = confidence
    table["n_bootstrap"] = n_bootstrap
    table["exclude_pos0"] = True
    table["note"] = model_note(model)
    return table


def _interval(samples: list[float], confidence: float) -> tuple[float, float]:
    values = np.asarray(samples, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def depth_score_from_table(skip_table: pd.DataFrame) -> pd.DataFrame:
    """Score each (model, prompt set, part, statistic) group of a `skip_effects` table."""
    needed = {"part", "skip_layer", "layer", "metric", "statistic", "value"}
    missing = needed - set(skip_table.columns)
    if missing:
        raise ValueError(f"skip table lacks columns {sorted(missing)}; pass skip_effects(...) output")
    keys = [c for c in ("model", "prompt_set", "part", "mode", "variant", "statistic") if c in skip_table]
    rows = []
    for key, group in skip_table.groupby(keys, sort=False):
        n_layers = int(group["skip_layer"].max()) + 1
        effect = np.zeros((n_layers, n_layers))
        pairs = group[group["metric"] == "relative_change"]
        effect[pairs["skip_layer"].to_numpy(int), pairs["layer"].to_numpy(int)] = pairs["value"]
        output = np.zeros(n_layers)
        outs = group[group["metric"] == "output_change"]
        output[outs["skip_layer"].to_numpy(int)] = outs["value"]
        base = dict(zip(keys, key if isinstance(key, tuple) else (key,), strict=True))
        rows.append({**base, "source": "layer_effect", "value": depth_score_of_matrix(effect)})
        rows.append({**base, "source": "output_effect", "value": depth_score_of_vector(output)})
    table = pd.DataFrame(rows)
    table["metric"] = "depth_score"
    return table
