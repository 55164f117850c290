"""Periodicity of sublayer contributions over depth.

Depth-grown models built from blocks of b layers are reported to show a cyclic
pattern of period b in how much each sublayer adds to the residual stream
(Kapl et al. 2025, arXiv 2512.08819). For a sequence x_0..x_{L−1} over depth
(after removing a linear trend by default, since contributions usually grow
with depth) the sample autocorrelation is

    r(k) = Σ_{i<L−k} x_i x_{i+k} / Σ_i x_i²,   k = 0..⌊L/2⌋,

and the dominant period is the lag k ≥ 2 of the largest local maximum of r with
r(k) ≥ `threshold` (default 0.5). Without such a lag there is no period (NaN).

The sequences are the relative contributions of Csordás et al. 2025
(arXiv 2505.13898), averaged over tokens (position 0 excluded by default):
attn ‖a_l‖/‖h_l‖, mlp ‖m_l‖/‖h_l + a_l‖, layer ‖a_l + m_l‖/‖h_l‖, with
norms clamped below at 1e-6. `periodicity` also takes a plain sequence, a
mapping of named sequences, or a table with columns layer / metric / value.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from depthcurse.analyses.engine import LayerStack, batches_of, model_label, model_note

DETRENDS = ("linear", "mean", "none")


def autocorrelation(
    values: Sequence[float] | np.ndarray, *, max_lag: int | None = None, detrend: str = "linear"
) -> np.ndarray:
    """Return r(0..max_lag) of `values` (all NaN for a constant sequence)."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size < 4:
        raise ValueError(f"need a 1-D sequence of at least 4 values, got shape {x.shape}")
    if detrend not in DETRENDS:
        raise ValueError(f"detrend must be one of {DETRENDS}, got {detrend!r}")
    if detrend == "linear":
        index = np.arange(x.size)
        x = x - np.polyval(np.polyfit(index, x, 1), index)
    elif detrend == "mean":
        x = x - x.mean()
    max_lag = x.size // 2 if max_lag is None else min(max_lag, x.size - 1)
    energy = float((x * x).sum())
    if energy <= 1e-12 * max(1.0, float(np.abs(np.asarray(values)).max()) ** 2) * x.size:
        return np.full(max_lag + 1, np.nan)
    return np.array([(x[: x.size - k] * x[k:]).sum() / energy for k in range(max_lag + 1)])


def dominant_period(
    values: Sequence[float] | np.ndarray,
    *,
    min_period: int = 2,
    max_period: int | None = None,
    threshold: float = 0.5,
    detrend: str = "linear",
) -> int | None:
    """Return the lag of the highest autocorrelation peak ≥ `threshold`, or None."""
    r = autocorrelation(values, max_lag=max_period, detrend=detrend)
    best, best_value = None, threshold
    for k in range(max(min_period, 1), len(r)):
        left = r[k - 1]
        right = r[k + 1] if k + 1 < len(r) else -np.inf
        if r[k] >= left and r[k] >= right and r[k] >= best_value:
            if best is None or r[k] > best_value:
                best, best_value = k, r[k]
    return best


def relative_contributions(
    model: Any, prompts: Any, *, batch_size: int = 8, exclude_pos0: bool = True
) -> pd.DataFrame:
    """Return the token-mean relative contribution of each layer's attn, mlp and whole layer."""
    sums: dict[str, np.ndarray] = {}
    count = 0
    for tokens, attention_mask in batches_of(prompts, batch_size):
        stack = LayerStack(model, tokens, attention_mask)
        mask = stack.attention_mask.bool().clone()
        if exclude_pos0:
            mask[:, 0] = False
        h = stack.embeddings
        with torch.no_grad():
            for layer in range(stack.n_layers):
                attn_out, mlp_out, out = stack.layer(layer, h)
                ratios = {
                    "attn": _norm(attn_out) / _norm(h).clamp_min(1e-6),
                    "mlp": _norm(mlp_out) / _norm(h + attn_out).clamp_min(1e-6),
                    "layer": _norm(attn_out + mlp_out) / _norm(h).clamp_min(1e-6),
                }
                for name, ratio in ratios.items():
                    sums.setdefault(name, np.zeros(stack.n_layers))[layer] += float(ratio[mask].sum())
                h = out
        count += int(mask.sum())
    rows = [
        (name, layer, total / max(count, 1))
        for name, totals in sums.items()
        for layer, total in enumerate(totals)
    ]
    table = pd.DataFrame(rows, columns=["metric", "layer", "value"])
    table.insert(0, "model", model_label(model))
    table["statistic"] = "mean"
    table["exclude_pos0"] = exclude_pos0
    table["note"] = model_note(model)
    return table


def _norm(x: torch.Tensor) -> torch.Tensor:
    return x.float().norm(dim=-1)


def _sequences(data: Any) -> dict[str, np.ndarray]:
    if isinstance(data, pd.DataFrame):
        missing = {"layer", "metric", "value"} - set(data.columns)
        if missing:
            raise ValueError(f"table lacks columns {sorted(missing)}; give layer, metric and value")
        keys = [c for c in ("model", "prompt_set", "statistic", "metric") if c in data.columns]
        result = {}
        for key, group in data.groupby(keys, sort=False):
            if group["layer"].duplicated().any():
                raise ValueError(
                    f"group {key} has several rows per layer; filter the table to one value per layer"
                )
            name = " | ".join(map(str, key)) if isinstance(key, tuple) else str(key)
            result[name] = group.sort_values("layer")["value"].to_numpy(dtype=np.float64)
        return result
    if isinstance(data, Mapping):
        return {str(k): np.asarray(v, dtype=np.float64) for k, v in data.items()}
    return {"sequence": np.asarray(data, dtype=np.float64)}


def periodicity(
    data: Any,
    prompts: Any = None,
    *,
    max_lag: int | None = None,
    min_period: int = 2,
    threshold: float = 0.5,
    detrend: str = "linear",
    batch_size: int = 8,
) -> pd.DataFrame:
    """Return the autocorrelation by lag and the dominant period of each sequence.

    `data` is a model (then `prompts` is required and the relative
    contributions are computed first), a table, a mapping or one sequence.
    """
    if prompts is not None:
        data = relative_contributions(data, prompts, batch_size=batch_size)
    rows = []
    for name, values in _sequences(data).items():
        r = autocorrelation(values, max_lag=max_lag, detrend=detrend)
        rows += [(name, lag, "autocorrelation", float(v)) for lag, v in enumerate(r)]
        period = dominant_period(
            values, min_period=min_period, max_period=max_lag, threshold=threshold, detrend=detrend
        )
        rows.append((name, None, "dominant_period", float("nan") if period is None else float(period)))
    table = pd.DataFrame(rows, columns=["sequence", "lag", "metric", "value"])
    table["lag"] = table["lag"].astype("Int64")
    table["detrend"] = detrend
    table["threshold"] = threshold
    return table
