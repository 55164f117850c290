"""Relative contributions of attention, MLP and whole layers to the residual stream.

Following Csordás, Manning and Potts 2025 (arXiv 2505.13898), per selected
token and layer l:

    attn  = ‖a_l‖ / max(‖h_l‖, 1e-6)
    mlp   = ‖m_l‖ / max(‖h_l + a_l‖, 1e-6)
    layer = ‖a_l + m_l‖ / max(‖h_l‖, 1e-6)

with h_l the residual input of layer l, a_l the attention output, m_l the MLP
output (h_{l+1} = h_l + a_l + m_l). Each ratio is computed in float32 and its
mean and max are taken over all selected tokens of all prompts (real tokens,
position 0 excluded by default), accumulating in float64 so the mean is exact
over prompts and batches.

`contribution_summary` compares the second half of the layers with the first,
over all layers and with layer 0 excluded.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from torch import Tensor

from depthcurse.analyses.common import (
    ZERO_NORM,
    Accumulator,
    Conventions,
    compare_halves,
    make_table,
)

FORMULAS = {
    "attn": "‖a_l‖/‖h_l‖",
    "mlp": "‖m_l‖/‖h_l+a_l‖",
    "layer": "‖a_l+m_l‖/‖h_l‖",
}


class ContributionAccumulator:
    """Running mean and max of the three relative contributions over batches."""

    name = "contributions"

    def __init__(self) -> None:
        self.acc = Accumulator()

    def update(self, h: list[Tensor], a: list[Tensor], m: list[Tensor]) -> None:
        """Add one batch; each list contains (tokens, d_model) float32 tensors per layer."""
        for layer, (resid, attn, mlp) in enumerate(zip(h[:-1], a, m, strict=True)):
            resid_norm = resid.norm(dim=-1).clamp_min(ZERO_NORM)
            mid_norm = (resid + attn).norm(dim=-1).clamp_min(ZERO_NORM)
            self.acc.add("attn", layer, attn.norm(dim=-1) / resid_norm)
            self.acc.add("mlp", layer, mlp.norm(dim=-1) / mid_norm)
            self.acc.add("layer", layer, (attn + mlp).norm(dim=-1) / resid_norm)

    def table(self, conventions: Conventions) -> pd.DataFrame:
        rows = self.acc.rows()
        for row in rows:
            row["formula"] = FORMULAS[row["metric"]]
        table = make_table(rows, conventions, analysis=self.name, denominator_clamp=ZERO_NORM)
        return table.sort_values(["metric", "layer", "statistic"], ignore_index=True)


def contributions(source: Any, prompts: Any = None, **options: Any) -> pd.DataFrame:
    """Return mean and max relative contributions (attn, mlp, layer) per layer.

    `source` is a `StreamStats` from `collect_stream`, or a hooked model; then
    `prompts` is required and `options` go to `collect_stream`.
    """
    from depthcurse.analyses.stream import stats_for

    return stats_for(source, prompts, ("contributions",), options).contributions()


def contribution_summary(table: pd.DataFrame, statistic: str = "mean") -> pd.DataFrame:
    """Return second-half over first-half ratios of each contribution, with and without layer 0."""
    n_layers = int(table["layer"].max()) + 1
    return compare_halves(table, n_layers, statistic)
