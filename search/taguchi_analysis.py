"""S/N ratios and response tables: the main-effects half of a Taguchi experiment.

The experiment runs every row of an orthogonal array several times (the replicates are the noise: seeds) and
measures a loss, where smaller is better. The analysis follows Taguchi's recipe:

1. :func:`per_row` collapses the replicates of each design row to their mean, spread and smaller-the-better
   signal-to-noise ratio (:func:`signal_to_noise`), so a row is judged on both its loss and its robustness.
2. :func:`response_table` averages a per-row column over the rows that share a level of a factor; in an
   orthogonal array every other factor is balanced within those rows, so the level means are the factor's
   main effect.
3. :func:`apoptosis.search.taguchi_anova.anova` splits the variation of the per-row column into the part each
   factor explains and an error term, pooling the weakest factors into the error when the array is saturated.
4. :func:`apoptosis.search.taguchi_anova.predict_optimum` picks the best level of every factor and predicts the
   value at that combination (which usually was not run), with a confidence interval from the error term.

Steps 3 and 4 live in :mod:`apoptosis.search.taguchi_anova`, which builds on the level means here. Tables are
pandas frames; :func:`response_rich_table` renders one for a terminal and :func:`main_effects_plot` draws the
classic main-effects figure.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich import box
from rich.table import Table

from apoptosis.core.io import atomic_write

__all__ = [
    "signal_to_noise",
    "per_row",
    "response_table",
    "main_effects_plot",
    "response_rich_table",
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
