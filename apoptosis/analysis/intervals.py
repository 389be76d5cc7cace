"""The intervals every table and figure states its uncertainty with: t intervals over seeds (the
half width of a mean's interval, and the interval of a difference, Welch or paired by seed), and
the distribution-free interval of a median (the bench's ratios over its rounds)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats


def half_width(values: pd.Series, level: float = 0.95) -> float:
    """Half the width of the t interval of the mean over seeds (nan below 2 values, 0 without
    spread)."""
    values = values.dropna()
    if len(values) < 2:
        return float("nan")
    if values.std() == 0:
        return 0.0
    low, _ = stats.t.interval(level, len(values) - 1, loc=values.mean(), scale=stats.sem(values))
    return float(values.mean() - low)


def welch_interval(a: np.ndarray, b: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """mean(a) - mean(b) with its Welch confidence interval (nan bounds when n < 2)."""
    diff = float(np.mean(a) - np.mean(b))
    if len(a) < 2 or len(b) < 2:
        return diff, float("nan"), float("nan")
    if np.var(a) == 0 and np.var(b) == 0:
        return diff, diff, diff
    ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(level)
    return diff, float(ci.low), float(ci.high)


def paired_interval(a: pd.Series, b: pd.Series, level: float = 0.95) -> tuple[float, float, float]:
    """Mean of a - b over the seeds both have (Series indexed by seed), with its t interval
    (nan bounds with fewer than 2 common seeds)."""
    common = a.index.intersection(b.index)
    diffs = (a[common] - b[common]).to_numpy(dtype=float)
    if len(diffs) == 0:
        return float("nan"), float("nan"), float("nan")
    diff = float(diffs.mean())
    if len(diffs) < 2:
        return diff, float("nan"), float("nan")
    if np.var(diffs) == 0:
        return diff, diff, diff
    ci = stats.ttest_1samp(diffs, 0.0).confidence_interval(level)
    return diff, float(ci.low), float(ci.high)


MIN_VALUES_FOR_MEDIAN_INTERVAL = 6  # Hettmansperger-Sheather needs at least this many values


def median_interval(values: list[float], level: float = 0.95) -> tuple[float, float] | None:
    """The ``level`` interval of the median of ``values`` (Hettmansperger and Sheather's, free of any
    distribution, scipy's ``median_cihs``), as little moved by one outlier as the median; None
    with fewer than ``MIN_VALUES_FOR_MEDIAN_INTERVAL`` values."""
    from scipy.stats.mstats import median_cihs

    if len(values) < MIN_VALUES_FOR_MEDIAN_INTERVAL:
        return None
    low, high = median_cihs(np.asarray(values, dtype=float), alpha=1 - level)
    return float(low), float(high)
