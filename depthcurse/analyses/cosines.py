"""Cosine similarities between each layer's outputs and the residual stream.

Per selected token and layer l (h_l residual input of layer l, a_l attention
output, m_l MLP output, h_{l+1} = h_l + a_l + m_l):

    cos(a,h)      = cos(a_l, h_l)
    cos(m,h+a)    = cos(m_l, h_l + a_l)
    cos(a+m,h)    = cos(a_l + m_l, h_l)
    cos(h_next,h) = cos(h_{l+1}, h_l)

computed in float32 and averaged over the selected tokens of all prompts (real
tokens, position 0 excluded by default). A cosine is undefined at a token where
either vector has norm <= 1e-6: that token is left out of the mean and counted
in `n_undefined`. When every token is undefined, as for a layer whose output
projection is zeroed, the value is NaN and `undefined` is True, never a number
made up from a zero vector.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import torch
from torch import Tensor

from depthcurse.analyses.common import ZERO_NORM, Accumulator, Conventions, make_table

FORMULAS = {
    "cos(a,h)": "cos(a_l, h_l)",
    "cos(m,h+a)": "cos(m_l, h_l+a_l)",
    "cos(a+m,h)": "cos(a_l+m_l, h_l)",
    "cos(h_next,h)": "cos(h_{l+1}, h_l)",
}


def token_cosine(x: Tensor, y: Tensor) -> Tensor:
    """Cosine per row of two (tokens, d) tensors; NaN where either row has norm <= 1e-6."""
    x_norm, y_norm = x.norm(dim=-1), y.norm(dim=-1)
    cosine = (x * y).sum(-1) / (x_norm * y_norm).clamp_min(ZERO_NORM**2)
    undefined = (x_norm <= ZERO_NORM) | (y_norm <= ZERO_NORM)
    return torch.where(undefined, torch.full_like(cosine, float("nan")), cosine)


class CosineAccumulator:
    """Running token means of the four cosines, with counts of undefined tokens."""

    name = "cosines"

    def __init__(self) -> None:
        self.acc = Accumulator()
        self.undefined: dict[tuple[str, int], int] = {}

    def _add(self, metric: str, layer: int, values: Tensor) -> None:
        key = (metric, layer)
        self.undefined[key] = self.undefined.get(key, 0) + int(torch.isnan(values).sum())
        self.acc.add(metric, layer, values)

    def update(self, h: list[Tensor], a: list[Tensor], m: list[Tensor]) -> None:
        """Add one batch; each list contains (tokens, d_model) float32 tensors per layer."""
        for layer, (resid, attn, mlp) in enumerate(zip(h[:-1], a, m, strict=True)):
            self._add("cos(a,h)", layer, token_cosine(attn, resid))
            self._add("cos(m,h+a)", layer, token_cosine(mlp, resid + attn))
            self._add("cos(a+m,h)", layer, token_cosine(attn + mlp, resid))
            self._add("cos(h_next,h)", layer, token_cosine(h[layer + 1], resid))

    def table(self, conventions: Conventions) -> pd.DataFrame:
        rows = self.acc.rows(("mean",))
        for row in rows:
            key = (row["metric"], row["layer"])
            row["formula"] = FORMULAS[row["metric"]]
            row["n_undefined"] = self.undefined[key]
            row["undefined"] = row["n_tokens"] == 0
        table = make_table(rows, conventions, analysis=self.name, zero_norm=ZERO_NORM)
        return table.sort_values(["metric", "layer"], ignore_index=True)


def cosines(source: Any, prompts: Any = None, **options: Any) -> pd.DataFrame:
    """Return token-averaged cosine similarities per layer, NaN-flagged where undefined.

    `source` is a `StreamStats` from `collect_stream`, or a hooked model; then
    `prompts` is required and `options` go to `collect_stream`.
    """
    from depthcurse.analyses.stream import stats_for

    return stats_for(source, prompts, ("cosines",), options).cosines()
