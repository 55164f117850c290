"""Conventions, token batches and table layout shared by every analysis.

Notation used throughout the analyses: h_l is the residual stream at the input
of layer l (`blocks.{l}.hook_resid_pre`), a_l the attention output
(`hook_attn_out`), m_l the MLP output (`hook_mlp_out`), and
h_{l+1} = h_l + a_l + m_l. For a model with L layers, h_L is the final residual
(`ln_final.hook_in`), the input of the final norm.

Token selection: padding positions (attention mask 0) never enter a statistic.
Position 0 is excluded by default (`exclude_pos0=True`) because its residual
norm is often orders of magnitude larger than the others' and would dominate
means and maxima. Every metric is computed in float32 whatever the model's
dtype, and sums are accumulated in float64 so a mean over many batches is the
exact mean over all selected tokens of all prompts.

Every table is tidy: one row per model x layer x metric x statistic, with the
columns of `TABLE_COLUMNS` and the conventions repeated as columns and in
`DataFrame.attrs`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd
import torch
from jaxtyping import Bool, Int
from torch import Tensor

from depthcurse.prompts import PromptSet

NOTATION = (
    "h_l residual input of layer l, a_l attention output, m_l MLP output, h_{l+1} = h_l + a_l + m_l"
)
METRIC_DTYPE = "float32"
KL_DIRECTIONS = ("lens||final", "final||lens")
# Norms at or below this count as zero: contribution denominators are clamped
# to it, and a cosine involving such a vector is undefined (NaN, flagged).
ZERO_NORM = 1e-6

CONVENTION_COLUMNS = (
    "exclude_pos0",
    "kl_direction",
    "prepend_bos",
    "dtype",
    "metric_dtype",
    "weight_processing",
    "note",
)
TABLE_COLUMNS = ("model", "layer", "metric", "statistic", "value", "n_tokens")


@dataclass(frozen=True)
class Conventions:
    """How a table was computed; repeated as columns of every row and in `DataFrame.attrs`."""

    model: str
    exclude_pos0: bool
    prepend_bos: bool | None
    dtype: str
    weight_processing: bool
    note: str
    kl_direction: str = "n/a"
    metric_dtype: str = METRIC_DTYPE

    @classmethod
    def from_model(
        cls,
        model: Any,
        *,
        exclude_pos0: bool,
        prepend_bos: bool | None,
        kl_direction: str = "n/a",
        model_name: str | None = None,
    ) -> Conventions:
        info = getattr(model, "depthcurse_info", None)
        if model_name is None:
            from depthcurse.sources import checkpoint_label

            model_name = checkpoint_label(info.source) if info is not None else type(model).__name__
        dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        return cls(
            model=model_name,
            exclude_pos0=exclude_pos0,
            prepend_bos=prepend_bos,
            dtype=dtype,
            weight_processing=bool(getattr(info, "weight_processing", False)),
            note=getattr(info, "note", "") or "",
            kl_direction=kl_direction,
        )

    def with_kl(self, kl_direction: str) -> Conventions:
        fields = asdict(self)
        fields["kl_direction"] = kl_direction
        return Conventions(**fields)


def make_table(rows: list[dict[str, Any]], conventions: Conventions, **attrs: Any) -> pd.DataFrame:
    """Build a tidy table from row dicts, adding the convention columns and attrs."""
    table = pd.DataFrame(rows)
    fields = asdict(conventions)
    for name in CONVENTION_COLUMNS:
        table[name] = fields[name]
    table["model"] = conventions.model
    first = [c for c in TABLE_COLUMNS if c in table.columns]
    rest = [c for c in table.columns if c not in first and c not in CONVENTION_COLUMNS]
    table = table[first + rest + list(CONVENTION_COLUMNS)]
    table.attrs.update(fields)
    table.attrs["notation"] = NOTATION
    table.attrs.update(attrs)
    return table


def check_kl_direction(kl_direction: str) -> None:
    if kl_direction not in KL_DIRECTIONS:
        raise ValueError(
            f"kl_direction={kl_direction!r} is not one of {KL_DIRECTIONS}; "
            "'lens||final' is KL(p_lens || p_final)"
        )


def token_batches(
    prompts: PromptSet | Tensor | tuple[Tensor, Tensor], batch_size: int
) -> Iterator[tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"]]]:
    """Yield (token ids, attention mask) from a `PromptSet`, a token batch or (ids, mask)."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if isinstance(prompts, PromptSet):
        for _, ids, mask in prompts.batches(batch_size):
            yield ids, mask
        return
    if isinstance(prompts, tuple):
        ids, mask = prompts
    elif isinstance(prompts, Tensor):
        ids, mask = prompts, torch.ones_like(prompts)
    else:
        raise TypeError(
            f"prompts must be a PromptSet, a (batch, pos) token tensor or (ids, mask), "
            f"got {type(prompts).__name__}"
        )
    if ids.ndim != 2 or ids.shape != mask.shape:
        raise ValueError(
            f"token ids {tuple(ids.shape)} and mask {tuple(mask.shape)} must be the same (batch, pos) shape"
        )
    check_right_padded(mask)
    for start in range(0, ids.shape[0], batch_size):
        yield ids[start : start + batch_size].long(), mask[start : start + batch_size].long()


def check_right_padded(mask: Int[Tensor, "batch pos"]) -> None:
    """Raise unless every row of `mask` is ones followed by zeros (right padding)."""
    if (mask[:, 1:] > mask[:, :-1]).any():
        raise ValueError(
            "attention mask has a real token after padding; pass right-padded batches "
            "(PromptSet.batches pads on the right) so position 0 is each prompt's first token"
        )


def selected_tokens(
    mask: Int[Tensor, "batch pos"], exclude_pos0: bool
) -> Bool[Tensor, "batch pos"]:
    """Tokens that enter the statistics: real tokens, without position 0 unless asked."""
    keep = mask.bool().clone()
    if exclude_pos0:
        keep[:, 0] = False
    return keep


def prompts_prepend_bos(prompts: Any) -> bool | None:
    return prompts.prepend_bos if isinstance(prompts, PromptSet) else None


class Accumulator:
    """Running sum, maximum and count per (metric, layer), in float64."""

    def __init__(self) -> None:
        self.sums: dict[tuple[str, int], float] = {}
        self.maxima: dict[tuple[str, int], float] = {}
        self.counts: dict[tuple[str, int], int] = {}

    def add(self, metric: str, layer: int, values: Tensor) -> None:
        """Add per-token values; NaN entries are skipped (counted by the caller if needed)."""
        values = values[~torch.isnan(values)]
        key = (metric, layer)
        self.counts[key] = self.counts.get(key, 0) + values.numel()
        if values.numel() == 0:
            self.sums.setdefault(key, 0.0)
            self.maxima.setdefault(key, float("nan"))
            return
        self.sums[key] = self.sums.get(key, 0.0) + values.double().sum().item()
        batch_max = values.max().item()
        previous = self.maxima.get(key, float("nan"))
        self.maxima[key] = batch_max if previous != previous else max(previous, batch_max)

    def rows(self, statistics: tuple[str, ...] = ("mean", "max")) -> list[dict[str, Any]]:
        rows = []
        for (metric, layer), count in self.counts.items():
            values = {
                "mean": self.sums[(metric, layer)] / count if count else float("nan"),
                "max": self.maxima[(metric, layer)],
            }
            for statistic in statistics:
                rows.append(
                    {
                        "layer": layer,
                        "metric": metric,
                        "statistic": statistic,
                        "value": values[statistic],
                        "n_tokens": count,
                    }
                )
        return rows


def compare_halves(table: pd.DataFrame, n_layers: int, statistic: str = "mean") -> pd.DataFrame:
    """Return, per metric, the mean over the second half of the layers over that of the first.

    Reported twice: over all layers 0..L-1 and with layer 0 excluded, because
    in small models layer 0 writes a vector many times the embedding's norm and
    the raw ratio then shows a "curse of depth" in every model. With an odd
    number of layers the middle one belongs to neither half. Rows at layer L
    (the final residual) are ignored.
    """
    rows = []
    for metric, group in table[table["statistic"] == statistic].groupby("metric", sort=False):
        by_layer = group.set_index("layer")["value"]
        for label, first_layer in (("all", 0), ("excluding_layer_0", 1)):
            layers = [layer for layer in range(first_layer, n_layers) if layer in by_layer.index]
            half = len(layers) // 2
            if half == 0:
                ratio = float("nan")
            else:
                first = by_layer.loc[layers[:half]].mean()
                second = by_layer.loc[layers[-half:]].mean()
                ratio = second / first if first != 0 else float("nan")
            rows.append(
                {
                    "metric": metric,
                    "statistic": f"second_half_over_first_half({statistic})",
                    "layers": label,
                    "value": ratio,
                }
            )
    summary = pd.DataFrame(rows)
    for name in ("model", *CONVENTION_COLUMNS):
        if name in table.columns:
            summary[name] = table[name].iloc[0]
    summary.attrs.update(table.attrs)
    return summary
