"""The report of ``apoptosis lazarus-curve``: what a sweep's rows say, and what its folder records.

Kept apart from the runner so the summaries, the terminal table, the two plots and ``curve.json``
(the settings a folder was swept with, checked on resume) work on a frame of rows alone, whether
it was just run or read back from ``curve.csv``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd
import seaborn as sns
from rich.table import Table

from apoptosis.lazarus.curve_grid import CURVE_LOSSES, NO_RECOVERY, NOT_APPLICABLE, T_SCALED, CurveSettings
from apoptosis.lazarus.recovery import LossWeights
from apoptosis.training.run_plots import save_figure

SETTINGS_FILE = "curve.json"
RECOVERY_PLOT = "recovery.png"
LOSS_PLOT = "val_loss.png"

_ORDER = {
    "kind": {"noise": 0, "prune": 1},
    "mode": {NOT_APPLICABLE: 0, "frozen": 1, "regrow": 2},
    "anchor": {NOT_APPLICABLE: 0, "original": 1, "damaged": 2},
    "variant": {NO_RECOVERY: 0, T_SCALED: 1, **{name: 2 + i for i, name in enumerate(CURVE_LOSSES)}},
}


# --- curve.json -------------------------------------------------------------------------------


def settings_record(settings: CurveSettings, run_dir: Path, out: Path, step: int) -> dict[str, Any]:
    """What ``curve.json`` holds: the run (relative to the folder, and its step) and the settings."""
    return {
        "source_run": os.path.relpath(Path(run_dir).resolve(), Path(out).resolve()),
        "run_step": step,
        "settings": settings.to_dict(),
        "loss_weights": asdict(LossWeights()),
    }


def record_differences(saved: dict[str, Any], record: dict[str, Any]) -> list[str]:
    """Each way a saved ``curve.json`` differs from ``record``, as "name THERE there, HERE here"."""
    new = json.loads(json.dumps(record))
    diffs = []
    for key in new:
        if key in ("settings", "loss_weights") and isinstance(saved.get(key), dict):
            for name, value in new[key].items():
                if saved[key].get(name) != value:
                    diffs.append(f"{name} {saved[key].get(name)} there, {value} here")
        elif saved.get(key) != new[key]:
            diffs.append(f"{key} {saved.get(key)} there, {new[key]} here")
    return diffs


# --- summaries --------------------------------------------------------------------------------


def with_controls(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows with a ``variant`` column: each loss, ``none``, and a ``T-scaled`` row per no-recovery
    row (loss and its recovery of the temperature-scaled damaged model; T changes no top-1 choice)."""
    rows = frame.assign(variant=frame["loss"])
    none = rows[rows["loss"] == NO_RECOVERY]
    scaled = none.assign(
        variant=T_SCALED,
        recovered_loss=none["temperature_scaled_loss"],
        loss_recovery=none["temperature_scaled_loss_recovery"],
    )
    return pd.concat([rows, scaled], ignore_index=True)


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    ranks = {c: frame[c].map(lambda v, c=c: _ORDER[c].get(v, 99)) for c in _ORDER}
    return (
        frame.assign(**{f"_{c}": r for c, r in ranks.items()})
        .sort_values(["_kind", "structured", "amount", "_mode", "_anchor", "_variant"], kind="stable")
        .drop(columns=[f"_{c}" for c in _ORDER])
    )


def summarize(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean, sd and count over seeds of loss recovery, accuracy recovery and recovered loss, per
    damage x mode x anchor x variant (controls included)."""
    keys = ["kind", "structured", "amount", "mode", "anchor", "variant"]
    measures = ["loss_recovery", "accuracy_recovery", "recovered_loss"]
    grouped = _sorted(with_controls(frame)).groupby(keys, sort=False)[measures]
    stats = grouped.agg(["mean", "std", "count"])
    stats.columns = [f"{m}_{s}" for m, s in stats.columns]
    return stats.reset_index().assign(seeds=grouped.size().values)


def _mean_sd(mean: float, sd: float, percent: bool) -> str:
    if math.isnan(mean):
        return "n/a"
    if percent:
        text = f"{round(100 * mean, 1) + 0.0:.1f}"  # + 0.0: "0.0", never "-0.0"
        return f"{text}%" if math.isnan(sd) else f"{text} ± {100 * sd:.1f}%"
    return f"{mean:.4f}" if math.isnan(sd) else f"{mean:.4f} ± {sd:.4f}"


def damage_label(kind: str, amount: float, structured: bool) -> str:
    return f"{kind} {amount:g}" + (" structured" if structured else "")


def curve_table(frame: pd.DataFrame, title: str) -> Table:
    """Mean ± sd over seeds per damage x mode x anchor x loss, the controls first in each damage."""
    summary = summarize(frame)
    clean = frame["clean_loss"].iloc[0] if len(frame) else math.nan
    table = Table(
        title=f"{title} (clean val loss {clean:.4f})",
        title_justify="left",
        caption=(
            "mean ± sd over seeds; rec. = (damaged - model) / (damaged - clean)\n"
            f"none: no recovery; {T_SCALED}: the damaged model at its fitted temperature\n"
            "mode -: no mask (noise) or no recovery; anchor -: no teacher (no consistency term)\n"
            "val loss: of the model in that row"
        ),
        caption_justify="left",
    )
    for column in ("damage", "mode", "anchor", "loss", "seeds", "loss rec.", "acc. rec.", "val loss"):
        table.add_column(
            column, justify="right" if column in ("seeds", "loss rec.", "acc. rec.", "val loss") else "left"
        )
    records = summary.to_dict("records")
    for i, r in enumerate(records):
        damage = damage_label(r["kind"], r["amount"], r["structured"])
        last = (
            i + 1 == len(records)
            or damage_label(records[i + 1]["kind"], records[i + 1]["amount"], records[i + 1]["structured"]) != damage
        )
        table.add_row(
            damage,
            r["mode"],
            r["anchor"],
            r["variant"],
            str(r["seeds"]),
            _mean_sd(r["loss_recovery_mean"], r["loss_recovery_std"], True),
            _mean_sd(r["accuracy_recovery_mean"], r["accuracy_recovery_std"], True),
            _mean_sd(r["recovered_loss_mean"], r["recovered_loss_std"], False),
            end_section=last,
        )
    return table


# --- plots ------------------------------------------------------------------------------------


def _panels(frame: pd.DataFrame, modes: Iterable[str]) -> pd.DataFrame:
    """A ``panel`` per damage kind and mode; rows without a mode (controls) go into every mode's
    panel of their kind, so each panel has its own baselines."""
    parts = []
    for (kind, structured), rows in frame.groupby(["kind", "structured"], sort=False):
        if kind == "noise":
            parts.append(rows.assign(panel="noise (no mask)"))
            continue
        name = "structured prune" if structured else "prune"
        for mode in modes:
            chosen = rows[(rows["mode"] == mode) | (rows["mode"] == NOT_APPLICABLE)]
            parts.append(chosen.assign(panel=f"{name}, {mode}"))
    return pd.concat(parts, ignore_index=True) if parts else frame.assign(panel=[])


def _orders(data: pd.DataFrame, column: str, ranks: dict[str, int]) -> list[str]:
    return sorted(data[column].unique(), key=lambda v: (ranks.get(v, 99), v))


def _palette(levels: list[str], fixed: dict[str, str]) -> dict[str, Any]:
    """Greys for the controls, so the recoveries keep the colours."""
    colours = iter(sns.color_palette("deep", len(levels)))
    return {level: fixed[level] if level in fixed else next(colours) for level in levels}


def plot_recovery(frame: pd.DataFrame, modes: Iterable[str], title: str):
    """Loss recovery against damage amount: hue = loss variant (with none and T-scaled), style =
    anchor, one panel per damage kind and mode, error bars = sd over seeds."""
    data = _panels(_sorted(with_controls(frame)), modes)
    hues = _orders(data, "variant", _ORDER["variant"])
    grid = _relplot(data, "loss_recovery", "variant", hues, {NO_RECOVERY: "0.6", T_SCALED: "black"})
    for ax in grid.axes.flat:
        ax.axhline(0.0, color="grey", linewidth=0.8, linestyle=":")
        ax.axhline(1.0, color="grey", linewidth=0.8, linestyle=":")
    grid.set_titles("{col_name}")
    grid.set_axis_labels("damage (noise alpha or pruned fraction)", "loss recovery")
    grid.figure.suptitle(title, y=1.03)
    return grid.figure


def _relplot(data: pd.DataFrame, y: str, hue: str, hues: list[str], fixed_colours: dict[str, str]):
    """One panel per damage kind and mode: ``y`` against the damage amount, mean ± sd over seeds
    as error bars, one line per ``hue`` (controls in fixed greys), style = anchor."""
    return sns.relplot(
        data=data,
        x="amount",
        y=y,
        hue=hue,
        hue_order=hues,
        palette=_palette(hues, fixed_colours),
        style="anchor",
        style_order=_orders(data, "anchor", _ORDER["anchor"]),
        col="panel",
        kind="line",
        markers=True,
        errorbar="sd",
        err_style="bars",
        facet_kws={"sharex": False},
        height=3.6,
        aspect=1.1,
    )


def plot_val_loss(frame: pd.DataFrame, modes: Iterable[str], title: str):
    """Validation loss against damage amount: clean, damaged, T-scaled and each recovery (style = anchor)."""
    none = frame[frame["loss"] == NO_RECOVERY]
    recovered = frame[frame["loss"] != NO_RECOVERY]
    keep = ["kind", "structured", "amount", "seed", "mode", "anchor"]
    curves = [
        none[keep].assign(curve="clean", val_loss=none["clean_loss"]),
        none[keep].assign(curve="damaged", val_loss=none["damaged_loss"]),
        none[keep].assign(curve=T_SCALED, val_loss=none["temperature_scaled_loss"]),
        recovered[keep].assign(curve="recovered: " + recovered["loss"], val_loss=recovered["recovered_loss"]),
    ]
    data = _panels(pd.concat(curves, ignore_index=True), modes)
    ranks = {"clean": 0, "damaged": 1, T_SCALED: 2, **{f"recovered: {n}": 3 + i for i, n in enumerate(CURVE_LOSSES)}}
    hues = _orders(data, "curve", ranks)
    grid = _relplot(data, "val_loss", "curve", hues, {"clean": "black", "damaged": "0.6", T_SCALED: "0.3"})
    grid.set_titles("{col_name}")
    grid.set_axis_labels("damage (noise alpha or pruned fraction)", "val loss (nats/char)")
    grid.figure.suptitle(title, y=1.03)
    return grid.figure


def write_plots(frame: pd.DataFrame, modes: Iterable[str], out: Path, name: str) -> list[Path]:
    modes = list(modes)
    paths = [out / RECOVERY_PLOT, out / LOSS_PLOT]
    save_figure(plot_recovery(frame, modes, f"{name}: data-free loss recovery"), paths[0])
    save_figure(plot_val_loss(frame, modes, f"{name}: validation loss"), paths[1])
    return paths
