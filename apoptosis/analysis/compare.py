"""``apoptosis compare``: every strategy under one config and the same seeds, side by side.

Each (strategy, seed) is an ordinary run in ``runs/<name>/<strategy>-s<seed>/``; runs go to
parallel worker processes when asked. The same command again continues a comparison that was
stopped: finished runs are read back, killed ones resume from their checkpoint. The table sets
each strategy against ``none`` with a Welch 95% interval and, since a seed fixes the initial
weights and the batch order of every strategy alike, a paired interval over the seeds; a
difference is only called one when the paired interval excludes 0.
"""

from __future__ import annotations

import copy
import json
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from apoptosis.analysis.intervals import paired_interval, welch_interval
from apoptosis.analysis.sweeps import plot_sweeps
from apoptosis.core.config import RunConfig, StrategyConfig, no_follower, split_variant
from apoptosis.core.errors import ApoptosisError
from apoptosis.core.io import atomic_write_text
from apoptosis.training.run_folder import claimed

BASELINE = "none"


@dataclass(frozen=True)
class PlannedRun:
    strategy: str
    seed: int
    run_dir: Path
    config: RunConfig


def plan_runs(
    base: RunConfig,
    strategies: list[str],
    seeds: list[int],
    strategy_sets: dict[str, Any],
    out_dir: Path,
    then_sets: dict[str, Any] | None = None,
) -> list[PlannedRun]:
    """One config per (strategy, seed); a strategy ``A+B`` is A with follower B (a follower alone
    follows ``none``). ``strategy_sets`` (from ``--set strategy.X=...``) go to every strategy that
    has parameter X, ``then_sets`` to every follower that has it; a setting that nothing compared
    has is an error. A label's own settings (``A@X=v``, :func:`split_variant`) go to A, or to its
    follower when only that has X, and win over the shared ones."""
    from apoptosis.core.config import split_variant
    from apoptosis.core.strategy import build_strategy, resolve_composition

    then_sets = then_sets or {}
    variants = {label: split_variant(label) for label in strategies}
    pairs = {label: resolve_composition(base_label) for label, (base_label, _) in variants.items()}
    known = {name: _param_names(name) for name, _ in pairs.values()}
    known_then = {follower: _param_names(follower, follower=True) for _, follower in pairs.values() if follower}
    for sets, names, section in ((strategy_sets, known, "strategy"), (then_sets, known_then, "then")):
        unused = [key for key in sets if not any(key in params for params in names.values())]
        if unused:
            whom = "strategy" if section == "strategy" else "follower (A+B)"
            raise ApoptosisError(f"no compared {whom} has parameter {unused[0]!r} (--set {section}.{unused[0]})")
    runs = []
    for label, (name, follower) in pairs.items():
        params = {k: v for k, v in strategy_sets.items() if k in known[name]}
        then_params = {k: v for k, v in then_sets.items() if follower and k in known_then[follower]}
        for key, value in variants[label][1].items():
            if key in known[name]:
                params[key] = value
            elif follower and key in known_then[follower]:
                then_params[key] = value
            else:
                raise ApoptosisError(f"{label!r}: {variants[label][0]} has no parameter {key!r}")
        build_strategy(name, params)  # validate before any run starts
        then = no_follower()
        if follower:
            then = StrategyConfig(follower, then_params)
            build_strategy(follower, then.params, follower=True)
        for seed in seeds:
            config = copy.deepcopy(base)
            config.strategy = StrategyConfig(name=name, params=params)
            config.then = copy.deepcopy(then)
            config.trainer.seed = seed
            runs.append(PlannedRun(label, seed, out_dir / f"{label}-s{seed}", config))
    return runs


def check_counts(seeds: int, workers: int) -> None:
    if seeds < 1:
        raise ApoptosisError(f"--seeds must be >= 1, got {seeds}")
    if workers < 1:
        raise ApoptosisError(f"--workers must be >= 1, got {workers}")


def check_same_plan(runs: list[PlannedRun]) -> None:
    """A folder that already holds one of these runs must hold the same run (then it is continued
    or read back); a different one is an error naming the first setting that differs."""
    for run in runs:
        saved_path = run.run_dir / "config.toml"
        if not saved_path.exists():
            continue
        saved = flat_settings(RunConfig.from_toml_file(saved_path))
        planned = flat_settings(run.config)
        for key in sorted(set(saved) | set(planned)):
            if saved.get(key) != planned.get(key):
                raise ApoptosisError(
                    f"run folder {run.run_dir} holds another run ({key} = {saved.get(key)!r}, this comparison "
                    f"asks for {planned.get(key)!r}): choose another --name"
                )


def flat_settings(config: RunConfig) -> dict[str, Any]:
    """Flat ``section.key`` settings with the strategies' defaults filled in, without what a run
    sets itself (the vocabulary size)."""
    from apoptosis.core.strategy import build_strategy

    d = copy.deepcopy(config).to_dict()
    d["model"].pop("vocab_size", None)
    for section, follower in (("strategy", False), ("then", True)):
        if section in d and d[section].get("name"):
            name = d[section].pop("name")
            d[section] = {"name": name, **build_strategy(name, d[section], follower=follower).params.to_dict()}
    return {f"{section}.{key}": value for section, values in d.items() for key, value in values.items()}


def _param_names(name: str, follower: bool = False) -> set[str]:
    from apoptosis.core.strategy import build_strategy

    return {row["name"] for row in build_strategy(name, follower=follower).Params.describe()}


def _run_one(run: PlannedRun, threads: int | None) -> dict[str, Any]:
    """A finished run is read back; a killed one resumes from its checkpoint; one killed before
    its first checkpoint starts again (the trainer replaces its folder)."""
    import torch

    from apoptosis.training import CHECKPOINT, Trainer

    summary_path = run.run_dir / "summary.json"
    if summary_path.exists():
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    else:
        if threads is not None:
            torch.set_num_threads(threads)
        resume = (run.run_dir / CHECKPOINT).exists()
        summary = Trainer(run.config, run.run_dir, resume=resume, show_progress=False, label=run.strategy).fit()
    return {**summary, "strategy": run.strategy, "seed": run.seed, "run": run.run_dir.name}


def run_all(runs: list[PlannedRun], workers: int, console: Console) -> pd.DataFrame:
    """Run everything (``workers`` processes, each with its share of the CPU threads)."""
    rows: list[dict[str, Any]] = []
    columns = [TextColumn("[bold]compare"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("runs", total=len(runs))
        if workers <= 1:
            for run in runs:
                rows.append(_run_one(run, None))
                progress.console.log(f"{run.run_dir.name}: val loss {rows[-1]['final_val_loss']:.4f}")
                progress.advance(task)
        else:
            threads = max(1, (os.cpu_count() or 1) // workers)
            with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
                futures = {pool.submit(_run_one, run, threads): run for run in runs}
                for future in as_completed(futures):
                    rows.append(future.result())
                    progress.console.log(f"{futures[future].run_dir.name}: val loss {rows[-1]['final_val_loss']:.4f}")
                    progress.advance(task)
    return pd.DataFrame(rows).sort_values(["strategy", "seed"]).reset_index(drop=True)


def strategy_stats(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per strategy: seeds, mean and sd of the final validation loss, the mean difference
    to ``none`` with its paired 95% interval over common seeds and its Welch interval, and the
    verdict (better / worse when the paired interval excludes 0, ≈ otherwise)."""
    baseline = frame[frame.strategy == BASELINE].set_index("seed")["final_val_loss"]
    rows = []
    for strategy, group in frame.groupby("strategy", sort=False):
        val = group.set_index("seed")["final_val_loss"]
        row = {"strategy": strategy, "seeds": len(val), "mean": val.mean(), "sd": val.std(ddof=1)}
        if strategy != BASELINE and len(baseline):
            row["diff"], row["welch_low"], row["welch_high"] = welch_interval(val.to_numpy(), baseline.to_numpy())
            _, row["paired_low"], row["paired_high"] = paired_interval(val, baseline)
            low, high = row["paired_low"], row["paired_high"]
            row["verdict"] = "" if np.isnan(low) else "better" if high < 0 else "worse" if low > 0 else "≈"
        rows.append(row)
    columns = ["strategy", "seeds", "mean", "sd", "diff", "paired_low", "paired_high", "welch_low", "welch_high"]
    return pd.DataFrame(rows, columns=[*columns, "verdict"])


def comparison_tables(frame: pd.DataFrame, title: str) -> list[Table]:
    """Two tables within 80 columns: final validation loss against the baseline, then the
    mechanics (variance of the training loss, events, disruption, ages, speed)."""
    followed = any("+" in split_variant(label)[0] for label in frame["strategy"])  # a follower ran after events
    stats_frame = strategy_stats(frame)
    losses = Table(
        title=f"{title}: final validation loss\n(Δ: mean difference to {BASELINE}, with its 95% interval paired "
        "by seed; ≈: the interval contains 0; Welch intervals: compare_stats.csv)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    for i, header in enumerate(["strategy", "val loss ± sd", "Δ", "paired 95% CI", ""]):
        losses.add_column(header, justify="left" if i in (0, 4) else "right", no_wrap=True)
    colours = {"better": "[green]better", "worse": "[red]worse"}
    for row in stats_frame.itertuples():
        spread = f" ± {row.sd:.4f}" if row.seeds > 1 else ""
        delta = "-" if pd.isna(row.diff) else f"{row.diff:+.4f}"
        paired = "-" if pd.isna(row.paired_low) else _interval(row.paired_low, row.paired_high)
        verdict = "" if pd.isna(row.verdict) else colours.get(row.verdict, row.verdict)
        losses.add_row(str(row.strategy), f"{row.mean:.4f}{spread}", delta, paired, verdict)
    mechanics = Table(
        title=f"{title}: mechanics (means over seeds)\n(var: train-loss variance around its trend over the "
        "last 20% of steps, x 1e4; died: neurons replaced; disr: probe-loss change per event"
        + ("; surg: the same before the follower ran" if followed else "")
        + "; ages: age diversity)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    surgery = ["surg"] if followed else []
    for i, header in enumerate(["strategy", "var", "events", "died", "disr", *surgery, "|disr|", "ages", "tok/s"]):
        mechanics.add_column(header, justify="left" if i == 0 else "right", no_wrap=True)
    for strategy, group in frame.groupby("strategy", sort=False):
        disruption = group["mean_event_disruption"].dropna()
        mechanics.add_row(
            str(strategy),
            _mean_or_dash(group, "train_loss_detrended_variance", ".2f", scale=1e4),
            f"{group['events'].mean():.0f}",
            f"{group['neurons_replaced'].mean():.0f}",
            f"{disruption.mean():+.4f}" if len(disruption) else "-",
            *([_mean_or_dash(group, "mean_surgery_disruption", "+.4f")] if followed else []),
            f"{group['mean_abs_event_disruption'].dropna().mean():.4f}" if len(disruption) else "-",
            f"{group['age_diversity'].mean():.3f}",
            f"{group['tokens_per_s'].mean():,.0f}",
        )
    return [losses, mechanics]


def _interval(low: float, high: float) -> str:
    return "-" if np.isnan(low) else f"[{low:+.4f}, {high:+.4f}]"


def _mean_or_dash(group: pd.DataFrame, column: str, fmt: str, scale: float = 1.0) -> str:
    values = group[column].dropna() if column in group else pd.Series(dtype=float)
    return format(values.mean() * scale, fmt) if len(values) else "-"


def plot_comparison(frame: pd.DataFrame, out_dir: Path) -> None:
    """val_loss.png (mean curve per strategy with its spread over seeds, dotted lines at events,
    and beside it each strategy's difference to ``none``'s mean curve) and ages.png (ages of the
    living neurons at the end, per strategy)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    from apoptosis.training import read_events, read_metrics
    from apoptosis.training.run_plots import save_figure

    curves, ages, event_steps = [], [], set()
    for row in frame.itertuples():
        run_dir = out_dir / row.run
        metrics = read_metrics(run_dir).dropna(subset=["val_loss"])
        curves.append(metrics.assign(strategy=row.strategy, seed=row.seed))
        lineage = pd.read_csv(run_dir / "lineage.csv")
        living = lineage[lineage["death_step"].isna()]
        ages.append(pd.DataFrame({"strategy": row.strategy, "age": row.steps - living["birth_step"]}))
        event_steps |= {e["step"] for e in read_events(run_dir)}
    curves = pd.concat(curves)
    baseline = curves[curves["strategy"] == BASELINE].groupby("step")["val_loss"].mean()
    panels = [("val_loss", "validation loss")]
    if len(baseline):  # differences of a few thousandths vanish on the whole curve: show them apart
        curves["to_baseline"] = curves["val_loss"] - curves["step"].map(baseline)
        panels.append(("to_baseline", f"minus {BASELINE}'s mean"))
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels) + 3, 4.5), squeeze=False)
    for ax, (column, label) in zip(axes[0], panels, strict=True):
        shown = curves if column == "val_loss" else curves[curves["step"] >= 0.2 * curves["step"].max()]
        sns.lineplot(data=shown, x="step", y=column, hue="strategy", errorbar="sd", ax=ax, legend=ax is axes[0, -1])
        for step in sorted(event_steps):
            ax.axvline(step, color="grey", linestyle=":", linewidth=1)
        ax.set_ylabel(label)
    if len(panels) > 1:
        axes[0, 1].axhline(0, color="black", linewidth=1)
        axes[0, 1].set_xlim(left=0.2 * curves["step"].max())
        axes[0, 1].set_title("from 20% of the steps on (earlier ones differ by more)", fontsize=9)
    sns.move_legend(axes[0, -1], "upper left", bbox_to_anchor=(1.02, 1), frameon=False)
    fig.suptitle("validation loss per strategy (mean ± sd over seeds); dotted: event steps")
    save_figure(fig, out_dir / "val_loss.png")
    fig, ax = plt.subplots(figsize=(8, 4.5))
    sns.boxplot(data=pd.concat(ages), x="strategy", y="age", ax=ax)
    ax.set_title("ages of the living neurons at the end of each run")
    save_figure(fig, out_dir / "ages.png")


def compare(
    base: RunConfig,
    strategies: list[str],
    seeds: int,
    strategy_sets: dict[str, Any],
    out_dir: Path,
    workers: int,
    console: Console,
    then_sets: dict[str, Any] | None = None,
) -> pd.DataFrame:
    check_counts(seeds, workers)
    runs = plan_runs(base, strategies, list(range(1, seeds + 1)), strategy_sets, out_dir, then_sets)
    with claimed(out_dir):
        check_same_plan(runs)
        frame = run_all(runs, workers, console)
        order = {name: i for i, name in enumerate(strategies)}
        frame = frame.sort_values(["strategy", "seed"], key=lambda c: c.map(order) if c.name == "strategy" else c)
        atomic_write_text(out_dir / "compare.csv", frame.to_csv(index=False))
        atomic_write_text(out_dir / "compare_stats.csv", strategy_stats(frame).to_csv(index=False))
        plot_comparison(frame, out_dir)
        plot_sweeps(frame, out_dir / "sweep.png", BASELINE)
        return frame
