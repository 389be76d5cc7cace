"""Analysis half of a Taguchi experiment: S/N ratios, response tables, ANOVA with pooling, optimum prediction.

The experiment runs every row of an orthogonal array several times (the replicates are the noise: seeds) and
measures a loss, where smaller is better. The analysis follows Taguchi's recipe:

1. :func:`per_row` collapses the replicates of each design row to their mean, spread and smaller-the-better
   signal-to-noise ratio (:func:`signal_to_noise`), so a row is judged on both its loss and its robustness.
2. :func:`response_table` averages a per-row column over the rows that share a level of a factor; in an
   orthogonal array every other factor is balanced within those rows, so the level means are the factor's
   main effect.
3. :func:`anova` splits the variation of the per-row column into the part each factor explains and an error
   term, pooling the weakest factors into the error when the array is saturated (no error degrees of freedom).
4. :func:`predict_optimum` picks the best level of every factor and predicts the value at that combination
   (which usually was not run) with the additive model, with a confidence interval from the error term.

Tables are pandas frames; :func:`response_rich_table` and :func:`anova_rich_table` render them for a terminal
and :func:`main_effects_plot` draws the classic main-effects figure.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from rich import box
from rich.table import Table
from scipy import stats

from apoptosis.core.io import atomic_write

__all__ = [
    "signal_to_noise",
    "per_row",
    "response_table",
    "anova",
    "predict_optimum",
    "main_effects_plot",
    "response_rich_table",
    "anova_rich_table",
]

_RESERVED = {"row", "value", "mean", "std", "n", "sn", "error", "total"}


def signal_to_noise(values: Iterable[float] | np.ndarray) -> float:
    """Smaller-the-better S/N ratio in dB, ``-10 * log10(mean(y**2))``.

    It rewards a low loss and a small spread over the replicates at once (``mean(y**2) = mean**2 + var``),
    so the larger the S/N, the better and more robust the setting. NaN in, NaN out; zero loss gives ``inf``.
    """
    y = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=float).ravel()
    if y.size == 0:
        raise ValueError("signal_to_noise needs at least one value")
    with np.errstate(divide="ignore"):
        return float(-10.0 * np.log10(np.mean(y**2)))


def _level_index(value: Any, levels: Sequence[Any]) -> int:
    """Position of ``value`` among ``levels``: exact equality first, then numeric closeness (CSV round trips)."""
    for i, level in enumerate(levels):
        try:
            if value == level:
                return i
        except (TypeError, ValueError):
            continue
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        for i, level in enumerate(levels):
            if isinstance(level, numbers.Real) and not isinstance(level, bool):
                if math.isclose(float(value), float(level), rel_tol=1e-9, abs_tol=1e-12):
                    return i
    raise ValueError(f"{value!r} is not one of the levels {list(levels)!r}")


def _check_factors(frame: pd.DataFrame, factors: Mapping[str, Sequence[Any]]) -> None:
    if not factors:
        raise ValueError("at least one factor is needed")
    for name, levels in factors.items():
        if name in _RESERVED:
            raise ValueError(f"factor name {name!r} is reserved")
        if name not in frame.columns:
            raise ValueError(f"factor {name!r} is not a column of the frame")
        if len(levels) < 2:
            raise ValueError(f"factor {name!r} needs at least two levels, got {list(levels)!r}")


def _codes(frame: pd.DataFrame, name: str, levels: Sequence[Any]) -> np.ndarray:
    """0-based level index of every row for one factor."""
    return np.array([_level_index(v, levels) for v in frame[name]], dtype=int)


def _usable(rows: pd.DataFrame, factors: Mapping[str, Sequence[Any]], column: str) -> pd.DataFrame:
    """The rows that carry a value in ``column`` (a row whose runs all failed has NaN and drops out)."""
    _check_factors(rows, factors)
    if column not in rows.columns:
        raise ValueError(f"column {column!r} is not in the per-row frame")
    used = rows[rows[column].notna()]
    if used.empty:
        raise ValueError(f"no row has a value in column {column!r}")
    return used


def _level_means(rows: pd.DataFrame, factors: Mapping[str, Sequence[Any]], column: str) -> pd.DataFrame:
    """Long form: one line per (factor, level) with the level's mean of ``column`` and its row count."""
    parts = []
    y = rows[column].to_numpy(dtype=float)
    for name, levels in factors.items():
        codes = _codes(rows, name, levels)
        grouped = pd.Series(y).groupby(codes).agg(["mean", "size"]).reindex(range(len(levels)))
        parts.append(
            pd.DataFrame(
                {
                    "factor": name,
                    "level_index": np.arange(1, len(levels) + 1),
                    "level": pd.Series(list(levels), dtype=object),
                    "mean": grouped["mean"].to_numpy(dtype=float),
                    "n": grouped["size"].fillna(0).to_numpy(dtype=int),
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


def per_row(results: pd.DataFrame, factors: Mapping[str, Sequence[Any]]) -> pd.DataFrame:
    """Collapse the replicates of every design row: the per-row frame every other function works on.

    ``results`` has one line per (design row, replicate) with columns ``row``, one column per factor holding
    the level value and ``value`` (the loss). Returns one line per design row, sorted by ``row``, with columns
    ``row``, the factors (canonical level values from ``factors``), ``mean``, ``std`` (ddof=1, NaN with a single
    replicate), ``n`` (replicates with a value) and ``sn`` (:func:`signal_to_noise`). NaN losses are ignored;
    a row without any value has ``n == 0`` and NaN statistics.
    """
    for needed in ("row", "value"):
        if needed not in results.columns:
            raise ValueError(f"results needs a {needed!r} column")
    _check_factors(results, factors)
    lines = []
    for row, group in results.groupby("row", sort=True):
        line: dict[str, Any] = {"row": row}
        for name, levels in factors.items():
            codes = set(_codes(group, name, levels).tolist())
            if len(codes) != 1:
                raise ValueError(f"row {row} has several levels of {name!r}: {sorted(group[name].unique())!r}")
            line[name] = levels[codes.pop()]
        y = group["value"].dropna().to_numpy(dtype=float)
        line["mean"] = float(y.mean()) if y.size else math.nan
        line["std"] = float(y.std(ddof=1)) if y.size > 1 else math.nan
        line["n"] = int(y.size)
        line["sn"] = signal_to_noise(y) if y.size else math.nan
        lines.append(line)
    frame = pd.DataFrame(lines, columns=["row", *factors, "mean", "std", "n", "sn"])
    for name in factors:
        frame[name] = frame[name].astype(object)
    return frame


def response_table(rows: pd.DataFrame, factors: Mapping[str, Sequence[Any]], column: str = "sn") -> pd.DataFrame:
    """Main effects: the mean of ``column`` over the rows at each level of each factor.

    Wide shape, one line per factor: index ``factor`` (in the order of ``factors``), columns ``level_1`` ..
    ``level_K`` (K = the most levels of any factor; ``level_i`` is the i-th level of ``factors[name]``, NaN
    past a factor's own level count or for a level no row used), ``delta`` (max - min of the level means:
    the size of the effect) and ``rank`` (1 = the largest delta; ties to 1e-9 share the better rank).
    The level values themselves are ``factors[name]``; the table does not repeat them.
    """
    used = _usable(rows, factors, column)
    long = _level_means(used, factors, column)
    k = max(len(levels) for levels in factors.values())
    wide = long.pivot(index="factor", columns="level_index", values="mean")
    wide = wide.reindex(index=list(factors), columns=range(1, k + 1))
    wide.columns = [f"level_{i}" for i in wide.columns]
    wide.index.name = "factor"
    wide["delta"] = wide.max(axis=1) - wide.min(axis=1)
    wide["rank"] = wide["delta"].round(9).rank(method="min", ascending=False).astype(int)
    return wide


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


def _level_label(value: Any) -> str:
    if isinstance(value, numbers.Real) and not isinstance(value, bool | numbers.Integral):
        return f"{float(value):g}"
    return str(value)


def main_effects_plot(
    rows: pd.DataFrame, factors: Mapping[str, Sequence[Any]], path: str | Path, column: str = "sn"
) -> Path:
    """Write the main-effects figure (PNG) to ``path`` atomically and return the path.

    One small panel per factor with the mean of ``column`` at each level and the grand mean as a dashed line;
    the panels share the y axis so the size of the effects can be compared at a glance. The figure is built
    without pyplot, so importing this module never changes the matplotlib backend of the caller.
    """
    import seaborn as sns
    from matplotlib.figure import Figure

    used = _usable(rows, factors, column)
    long = _level_means(used, factors, column)
    grand = float(used[column].mean())
    ncols = min(4, len(factors))
    nrows = math.ceil(len(factors) / ncols)
    ylabel = "mean S/N (dB)" if column == "sn" else f"mean {column}"
    with sns.axes_style("whitegrid"):
        fig = Figure(figsize=(3.0 * ncols, 2.6 * nrows), layout="constrained")
        axes = np.atleast_1d(fig.subplots(nrows, ncols, sharey=True, squeeze=False)).ravel()
        for i, (ax, name) in enumerate(zip(axes, factors, strict=False)):
            part = long[long["factor"] == name].copy()
            labels = [_level_label(v) for v in part["level"]]
            if len(set(labels)) != len(labels):
                labels = [f"{i}:{label}" for i, label in zip(part["level_index"], labels, strict=True)]
            part["label"] = labels
            sns.pointplot(data=part, x="label", y="mean", order=labels, errorbar=None, color="C0", ax=ax)
            ax.axhline(grand, color="grey", linestyle="--", linewidth=1)
            ax.set_title(name, fontsize=9)
            ax.set_xlabel("")
            ax.set_ylabel(ylabel if i % ncols == 0 else "")
            ax.tick_params(labelsize=8)
        for ax in axes[len(factors) :]:
            ax.set_visible(False)
    path = Path(path)
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))
    return path


def _number(value: float, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return format(value, spec)


def _new_table(title: str | None) -> Table:
    return Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1))


def response_rich_table(table: pd.DataFrame, title: str | None = "Response table") -> Table:
    """Render a :func:`response_table` for the terminal: factor, L1..Lk level means, delta, rank.

    Long factor names are cut with an ellipsis so 8 factors with 3 levels fit in 100 columns.
    """
    levels = [c for c in table.columns if str(c).startswith("level_")]
    out = _new_table(title)
    out.add_column("factor", overflow="fold", max_width=26)
    for c in levels:
        out.add_column("L" + str(c).removeprefix("level_"), justify="right", no_wrap=True)
    out.add_column("delta", justify="right", no_wrap=True)
    out.add_column("rank", justify="right", no_wrap=True)
    for name, line in table.iterrows():
        out.add_row(
            str(name),
            *(_number(float(line[c]), ".3f") for c in levels),
            _number(float(line["delta"]), ".3f"),
            str(int(line["rank"])),
        )
    return out


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
