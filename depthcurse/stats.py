"""Summary statistics with confidence intervals, across seeds or resampled items."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats


@dataclass(frozen=True)
class Estimate:
    """A point estimate with a two-sided confidence interval and its sample size."""

    value: float
    low: float
    high: float
    n: int
    method: str

    def excludes(self, reference: float) -> bool:
        """Return True when the interval lies entirely on one side of `reference`."""
        return self.low > reference or self.high < reference

    def format(self, digits: int = 3) -> str:
        if self.n < 2 or math.isnan(self.low):
            return f"{self.value:.{digits}g} (n={self.n}, no interval)"
        return f"{self.value:.{digits}g} [{self.low:.{digits}g}, {self.high:.{digits}g}] (n={self.n}, {self.method})"


def mean_ci(values: Sequence[float] | np.ndarray, confidence: float = 0.95) -> Estimate:
    """Return the mean with a Student-t interval, the usual choice for a few seeds."""
    data = np.asarray([v for v in values if not math.isnan(v)], dtype=float)
    n = len(data)
    if n == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0, "t")
    mean = float(data.mean())
    if n < 2:
        return Estimate(mean, float("nan"), float("nan"), n, "t")
    half = float(scipy_stats.t.ppf(0.5 + confidence / 2, n - 1) * data.std(ddof=1) / math.sqrt(n))
    return Estimate(mean, mean - half, mean + half, n, "t")


def ratio_ci(values: Sequence[float] | np.ndarray, confidence: float = 0.95) -> Estimate:
    """Return the geometric mean of positive ratios with a Student-t interval of their logs.

    The interval is computed for log(ratio) and exponentiated, so it stays above 0. With 2
    seeds a t interval of the ratios themselves often extends below 0, which no ratio of
    norms can reach.
    """
    data = np.asarray([v for v in values if not math.isnan(v)], dtype=float)
    if (data <= 0).any():
        raise ValueError(
            f"ratio_ci requires positive ratios, got {data[data <= 0].tolist()}; "
            "use mean_ci for values that can be zero or negative"
        )
    on_log = mean_ci(np.log(data), confidence)
    return Estimate(
        math.exp(on_log.value) if on_log.n else float("nan"),
        math.exp(on_log.low) if not math.isnan(on_log.low) else float("nan"),
        math.exp(on_log.high) if not math.isnan(on_log.high) else float("nan"),
        on_log.n,
        "t on log scale",
    )


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    statistic: Callable[[np.ndarray], float] = np.mean,
    *,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> Estimate:
    """Return `statistic` of `values` with a percentile bootstrap interval."""
    data = np.asarray(values, dtype=float)
    n = len(data)
    if n == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    point = float(statistic(data))
    rng = np.random.default_rng(seed)
    resampled = np.array([statistic(data[rng.integers(0, n, n)]) for _ in range(n_resamples)])
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(resampled, [tail, 100 - tail])
    return Estimate(point, float(low), float(high), n, "bootstrap")
