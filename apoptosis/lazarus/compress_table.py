"""``apoptosis compress-table``: Lazarus against the pruning field, in one table of bits per character.

The grid is methods x sparsities x patterns x recoveries x seeds on one trained run. Combinations
a method does not define are left out (``fitness`` prunes neurons only, ``sparsegpt`` single
weights only), and 2:4 removes exactly half, so it runs at sparsity 0.5 only. For each method,
pattern, sparsity and seed the model is pruned once (the seed draws the calibration windows),
its inference speed is timed once against the dense model, and then it is recovered each way.
Every finished row goes to ``cells.csv`` at once (atomically); the same command on the same
folder skips the rows already there, so a killed grid resumes. ``--workers`` runs pruned models
in parallel processes (each with its share of the CPU threads; the speeds then share the machine).
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from apoptosis.core.errors import ApoptosisError
from apoptosis.core.io import atomic_write_json, atomic_write_text
from apoptosis.lazarus.calibration import CALIBRATION_SEQUENCES
from apoptosis.lazarus.compress import (
    RECOVERIES,
    CompressSpec,
    Source,
    measure,
    prune_copy,
    recover_pruned,
)
from apoptosis.lazarus.curve_report import record_differences
from apoptosis.lazarus.pruning import METHODS, PATTERNS, check_choice
from apoptosis.lazarus.recovery import RecoverySettings
from apoptosis.lazarus.speed import NO_SPEEDUP_NOTE, inference_speed
from apoptosis.training import load_model

KEY = ["method", "pattern", "prune", "recover", "seed"]
MEASURES = [
    "dense_bpc", "pruned_bpc", "temperature_scaled_bpc", "bpc", "dense_parameters", "parameters",
    "nonzero_parameters", "kept", "dense_bytes", "model_bytes", "sparse_bytes", "dense_tokens_per_s",
    "tokens_per_s", "speedup", "seconds",
]  # fmt: skip
COLUMNS = KEY + MEASURES
CELLS_FILE, TABLE_FILE, SETTINGS_FILE = "cells.csv", "table.csv", "settings.json"
DEFAULT_FOLDER = "compress-table"

Group = tuple[str, str, float, int]  # method, pattern, prune, seed: one pruned model


def _names(text: str, allowed: tuple[str, ...], option: str) -> tuple[str, ...]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [n for n in names if n not in allowed]
    if not names or unknown or len(set(names)) != len(names):
        raise ApoptosisError(f"{option} takes distinct names of {', '.join(allowed)}, comma-separated; got {text!r}")
    return tuple(n for n in allowed if n in names)


def _levels(text: str) -> tuple[float, ...]:
    try:
        levels = [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ApoptosisError(f"--sparsities takes numbers between 0 and 1, comma-separated; got {text!r}") from None
    if not levels or len(set(levels)) != len(levels) or not all(0 < s < 1 for s in levels):
        raise ApoptosisError(f"--sparsities takes distinct numbers strictly between 0 and 1; got {text!r}")
    return tuple(sorted(levels))


@dataclass(frozen=True)
class TableSettings:
    """The grid's lists and the settings every cell shares (saved in ``settings.json``)."""

    methods: tuple[str, ...] = METHODS
    sparsities: tuple[float, ...] = (0.3, 0.5, 0.7)
    patterns: tuple[str, ...] = PATTERNS
    recoveries: tuple[str, ...] = RECOVERIES
    seeds: int = 3
    steps: int = 200
    calibration: int = CALIBRATION_SEQUENCES
    lr: float = 1e-4
    batch_size: int = 12
    seq_len: int | None = None

    @classmethod
    def from_options(cls, methods: str, sparsities: str, patterns: str, recoveries: str, **rest: Any) -> TableSettings:
        settings = cls(
            _names(methods, METHODS, "--methods"),
            _levels(sparsities),
            _names(patterns, PATTERNS, "--patterns"),
            _names(recoveries, RECOVERIES, "--recoveries"),
            **rest,
        )
        if settings.seeds < 1:
            raise ApoptosisError(f"--seeds must be >= 1, got {settings.seeds}")
        if settings.calibration < 1:
            raise ApoptosisError(f"--calibration must be >= 1 sequence, got {settings.calibration}")
        settings.recovery(0).validate()
        if not settings.groups():
            raise ApoptosisError("no method, pattern and sparsity of these lists go together (2:4 needs 0.5)")
        return settings

    def groups(self) -> list[Group]:
        """Every pruned model of the grid, in the table's order."""
        out = []
        for method in self.methods:
            for pattern in self.patterns:
                for prune in self.sparsities:
                    try:
                        check_choice(method, pattern, prune)
                    except ApoptosisError:
                        continue
                    out += [(method, pattern, prune, seed) for seed in range(self.seeds)]
        return out

    def recovery(self, seed: int) -> RecoverySettings:
        steps, lr, batch_size, seq_len = self.steps, self.lr, self.batch_size, self.seq_len
        return RecoverySettings(steps, "frozen", "full", "original", lr, batch_size, seq_len, seed=seed)

    def spec(self, group: Group, recover: str) -> CompressSpec:
        method, pattern, prune, seed = group
        return CompressSpec(method, pattern, prune, recover, self.calibration, seed)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))


def run_group(
    run_dir: str, settings: TableSettings, group: Group, recoveries: list[str], device: str, threads: int | None = None
) -> list[dict[str, Any]]:
    """One pruned model, timed once, recovered each of ``recoveries`` ways: its rows."""
    if threads is not None:
        torch.set_num_threads(threads)
    source = Source.load(run_dir, device)
    pruned = prune_copy(source, settings.spec(group, recoveries[0]), settings.batch_size)
    speed = inference_speed(source.model, pruned.model, settings.batch_size, group[3])
    rows = []
    for recover in recoveries:
        spec = settings.spec(group, recover)
        recovered, _ = recover_pruned(source, pruned, spec, settings.recovery(spec.seed))
        rows.append(measure(source, spec, pruned, recovered, settings.batch_size, pruned.seconds, speed)[1])
    return rows


# --- the folder ---------------------------------------------------------------------------------


def open_folder(out: Path, record: dict[str, Any]) -> pd.DataFrame:
    """The rows already in ``out`` (none for a new folder); another grid's folder is refused."""
    meta = out / SETTINGS_FILE
    if meta.is_file():
        diffs = record_differences(json.loads(meta.read_text(encoding="utf-8")), record)
        if diffs:
            raise ApoptosisError(f"{out} holds a table with other settings ({'; '.join(diffs)}): choose another --out")
        cells = out / CELLS_FILE
        return pd.read_csv(cells)[COLUMNS] if cells.is_file() else pd.DataFrame(columns=COLUMNS)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ApoptosisError(f"{out} exists and is not a compress-table folder: remove it or choose another --out")
    atomic_write_json(meta, record)
    return pd.DataFrame(columns=COLUMNS)


def _key(row: dict[str, Any]) -> tuple:
    return (row["method"], row["pattern"], float(row["prune"]), row["recover"], int(row["seed"]))


def run_table(
    run_dir: Path,
    settings: TableSettings,
    out: Path,
    workers: int = 1,
    device: str = "cpu",
    console: Console | None = None,
    quiet: bool = False,
) -> pd.DataFrame:
    """Run every cell not yet in ``out/cells.csv``, writing the CSV after each pruned model; all rows."""
    if workers < 1:
        raise ApoptosisError(f"--workers must be >= 1, got {workers}")
    console = console or Console()
    _, _, ckpt = load_model(run_dir, device)
    record = {"source_run": os.path.relpath(Path(run_dir).resolve(), out.resolve()), "run_step": ckpt["step"],
              "settings": settings.to_dict()}  # fmt: skip
    rows = {_key(r): r for r in open_folder(out, record).to_dict("records")}
    pending = []
    for group in settings.groups():
        missing = [r for r in settings.recoveries if (*group[:3], r, group[3]) not in rows]
        if missing:
            pending.append((group, missing))
    columns = [TextColumn("[bold]compress-table"), BarColumn(bar_width=20), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn()]  # fmt: skip
    with Progress(*columns, console=console, disable=quiet or not pending) as bar:
        task = bar.add_task("cells", total=sum(len(m) for _, m in pending))

        def done(new: list[dict[str, Any]]) -> None:
            rows.update({_key(r): r for r in new})
            frame = pd.DataFrame(list(rows.values()), columns=COLUMNS)
            atomic_write_text(out / CELLS_FILE, frame.to_csv(index=False))
            bar.advance(task, len(new))

        if workers == 1:
            for group, missing in pending:
                done(run_group(str(run_dir), settings, group, missing, device))
        elif pending:
            threads = max(1, (os.cpu_count() or 1) // workers)
            with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
                futures = [pool.submit(run_group, str(run_dir), settings, g, m, device, threads) for g, m in pending]
                for future in as_completed(futures):
                    done(future.result())
    frame = pd.DataFrame(list(rows.values()), columns=COLUMNS)
    order = {g[:3]: i for i, g in enumerate(settings.groups())}
    cells = zip(frame["method"], frame["pattern"], frame["prune"], strict=True)
    frame["_order"] = [order.get((m, p, float(s)), len(order)) for m, p, s in cells]
    frame["_recover"] = frame["recover"].map(RECOVERIES.index)
    return frame.sort_values(["_order", "_recover", "seed"]).drop(columns=["_order", "_recover"]).reset_index(drop=True)


# --- the table ----------------------------------------------------------------------------------


def summarize(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean and sd over seeds per method x pattern x sparsity x recovery (in the grid's order),
    with the dense model first."""
    measures = ["bpc", "pruned_bpc", "kept", "model_bytes", "sparse_bytes", "tokens_per_s", "speedup"]
    grouped = frame.groupby(["method", "pattern", "prune", "recover"], sort=False)
    stats = grouped[measures].agg(["mean", "std"])
    stats.columns = [f"{m}_{s}" for m, s in stats.columns]
    stats = stats.reset_index().assign(seeds=grouped.size().values)
    dense = {
        "method": "dense", "pattern": "-", "prune": 0.0, "recover": "-", "seeds": frame["seed"].nunique(),
        "bpc_mean": frame["dense_bpc"].mean(), "bpc_std": frame["dense_bpc"].std(), "kept_mean": 1.0,
        "model_bytes_mean": frame["dense_bytes"].mean(), "tokens_per_s_mean": frame["dense_tokens_per_s"].median(),
        "speedup_mean": 1.0,
    }  # fmt: skip
    return pd.concat([pd.DataFrame([dense]), stats], ignore_index=True)


def _pm(mean: float, sd: float, spec: str) -> str:
    return format(mean, spec) if pd.isna(sd) else f"{format(mean, spec)} ± {format(sd, spec)}"


def table(summary: pd.DataFrame, title: str) -> Table:
    """One line per method x pattern x share x recovery (the dense model first), within 80 columns."""
    caption = (
        "bpc: validation bits per character, mean ± sd over seeds (recovery none: the one-shot result); kept: "
        "nonzero / dense parameters; kB: the saved state dict; speed: tokens/s of inference against the dense "
        f"model, timed side by side. {NO_SPEEDUP_NOTE}"
    )
    out = Table(title=title, title_justify="left", caption=caption, caption_justify="left", box=box.SIMPLE_HEAD,
                pad_edge=False)  # fmt: skip
    for name in ("method", "pattern", "share", "recovery", "bpc", "kept", "kB", "speed"):
        out.add_column(name, justify="left" if name in ("method", "pattern", "recovery") else "right", no_wrap=True)
    rows = list(summary.itertuples())
    models = [(r.method, r.pattern, r.prune) for r in rows]
    for row, model, after in zip(rows, models, [*models[1:], None], strict=True):
        dense = row.method == "dense"
        out.add_row(
            row.method, row.pattern, "-" if dense else f"{row.prune:g}", row.recover,
            f"{row.bpc_mean:.4f}" if dense else _pm(row.bpc_mean, row.bpc_std, ".4f"),
            f"{100 * row.kept_mean:.1f}%", f"{row.model_bytes_mean / 1000:,.0f}", f"{row.speedup_mean:.2f}x",
            end_section=after != model,
        )  # fmt: skip
    return out


def compress_table(
    run_dir: Path,
    settings: TableSettings,
    out: Path | None = None,
    workers: int = 1,
    device: str = "cpu",
    console: Console | None = None,
    quiet: bool = False,
) -> pd.DataFrame:
    """The command: run what is missing, then write ``table.csv`` and print the table."""
    console = console or Console()
    out = out or Path(run_dir) / DEFAULT_FOLDER
    frame = run_table(run_dir, settings, out, workers, device, console, quiet)
    summary = summarize(frame)
    atomic_write_text(out / TABLE_FILE, summary.to_csv(index=False))
    if not quiet:
        title = f"Compression of {run_dir}: {settings.steps} recovery steps, {settings.seeds} seed(s)"
        console.print(table(summary, title))
        console.print(f"Cells ({len(frame)}): {out / CELLS_FILE}; table: {out / TABLE_FILE}")
    return summary
