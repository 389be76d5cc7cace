"""``apoptosis lazarus-curve``: data-free recovery against the amount of damage, in one sweep.

For every damage level and seed the run's model is damaged once; the copy is then recovered once
per anchor x mode x loss variant and measured beside two controls that need no recovery: the
damaged model left alone (``none``) and the damaged model at its best softmax temperature
(``T-scaled``). Every finished row is written to ``curve.csv`` at once (atomically), and the same
command run again on the same folder skips the rows already there, so a killed sweep resumes.

This module runs the rows and keeps ``curve.csv``; the rows to run are planned in
:mod:`apoptosis.lazarus.curve_grid`, and the table, plots and ``curve.json`` are made in
:mod:`apoptosis.lazarus.curve_report`.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from apoptosis.core.config import RunConfig
from apoptosis.core.errors import ApoptosisError
from apoptosis.core.io import atomic_write_json, atomic_write_text
from apoptosis.core.model import GPT
from apoptosis.lazarus.curve_grid import KEY, NO_RECOVERY, Cell, CurveSettings, plan
from apoptosis.lazarus.curve_report import (
    SETTINGS_FILE,
    curve_table,
    record_differences,
    settings_record,
    write_plots,
)
from apoptosis.lazarus.damage import damage_model
from apoptosis.lazarus.recovery import (
    evaluation_batches,
    fit_temperature,
    logits_on,
    quality,
    recover_copy,
    recovery_fraction,
)
from apoptosis.training import load_model

CSV_FILE = "curve.csv"
DEFAULT_FOLDER = "lazarus-curve"

MEASURES = [
    "clean_loss",
    "clean_accuracy",
    "damaged_loss",
    "damaged_accuracy",
    "damaged_agreement",
    "temperature",
    "temperature_scaled_loss",
    "temperature_scaled_loss_recovery",
    "recovered_loss",
    "recovered_accuracy",
    "recovered_agreement",
    "loss_recovery",
    "accuracy_recovery",
    "agreement_recovery",
    "seconds",
]
COLUMNS = KEY + MEASURES


# --- the folder (curve.csv) -----------------------------------------------------------------


def open_folder(out: Path, record: dict[str, Any]) -> pd.DataFrame:
    """The rows already finished in ``out`` (none for a new folder). A folder from another sweep,
    or one that is not a sweep folder, is refused."""
    meta = out / SETTINGS_FILE
    if meta.is_file():
        try:
            saved = json.loads(meta.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ApoptosisError(f"{meta} is not valid JSON ({e}): remove {out} or choose another --out") from None
        diffs = record_differences(saved, record)
        if diffs:
            raise ApoptosisError(
                f"{out} holds a sweep with other settings ({'; '.join(diffs)}): repeat its options to resume it, "
                "or choose another --out"
            )
        return read_curve(out / CSV_FILE)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ApoptosisError(f"{out} exists and is not a lazarus-curve folder: remove it or choose another --out")
    atomic_write_json(meta, record)
    return pd.DataFrame(columns=COLUMNS)


def read_curve(path: str | Path) -> pd.DataFrame:
    """``curve.csv`` with exact floats (an empty cell is an undefined recovery: NaN)."""
    path = Path(path)
    if not path.is_file():
        return pd.DataFrame(columns=COLUMNS)
    frame = pd.read_csv(path, keep_default_na=False, na_values=[""], dtype={"seed": int})
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise ApoptosisError(f"{path} lacks the columns {', '.join(missing)}: remove it to start the sweep again")
    frame["structured"] = frame["structured"].astype(str).str.lower() == "true"
    return frame[COLUMNS]


def _write_curve(path: Path, rows: dict[tuple[Any, ...], dict[str, Any]], order: dict[tuple[Any, ...], int]) -> None:
    keys = sorted(rows, key=lambda k: order.get(k, len(order)))
    frame = pd.DataFrame([rows[k] for k in keys], columns=COLUMNS)
    atomic_write_text(path, frame.to_csv(index=False))


# --- measuring --------------------------------------------------------------------------------


class Measure:
    """Clean logits once per sweep; a damaged model's logits and temperature once per damage."""

    def __init__(self, clean: GPT, report: list, calibration: list) -> None:
        self.report, self.calibration = report, calibration
        logits, self.targets = logits_on(clean, report)
        self.clean_top1 = logits.argmax(-1)
        self.clean = quality(logits, self.targets, self.clean_top1)

    def damaged(self, model: GPT) -> dict[str, float]:
        temperature = fit_temperature(*logits_on(model, self.calibration))
        logits = logits_on(model, self.report)[0]
        figures = quality(logits, self.targets, self.clean_top1)
        scaled = quality(logits, self.targets, self.clean_top1, temperature)["loss"]
        return {**figures, "temperature": temperature, "temperature_scaled_loss": scaled}

    def model(self, model: GPT) -> dict[str, float]:
        return quality(logits_on(model, self.report)[0], self.targets, self.clean_top1)

    def row(self, cell: Cell, damaged: dict[str, float], recovered: dict[str, float], seconds: float) -> dict[str, Any]:
        c = self.clean
        return {
            **dict(zip(KEY, cell.key, strict=True)),
            "clean_loss": c["loss"],
            "clean_accuracy": c["accuracy"],
            "damaged_loss": damaged["loss"],
            "damaged_accuracy": damaged["accuracy"],
            "damaged_agreement": damaged["agreement"],
            "temperature": damaged["temperature"],
            "temperature_scaled_loss": damaged["temperature_scaled_loss"],
            "temperature_scaled_loss_recovery": recovery_fraction(
                c["loss"], damaged["loss"], damaged["temperature_scaled_loss"]
            ),
            "recovered_loss": recovered["loss"],
            "recovered_accuracy": recovered["accuracy"],
            "recovered_agreement": recovered["agreement"],
            "loss_recovery": recovery_fraction(c["loss"], damaged["loss"], recovered["loss"]),
            "accuracy_recovery": recovery_fraction(c["accuracy"], damaged["accuracy"], recovered["accuracy"]),
            "agreement_recovery": recovery_fraction(c["agreement"], damaged["agreement"], recovered["agreement"]),
            "seconds": round(seconds, 3),
        }


# --- the sweep --------------------------------------------------------------------------------


def default_folder(run_dir: Path) -> Path:
    return Path(run_dir) / DEFAULT_FOLDER


def run_curve(
    run_dir: Path,
    settings: CurveSettings,
    original: GPT,
    vocab: Any,
    ckpt: dict[str, Any],
    out: Path,
    device: str = "cpu",
    console: Console | None = None,
    quiet: bool = False,
) -> pd.DataFrame:
    """Run every row of ``settings`` not yet in ``out/curve.csv``, writing the CSV after each; returns all rows."""
    console = console or Console()
    settings.validate(original.config.block_size)
    existing = open_folder(out, settings_record(settings, run_dir, out, ckpt["step"]))
    groups = plan(settings)
    order = {cell.key: i for i, cell in enumerate(c for _, cells in groups for c in cells)}
    rows: dict[tuple[Any, ...], dict[str, Any]] = {}
    for record in existing.to_dict("records"):
        key = Cell(*(record[k] for k in KEY)).key
        if key not in order:
            raise ApoptosisError(f"{out / CSV_FILE} holds a row outside this sweep ({key}): remove the file or the row")
        rows.setdefault(key, record)
    pending = [(spec, [c for c in cells if c.key not in rows]) for spec, cells in groups]
    pending = [(spec, cells) for spec, cells in pending if cells]
    recoveries = sum(c.loss != NO_RECOVERY for _, cells in pending for c in cells)
    if not pending:
        return _frame(rows, order)

    report, calibration = evaluation_batches(RunConfig.from_dict(ckpt["config"]), vocab, device)
    measure = Measure(original, report, calibration)
    columns = [
        TextColumn("[bold]lazarus-curve"),
        BarColumn(bar_width=20),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[current]}"),
    ]
    with Progress(*columns, console=console, disable=quiet) as bar:
        task = bar.add_task("recoveries", total=recoveries, current="")
        for spec, cells in pending:
            damaged = copy.deepcopy(original)
            result = damage_model(damaged, spec)
            damaged_figures = measure.damaged(damaged)
            for cell in cells:
                if cell.loss == NO_RECOVERY:
                    rows[cell.key] = measure.row(cell, damaged_figures, damaged_figures, 0.0)
                else:
                    progress = _step_progress(bar, task, cell, settings.steps)
                    start = time.perf_counter()
                    recovered, _ = recover_copy(
                        original, damaged, settings.recovery(cell), result.masks, result.removed_neurons, progress
                    )
                    seconds = time.perf_counter() - start
                    rows[cell.key] = measure.row(cell, damaged_figures, measure.model(recovered), seconds)
                    bar.advance(task)
                _write_curve(out / CSV_FILE, rows, order)
        bar.update(task, current="done")
    return _frame(rows, order)


def _step_progress(bar: Progress, task: Any, cell: Cell, steps: int) -> Callable[[int, dict[str, float]], None]:
    label = cell.label
    bar.update(task, current=f"{label} 0/{steps}")
    return lambda step, parts: bar.update(task, current=f"{label} {step}/{steps} loss {parts['total']:.4f}")


def _frame(rows: dict[tuple[Any, ...], dict[str, Any]], order: dict[tuple[Any, ...], int]) -> pd.DataFrame:
    keys = sorted(rows, key=lambda k: order.get(k, len(order)))
    return pd.DataFrame([rows[k] for k in keys], columns=COLUMNS)


def sweep(
    run_dir: Path,
    *,
    noise: str,
    prune: str,
    modes: str,
    anchors: str,
    losses: str,
    structured: bool = False,
    seeds: int = 3,
    steps: int = 200,
    lr: float = 1e-4,
    batch_size: int | None = None,
    seq_len: int | None = None,
    out: Path | None = None,
    device: str = "cpu",
    console: Console | None = None,
    quiet: bool = False,
) -> pd.DataFrame:
    """The command: parse the lists (before the model loads), run what is missing, then the plots
    and the table. ``batch_size`` and ``seq_len`` default to the run's batch size and block size."""
    console = console or Console()
    parsed = CurveSettings.from_options(
        noise, prune, modes, anchors, losses, structured=structured, seeds=seeds, steps=steps, lr=lr
    )
    original, vocab, ckpt = load_model(run_dir, device)
    settings = replace(
        parsed,
        batch_size=batch_size or ckpt["config"]["trainer"]["batch_size"],
        seq_len=seq_len or original.config.block_size,
    )
    out = out or default_folder(run_dir)
    frame = run_curve(run_dir, settings, original, vocab, ckpt, out, device, console, quiet)
    paths = write_plots(frame, settings.modes, out, Path(run_dir).name)
    if not quiet:
        console.print(curve_table(frame, f"Lazarus recovery curve of {run_dir}"))
        console.print(f"Rows ({len(frame)}): {out / CSV_FILE}")
        console.print(f"Settings: {out / SETTINGS_FILE}")
        console.print(f"Plots: {paths[0]}, {paths[1]}")
    return frame
