"""Shared figure layout: legends outside the data, readable ticks and short curve labels."""

from __future__ import annotations

import math
from collections.abc import Iterable

from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.axis import Axis
from matplotlib.legend import Legend
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter


def legend_outside(ax: Axes, *, gather: Iterable[Axes] = (), **kwargs) -> Legend | None:
    """Draw `ax`'s legend to the right of its axes, so that it cannot cover their data.

    Call it on the rightmost axes of a row, because the legend would overlap a panel to the
    right. `gather` adds the labelled artists of other panels, once per label. Constrained
    layout, tight layout and ``savefig(bbox_inches="tight")`` make room for the legend.
    Returns None when no artist has a label.
    """
    entries: dict[str, Artist] = {}
    for source in [*gather, ax]:
        for handle, label in zip(*source.get_legend_handles_labels(), strict=True):
            entries.setdefault(label, handle)
    if not entries:
        return None
    handles, labels = list(entries.values()), list(entries)
    options = {"loc": "upper left", "bbox_to_anchor": (1.02, 1.0), "borderaxespad": 0.0}
    return ax.legend(handles, labels, **{**options, **kwargs})


def integer_ticks(axis: Axis) -> None:
    """Put ticks only on whole numbers, for layer indices, lags and steps."""
    axis.set_major_locator(MaxNLocator(integer=True))


def _compact(value: float, _position: int | None = None) -> str:
    """Format a tick value as ``2e12`` (mantissa and exponent, no plus sign)."""
    if value <= 0:
        return ""
    text = f"{value:.0e}"
    mantissa, exponent = text.split("e")
    return f"{mantissa}e{int(exponent)}"


def log_ticks(axis: Axis) -> None:
    """Label a log-scale axis with a few ``2e12``-style major ticks and unlabelled minor ones.

    Matplotlib (3.11) labels minor ticks too when the data span little more than a decade, so
    its long ``2×10^12`` labels overlap. The ticks per decade shrink as the span grows: 1, 2, 3 and
    5 up to one decade, 1, 2 and 5 up to three, and only powers of 10 beyond.
    """
    low, high = sorted(axis.get_view_interval())
    decades = math.log10(high / low) if low > 0 else math.inf
    if decades <= 1:
        subs: tuple[float, ...] = (1.0, 2.0, 3.0, 5.0)
    elif decades <= 3:
        subs = (1.0, 2.0, 5.0)
    else:
        subs = (1.0,)
    axis.set_major_locator(LogLocator(base=10, subs=subs, numticks=12))
    axis.set_major_formatter(FuncFormatter(_compact))
    axis.set_minor_formatter(NullFormatter())


def short_labels(names: list[str], separator: str = " | ") -> list[str]:
    """Return names without the `separator`-joined parts that all of them share.

    ``/runs/midas-seed0/checkpoints/step-000300 | mean | attn`` and ``... | mlp`` become
    ``attn`` and ``mlp``. A single name keeps only its last part.
    """
    split = [str(name).split(separator) for name in names]
    if len(split) == 1:
        return [split[0][-1]]
    shared = set.intersection(*(set(parts) for parts in split))
    labels = []
    for parts in split:
        kept = [part for part in parts if part not in shared]
        labels.append(separator.join(kept) if kept else parts[-1])
    return labels
