"""ANOVA with pooling and the predicted optimum: the significance half of a Taguchi experiment.

Kept apart from the S/N ratios and response tables of :mod:`apoptosis.search.taguchi_analysis`, on whose
per-row frame and level means it builds: :func:`anova` splits the variation of a per-row column (by default the
S/N ratio) into the part each factor explains and an error term, pooling the weakest factors into the error when
the array is saturated; :func:`predict_optimum` predicts the value at the best level of every factor with the
additive model and an interval from that error term; :func:`anova_rich_table` renders the ANOVA for a terminal.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import pandas as pd
from rich.table import Table
from scipy import stats

from apoptosis.search.taguchi_analysis import _level_means, _new_table, _number, _usable

__all__ = ["anova", "predict_optimum", "anova_rich_table"]


def anova(
    rows: pd.DataFrame,
    factors: Mapping[str, Sequence[Any]],
    column: str = "sn",
    pool: Literal["auto"] | Iterable[str] | None = "auto",
) -> pd.DataFrame:
    """Taguchi ANOVA of a per-row column (by default the S/N ratio): how much of its variation each factor explains.

    For each factor, ``ss = sum over levels of n_level * (level mean - grand mean)**2`` with ``dof = levels - 1``;
    the error is what the factors leave of the total (``dof = rows - 1 - sum of the factor dofs``).

    Pooling: a saturated array (error dof 0) cannot test anything, so weak factors are moved into the error.
    ``pool="auto"`` (default) pools the factors with the smallest ``ss`` first, the fewest needed to reach an
    error dof of at least 2 while keeping at least one factor unpooled, else of at least 1; an array that
    already has error dof >= 2 is left alone. ``pool=[names]`` pools exactly those factors; ``pool=None`` (or
    an empty list) pools nothing (with error dof 0, ``ms``/``f``/``p`` of the error are NaN).

    Returns a frame with a RangeIndex and columns ``factor``, ``ss``, ``dof``, ``ms``, ``f``, ``p``
    (``scipy.stats.f.sf``), ``percent_contribution``, ``pooled``: one line per factor in the order of
    ``factors``, then ``error`` (the pooled error: residual plus pooled factors) and ``total``. A pooled factor
    keeps its own ``ss``/``dof``/``ms`` but has NaN ``f``/``p`` and 0 contribution. The contribution of an
    unpooled factor is the pure one, ``(ss - dof * ms_error) / ss_total * 100`` clipped at 0 (``ss / ss_total``
    when the error has no dof); ``error`` takes the rest, so the factor and error lines sum to 100.
    """
    used = _usable(rows, factors, column)
    y = used[column].to_numpy(dtype=float)
    grand = float(y.mean())
    ss_total = float(((y - grand) ** 2).sum())
    dof_total = len(y) - 1
    long = _level_means(used, factors, column)
    observed = long[long["n"] > 0]
    ss = {name: float((part["n"] * (part["mean"] - grand) ** 2).sum()) for name, part in observed.groupby("factor")}
    dof = {name: int(len(part)) - 1 for name, part in observed.groupby("factor")}
    ss_resid = max(ss_total - sum(ss.values()), 0.0)
    dof_resid = dof_total - sum(dof.values())
    if dof_resid < 0:
        raise ValueError(f"{len(y)} rows cannot estimate {sum(dof.values())} factor degrees of freedom")

    names = list(factors)
    if pool is None:
        pooled: set[str] = set()
    elif isinstance(pool, str):
        if pool != "auto":
            raise ValueError(f"pool must be 'auto', None or a list of factor names, got {pool!r}")
        pooled = _auto_pool(names, ss, dof, dof_resid)
    else:
        pooled = set(pool)
        unknown = pooled - set(names)
        if unknown:
            raise ValueError(f"cannot pool unknown factors {sorted(unknown)!r}")

    ss_error = ss_resid + sum(ss[n] for n in pooled)
    dof_error = dof_resid + sum(dof[n] for n in pooled)
    ms_error = ss_error / dof_error if dof_error > 0 else math.nan

    lines = []
    for name in names:
        ms = ss[name] / dof[name] if dof[name] > 0 else math.nan
        f_value = p_value = math.nan
        contribution = 0.0
        if name not in pooled:
            if dof_error > 0 and dof[name] > 0:
                if ms_error > 0:
                    f_value = ms / ms_error
                else:
                    f_value = math.inf if ms > 0 else math.nan
                p_value = float(stats.f.sf(f_value, dof[name], dof_error)) if not math.isnan(f_value) else math.nan
            pure = ss[name] - dof[name] * (ms_error if dof_error > 0 else 0.0)
            contribution = max(pure, 0.0) / ss_total * 100 if ss_total > 0 else 0.0
        lines.append((name, ss[name], dof[name], ms, f_value, p_value, contribution, name in pooled))
    error_contribution = 100.0 - sum(line[6] for line in lines)
    lines.append(("error", ss_error, dof_error, ms_error, math.nan, math.nan, error_contribution, False))
    lines.append(("total", ss_total, dof_total, math.nan, math.nan, math.nan, 100.0, False))
    table = pd.DataFrame(lines, columns=["factor", "ss", "dof", "ms", "f", "p", "percent_contribution", "pooled"])
    return table.astype({"dof": int, "pooled": bool})


def _auto_pool(names: list[str], ss: dict[str, float], dof: dict[str, int], dof_resid: int) -> set[str]:
    """The fewest smallest-``ss`` factors that lift the error dof to 2 (keeping one factor unpooled), else to 1."""
    if dof_resid >= 2:
        return set()
    order = sorted(names, key=lambda n: (ss[n], names.index(n)))
    for target in (2, 1):
        if dof_resid >= target:
            return set()
        error_dof = dof_resid
        for k, name in enumerate(order[:-1], start=1):  # never pool the last (largest) factor
            error_dof += dof[name]
            if error_dof >= target:
                return set(order[:k])
    return set()


def predict_optimum(
    rows: pd.DataFrame,
    factors: Mapping[str, Sequence[Any]],
    column: str = "sn",
    anova_table: pd.DataFrame | None = None,
    confidence: float = 0.95,
    larger_is_better: bool | None = None,
) -> dict[str, Any]:
    """Best level of every factor and the additive-model prediction at that combination, with an interval.

    The best level has the largest level mean when ``larger_is_better`` (default: True for ``"sn"``, False for
    any other column, e.g. ``"mean"`` loss). The prediction is ``grand mean + sum over the unpooled factors of
    (best level mean - grand mean)``: pooled factors are treated as noise and do not move it. The interval is
    Taguchi's: ``half_width = sqrt(F(confidence; 1, dof_error) * ms_error / n_eff)`` with
    ``n_eff = rows / (1 + sum of the dofs of the factors used)``; it is an interval for the expected per-row
    value (S/N of the replicates, or mean loss of the replicates), NaN bounds when the error has no dof.

    ``anova_table`` must be an :func:`anova` of the same ``column`` (computed with ``pool="auto"`` if None).
    For both S/N (dB) and loss units, call it twice: ``column="sn"`` and ``column="mean"``.

    Returns a dict with keys ``column``, ``larger_is_better``, ``best_levels`` ({factor: level value}),
    ``level_means`` ({factor: mean of ``column`` at its best level}), ``grand_mean``, ``predicted``, ``low``,
    ``high``, ``half_width``, ``factors_used`` (unpooled factors, in order), ``n_eff``, ``error_dof``,
    ``error_ms`` and ``confidence``.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if larger_is_better is None:
        larger_is_better = column == "sn"
    used = _usable(rows, factors, column)
    if anova_table is None:
        anova_table = anova(used, factors, column)
    grand = float(used[column].mean())
    long = _level_means(used, factors, column).dropna(subset=["mean"])
    best_levels: dict[str, Any] = {}
    level_means: dict[str, float] = {}
    for name in factors:
        part = long[long["factor"] == name]
        best = part.loc[part["mean"].idxmax() if larger_is_better else part["mean"].idxmin()]
        best_levels[name] = best["level"]
        level_means[name] = float(best["mean"])

    by_factor = anova_table.set_index("factor")
    missing = [name for name in factors if name not in by_factor.index]
    if missing or "error" not in by_factor.index:
        raise ValueError(f"the ANOVA table lacks rows for {missing or ['error']!r}")
    factors_used = [name for name in factors if not bool(by_factor.at[name, "pooled"])]
    predicted = grand + sum(level_means[name] - grand for name in factors_used)
    error_dof = int(by_factor.at["error", "dof"])
    error_ms = float(by_factor.at["error", "ms"])
    n_eff = len(used) / (1 + sum(int(by_factor.at[name, "dof"]) for name in factors_used))
    if error_dof > 0 and math.isfinite(error_ms):
        half_width = math.sqrt(float(stats.f.ppf(confidence, 1, error_dof)) * error_ms / n_eff)
    else:
        half_width = math.nan
    return {
        "column": column,
        "larger_is_better": larger_is_better,
        "best_levels": best_levels,
        "level_means": level_means,
        "grand_mean": grand,
        "predicted": float(predicted),
        "low": float(predicted - half_width),
        "high": float(predicted + half_width),
        "half_width": half_width,
        "factors_used": factors_used,
        "n_eff": n_eff,
        "error_dof": error_dof,
        "error_ms": error_ms,
        "confidence": confidence,
    }


def anova_rich_table(table: pd.DataFrame, title: str | None = "ANOVA") -> Table:
    """Render an :func:`anova` table for the terminal; pooled factors are dimmed and marked, F/p left blank."""
    out = _new_table(title)
    out.add_column("source", overflow="fold", max_width=26)
    for header in ("SS", "dof", "MS", "F", "p", "%"):
        out.add_column(header, justify="right", no_wrap=True)
    out.add_column("pooled", no_wrap=True)
    for _, line in table.iterrows():
        p = float(line["p"])
        p_text = "<0.001" if p < 0.001 else _number(p, ".3f")
        out.add_row(
            str(line["factor"]),
            _number(float(line["ss"]), ".3g"),
            str(int(line["dof"])),
            _number(float(line["ms"]), ".3g"),
            _number(float(line["f"]), ".2f"),
            p_text,
            _number(float(line["percent_contribution"]), ".1f"),
            "yes" if bool(line["pooled"]) else "",
            style="dim" if bool(line["pooled"]) else None,
            end_section=line["factor"] == "error",
        )
    return out
