"""Confidence intervals and the result cache."""

import math

import numpy as np
import pandas as pd
import pytest

from depthcurse.cache import ResultCache, model_hash
from depthcurse.stats import bootstrap_ci, mean_ci, ratio_ci


def test_mean_ci_hand_computed():
    # Mean 2, sample sd 1, n = 3: half-width t(0.975, 2) * 1 / sqrt(3) = 4.3027 / 1.7321.
    estimate = mean_ci([1.0, 2.0, 3.0])
    assert estimate.value == pytest.approx(2.0)
    assert estimate.high - estimate.value == pytest.approx(4.302653 / math.sqrt(3), rel=1e-5)
    assert estimate.excludes(10.0)
    assert not estimate.excludes(2.5)


def test_mean_ci_single_value_has_no_interval():
    estimate = mean_ci([4.0])
    assert estimate.value == 4.0
    assert math.isnan(estimate.low)
    assert "no interval" in estimate.format()


def test_ratio_ci_hand_computed():
    # log 0.5 and log 2 have mean 0 and sample sd log(4) / sqrt(2); n = 2, t(0.975, 1) = 12.706.
    estimate = ratio_ci([0.5, 2.0])
    half = 12.706205 * math.log(4) / math.sqrt(2) / math.sqrt(2)
    assert estimate.value == pytest.approx(1.0)
    assert estimate.low == pytest.approx(math.exp(-half), rel=1e-5)
    assert estimate.high == pytest.approx(math.exp(half), rel=1e-5)
    assert estimate.low > 0
    assert mean_ci([0.5, 2.0]).low < 0


def test_ratio_ci_rejects_non_positive():
    with pytest.raises(ValueError, match=r"requires positive ratios, got \[0.0\]"):
        ratio_ci([0.0, 1.0])
    assert math.isnan(ratio_ci([2.0]).low)


def test_bootstrap_ci_contains_point_and_narrows():
    rng = np.random.default_rng(0)
    small = bootstrap_ci(rng.normal(size=20))
    large = bootstrap_ci(rng.normal(size=2000))
    assert small.low <= small.value <= small.high
    assert (large.high - large.low) < (small.high - small.low) / 3


def test_cache_reuses_and_separates_keys(tmp_path):
    cache = ResultCache(tmp_path / "cache")
    calls = []

    def compute():
        calls.append(1)
        return pd.DataFrame({"layer": [0, 1], "value": [0.5, 0.25]})

    first = cache.get_or_compute("abc", "norms", {"n": 1}, compute)
    second = cache.get_or_compute("abc", "norms", {"n": 1}, compute)
    pd.testing.assert_frame_equal(first, second)
    assert len(calls) == 1
    cache.get_or_compute("abc", "norms", {"n": 2}, compute)
    cache.get_or_compute("abd", "norms", {"n": 1}, compute)
    assert len(calls) == 3


def test_model_hash_changes_with_weights(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"one")
    first = model_hash(folder)
    (folder / "model.safetensors").write_bytes(b"two")
    assert model_hash(folder) != first
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no weight files"):
        model_hash(tmp_path / "empty")
