"""``apoptosis lazarus-curve``: data-free recovery against the amount of damage, in one sweep.

For every damage level and seed the run's model is damaged once; the copy is then recovered once
per anchor x mode x loss variant and measured beside two controls that need no recovery: the
damaged model left alone (``none``) and the damaged model at its best softmax temperature
(``T-scaled``). Every finished row is written to ``curve.csv`` at once (atomically), and the same
command run again on the same folder skips the rows already there, so a killed sweep resumes.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd
import seaborn as sns
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from apoptosis.core.config import RunConfig
from apoptosis.lazarus.damage import DamageSpec, damage_model
from apoptosis.core.errors import ApoptosisError
from apoptosis.core.io import atomic_write_json, atomic_write_text
from apoptosis.core.model import GPT
from apoptosis.training.run_plots import save_figure
from apoptosis.lazarus.recovery import (
    ANCHORS,
    MODES,
    LossWeights,
    RecoverySettings,
    evaluation_batches,
    fit_temperature,
    logits_on,
    quality,
    recover_copy,
    recovery_fraction,
)
from apoptosis.training import load_model

CSV_FILE = "curve.csv"
SETTINGS_FILE = "curve.json"
RECOVERY_PLOT = "recovery.png"
LOSS_PLOT = "val_loss.png"
DEFAULT_FOLDER = "lazarus-curve"

CURVE_LOSSES = ("full", "consistency", "stability", "entropy")
NO_RECOVERY = "none"  # the damaged model left alone (the write-up's "noise only" control)
T_SCALED = "T-scaled"  # the damaged model divided by its fitted temperature
NOT_APPLICABLE = "-"  # mode after noise (no mask) and of the controls; anchor of the controls and of
# the losses without the consistency term (stability, entropy: no teacher)

KEY = ["kind", "amount", "structured", "seed", "mode", "anchor", "loss"]
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

_ORDER = {
    "kind": {"noise": 0, "prune": 1},
    "mode": {NOT_APPLICABLE: 0, "frozen": 1, "regrow": 2},
    "anchor": {NOT_APPLICABLE: 0, "original": 1, "damaged": 2},
    "variant": {NO_RECOVERY: 0, T_SCALED: 1, **{name: 2 + i for i, name in enumerate(CURVE_LOSSES)}},
}


# --- options ----------------------------------------------------------------------------------


def _items(text: str) -> list[str]:
    return [] if not text.strip() else [part.strip() for part in text.split(",")]


def _no_repeats(values: list[Any], option: str) -> None:
    for i, value in enumerate(values):
        if value in values[:i]:
            raise ApoptosisError(f"{option} lists {value} twice")


def parse_levels(text: str, option: str, low: float, high: float | None) -> tuple[float, ...]:
    """A comma-separated list of damage levels, each > ``low`` (and < ``high`` when given), sorted;
    ``""`` is none."""
    allowed = f"> {low:g}" if high is None else f"strictly between {low:g} and {high:g}"
    levels = []
    for item in _items(text):
        try:
            value = float(item)
        except ValueError:
            raise ApoptosisError(
                f"{option} takes comma-separated numbers {allowed} (e.g. {option} 0.3,0.5), got {item!r}"
            ) from None
        if not (math.isfinite(value) and value > low and (high is None or value < high)):
            raise ApoptosisError(f"every {option} level must be {allowed}, got {item}")
        levels.append(value)
    _no_repeats(levels, option)
    return tuple(sorted(levels))


def parse_names(text: str, option: str, allowed: Iterable[str], hint: str = "") -> tuple[str, ...]:
    """A comma-separated list of names out of ``allowed`` (at least one), in the order of ``allowed``
    (so the same choice in another order is the same sweep)."""
    allowed = tuple(allowed)
    names = _items(text)
    if not names:
        raise ApoptosisError(f"{option} needs at least one of {', '.join(allowed)}")
    for name in names:
        if name not in allowed:
            raise ApoptosisError(f"{option} takes a comma-separated list of {', '.join(allowed)}{hint}, got {name!r}")
    _no_repeats(names, option)
    return tuple(name for name in allowed if name in names)


@dataclass(frozen=True)
class CurveSettings:
    """Everything that decides the rows of a sweep; saved in ``curve.json`` and checked on resume."""

    noise: tuple[float, ...] = (0.1, 0.2, 0.3, 0.35)
    prune: tuple[float, ...] = (0.3, 0.5, 0.7, 0.8)
    structured: bool = False
    modes: tuple[str, ...] = MODES
    anchors: tuple[str, ...] = ANCHORS
    losses: tuple[str, ...] = CURVE_LOSSES
    seeds: int = 3
    steps: int = 200
    lr: float = 1e-4
    batch_size: int = 12
    seq_len: int = 64
    sampled_fraction: float = 0.5

    @classmethod
    def from_options(
        cls,
        noise: str,
        prune: str,
        modes: str,
        anchors: str,
        losses: str,
        **values: Any,
    ) -> CurveSettings:
        """Parse the command's comma-separated lists (``--noise ""`` or ``--prune ""`` skips that kind)."""
        return cls(
            noise=parse_levels(noise, "--noise", 0.0, None),
            prune=parse_levels(prune, "--prune", 0.0, 1.0),
            modes=parse_names(modes, "--modes", MODES),
            anchors=parse_names(anchors, "--anchors", ANCHORS),
            losses=parse_names(
                losses, "--losses", CURVE_LOSSES, " (the no-recovery control is always included, as 'none')"
            ),
            **values,
        )

    def validate(self, block_size: int) -> None:
        checks = [
            (bool(self.noise or self.prune), "nothing to sweep: --noise and --prune are both empty"),
            (self.seeds >= 1, f"--seeds must be >= 1, got {self.seeds}"),
            (
                2 <= self.seq_len <= block_size,
                f"--seq-len must be in 2..{block_size} (model.block_size), got {self.seq_len}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ApoptosisError(message)
        RecoverySettings(self.steps, lr=self.lr, batch_size=self.batch_size, seq_len=self.seq_len).validate()

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def recovery(self, cell: Cell) -> RecoverySettings:
        mode = "frozen" if cell.mode == NOT_APPLICABLE else cell.mode  # no mask after noise: modes are the same
        anchor = "original" if cell.anchor == NOT_APPLICABLE else cell.anchor  # no consistency term: never read
        return RecoverySettings(
            self.steps,
            mode,
            cell.loss,
            anchor,
            self.lr,
            self.batch_size,
            self.seq_len,
            self.sampled_fraction,
            seed=cell.seed,
        )


# --- the plan ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    """One row of the CSV: a damage, a seed, and a recovery (or the no-recovery control)."""

    kind: str
    amount: float
    structured: bool
    seed: int
    mode: str
    anchor: str
    loss: str

    @property
    def key(self) -> tuple[Any, ...]:
        return (self.kind, float(self.amount), bool(self.structured), int(self.seed), self.mode, self.anchor, self.loss)

    @property
    def label(self) -> str:
        damage = f"{self.kind} {self.amount:g}" + (" structured" if self.structured else "")
        if self.loss == NO_RECOVERY:
            return f"{damage} s{self.seed} no recovery"
        anchor = "" if self.anchor == NOT_APPLICABLE else f" <- {self.anchor}"
        mode = "" if self.mode == NOT_APPLICABLE else f" {self.mode}"
        return f"{damage} s{self.seed} {self.loss}{anchor}{mode}"


def anchored(loss: str) -> bool:
    """Whether a loss variant reads its teacher: only the consistency term does."""
    return LossWeights().ablation(loss).consistency != 0


def plan(settings: CurveSettings) -> list[tuple[DamageSpec, list[Cell]]]:
    """Per (seed, damage): the damage (its seed drives the noise draw and every recovery's
    generator) and its rows: the no-recovery control, then anchor x mode x loss. What would give
    the same row twice runs once, labelled ``-``: noise leaves no mask, so it gets one mode, and a
    loss without the consistency term has no teacher, so it gets no anchor. Seeds outermost: a
    stopped sweep has whole curves."""
    groups = []
    for seed in range(settings.seeds):
        damages = [DamageSpec("noise", a, False, seed) for a in settings.noise]
        damages += [DamageSpec("prune", a, settings.structured, seed) for a in settings.prune]
        for spec in damages:
            modes = settings.modes if spec.kind == "prune" else (NOT_APPLICABLE,)
            base = (spec.kind, spec.amount, spec.structured, seed)
            cells = [Cell(*base, NOT_APPLICABLE, NOT_APPLICABLE, NO_RECOVERY)]
            for anchor in (*settings.anchors, NOT_APPLICABLE):
                losses = [loss for loss in settings.losses if (anchor != NOT_APPLICABLE) == anchored(loss)]
                cells += [Cell(*base, mode, anchor, loss) for mode in modes for loss in losses]
            groups.append((spec, cells))
    return groups


# --- the folder -------------------------------------------------------------------------------


def _record(settings: CurveSettings, run_dir: Path, out: Path, step: int) -> dict[str, Any]:
    """What ``curve.json`` holds: the run (relative to the folder, and its step) and the settings."""
    return {
        "source_run": os.path.relpath(Path(run_dir).resolve(), Path(out).resolve()),
        "run_step": step,
        "settings": settings.to_dict(),
        "loss_weights": asdict(LossWeights()),
    }


def _differences(saved: dict[str, Any], record: dict[str, Any]) -> list[str]:
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


def open_folder(out: Path, record: dict[str, Any]) -> pd.DataFrame:
    """The rows already finished in ``out`` (none for a new folder). A folder from another sweep,
    or one that is not a sweep folder, is refused."""
    meta = out / SETTINGS_FILE
    if meta.is_file():
        try:
            saved = json.loads(meta.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ApoptosisError(f"{meta} is not valid JSON ({e}): remove {out} or choose another --out") from None
        diffs = _differences(saved, record)
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
    existing = open_folder(out, _record(settings, run_dir, out, ckpt["step"]))
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
