"""``apoptosis continual``: one model trained through phases of different corpora, every method on
the same seeds, and what each does to forgetting, plasticity and reconsolidation.

Each (method, seed) is an ordinary run folder (``runs/<name>/<method>-s<seed>/``) whose config
has a ``[continual]`` table. Plasticity needs a yardstick: for every corpus and seed a fresh
model (strategy ``none``, same vocabulary and schedule) is trained for ``plasticity_steps`` steps
on that corpus alone (``runs/<name>/fresh/<corpus>-s<seed>/``). The measures themselves are
``continual_measures.continual_measures``; they are added to each run's ``summary.json``.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console
from rich.table import Table
from scipy import stats

from apoptosis.analysis.compare import PlannedRun, check_counts, check_same_plan, plan_runs, run_all
from apoptosis.continual.measures import continual_measures
from apoptosis.core.config import RunConfig, StrategyConfig, no_follower
from apoptosis.core.corpora import BUILTIN_CORPORA, PhaseSpec, distinct_corpora, parse_phases
from apoptosis.core.io import atomic_write_json, atomic_write_text
from apoptosis.training.run_folder import claimed

FRESH = "fresh"


def spec_text(spec: PhaseSpec) -> str:
    """How a phase is saved in a config: a built-in name, or ``name=/absolute/path``."""
    return spec.name if spec.name in BUILTIN_CORPORA else f"{spec.name}={Path(spec.source).resolve()}"


def default_plasticity_steps(steps_per_phase: int) -> int:
    """How far into a phase plasticity is measured when not told: early enough to show how fast
    the phase's corpus is learned (a tenth of the phase), at most 100 steps."""
    return max(1, min(100, steps_per_phase // 10))


def continual_config(base: RunConfig, phases: str, steps_per_phase: int, plasticity_steps: int) -> RunConfig:
    """``base`` trained through ``phases`` (e.g. ``shakespeare,python,shakespeare``), each
    ``steps_per_phase`` steps long."""
    specs = parse_phases(phases)
    config = copy.deepcopy(base)
    config.continual.phases = [spec_text(spec) for spec in specs]
    config.continual.steps_per_phase = steps_per_phase
    config.continual.plasticity_steps = plasticity_steps
    config.trainer.steps = len(specs) * steps_per_phase
    config.validate()
    return config


def fresh_config(config: RunConfig, corpus: str, seed: int) -> RunConfig:
    """A freshly initialised baseline trained ``plasticity_steps`` steps on ``corpus`` alone, with
    the run's vocabulary (every corpus is still listed, after this one, so the vocabulary and the
    evaluation columns are the same) and the same learning-rate schedule."""
    specs = distinct_corpora(phase_specs(config))
    first = [s for s in specs if s.name == corpus]
    fresh = copy.deepcopy(config)
    fresh.continual.phases = [spec_text(s) for s in first + [s for s in specs if s.name != corpus]]
    fresh.trainer.steps = config.continual.plasticity_steps
    fresh.trainer.seed = seed
    fresh.strategy, fresh.then = StrategyConfig(name="none"), no_follower()
    return fresh


def plan_continual(
    config: RunConfig,
    labels: list[str],
    seeds: list[int],
    strategy_sets: dict[str, Any],
    then_sets: dict[str, Any],
    out_dir: Path,
) -> tuple[list[PlannedRun], list[PlannedRun]]:
    """The method runs and the fresh baselines (one per corpus and seed)."""
    runs = plan_runs(config, labels, seeds, strategy_sets, out_dir, then_sets)
    corpora = corpora_of(config)
    fresh = [
        PlannedRun(f"{FRESH}-{corpus}", seed, out_dir / FRESH / f"{corpus}-s{seed}", fresh_config(config, corpus, seed))
        for corpus in corpora
        for seed in seeds
    ]
    return runs, fresh


def measure_run(run_dir: Path, config: RunConfig, fresh: dict[str, float]) -> dict[str, Any]:
    """The continual measures of one finished run, also written into its ``summary.json``."""
    from apoptosis.training import read_metrics

    c = config.continual
    phases = [s.name for s in phase_specs(config)]
    evals = read_metrics(run_dir).dropna(subset=[f"val_{phases[0]}"])
    measures = continual_measures(evals, phases, c.steps_per_phase, c.plasticity_steps, fresh)
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    summary["continual"] = measures
    atomic_write_json(summary_path, summary)
    return measures


def run_continual(
    config: RunConfig,
    labels: list[str],
    seeds: int,
    strategy_sets: dict[str, Any],
    then_sets: dict[str, Any],
    out_dir: Path,
    workers: int,
    console: Console,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run every method and baseline; return (one row per run, one row per run and phase) and
    write them as ``continual.csv`` and ``phases.csv`` with the plots."""
    check_counts(seeds, workers)
    runs, fresh = plan_continual(config, labels, list(range(1, seeds + 1)), strategy_sets, then_sets, out_dir)
    with claimed(out_dir):
        check_same_plan(runs + fresh)
        frame = run_all(runs + fresh, workers, console)
        baselines = {
            seed: {
                name.removeprefix(f"{FRESH}-"): float(row[f"final_val_{name.removeprefix(f'{FRESH}-')}"])
                for name, row in group.set_index("strategy").iterrows()
            }
            for seed, group in frame[frame["strategy"].str.startswith(f"{FRESH}-")].groupby("seed")
        }
        rows, phase_rows = [], []
        for run in runs:
            measures = measure_run(run.run_dir, run.config, baselines[run.seed])
            flat = {k: v for k, v in measures.items() if not isinstance(v, list | dict)}
            rows.append({"method": run.strategy, "seed": run.seed, "run": run.run_dir.name, **flat})
            phase_rows += [{"method": run.strategy, "seed": run.seed, **p} for p in measures["phases"]]
        order = {label: i for i, label in enumerate(labels)}
        table = pd.DataFrame(rows).sort_values(
            ["method", "seed"], key=lambda c: c.map(order) if c.name == "method" else c
        )
        per_phase = pd.DataFrame(phase_rows)
        atomic_write_text(out_dir / "continual.csv", table.to_csv(index=False))
        atomic_write_text(out_dir / "phases.csv", per_phase.to_csv(index=False))
        plot_continual(runs, per_phase, out_dir)
        return table, per_phase


def _mean_interval(values: pd.Series, fmt: str) -> str:
    """The mean over seeds, and under it ``± half-width of the 95% t-interval`` (just the mean for
    one seed): two short lines keep a table of several measures within 80 columns."""
    values = values.dropna().astype(float)
    if values.empty:
        return "-"
    mean = values.mean()
    if len(values) < 2:
        return format(mean, fmt)
    if values.std() == 0:
        return f"{format(mean, fmt)}\n± {format(0.0, fmt.lstrip('+'))}"
    low, _ = stats.t.interval(0.95, len(values) - 1, loc=mean, scale=stats.sem(values))
    return f"{format(mean, fmt)}\n± {format(mean - low, fmt.lstrip('+'))}"


def _add_columns(table: Table, headers: list[str], left: tuple[int, ...]) -> None:
    """Headers of several words wrap between them (a number and its sign fit in 7 columns)."""
    for i, header in enumerate(headers):
        longest = max(len(w) for w in header.split())
        table.add_column(
            header, justify="left" if i in left else "right", max_width=max(longest, 7) if " " in header else None
        )


def _whole_words(table: Table) -> Table:
    """No word is ever cut: each column is at least as wide as the longest word in it (a method
    ``a+b`` is written ``a + b``, so it can wrap after the ``+``)."""
    for column in table.columns:
        words = [w for text in (str(column.header), *map(str, column._cells)) for w in text.split()]
        column.min_width = max(map(len, words), default=1)
    return table


def _method_label(method: str) -> str:
    return method.replace("+", " + ")


def continual_tables(table: pd.DataFrame, corpora: list[str], title: str) -> list[Table]:
    """Per method, mean ± 95% interval over seeds: the continual measures, then the final
    validation loss on every corpus (two tables, so each fits a terminal)."""
    measures = Table(
        title=f"{title}: measures (mean ± 95% t-interval over seeds)",
        title_justify="left",
        pad_edge=False,
        caption="forgetting > 0: worse on the old corpus after the next phase\n"
        "plasticity < 1: learns a phase's corpus faster than a fresh model;\n"
        "slope: plasticity's change per phase\n"
        "steps back (reconsolidation): steps until a returning corpus is back at\n"
        "its earlier loss (n not back: seeds where it never was)",
        caption_justify="left",
    )
    finals = Table(title=f"{title}: final validation loss (mean ± 95% t-interval over seeds)", title_justify="left")
    _add_columns(measures, ["method", "seeds", "forgetting", "plasticity", "slope", "steps back"], (0,))
    _add_columns(finals, ["method", *corpora, "mean"], (0,))
    for method, group in table.groupby("method", sort=False):
        not_reached = int(group["reconsolidation_not_reached"].fillna(0).sum())
        reconsolidation = _mean_interval(group["reconsolidation_steps_mean"], ".0f")
        measures.add_row(
            _method_label(str(method)),
            str(len(group)),
            _mean_interval(group["forgetting_mean"], "+.3f"),
            _mean_interval(group["plasticity_ratio_mean"], ".3f"),
            _mean_interval(group["plasticity_ratio_slope"], "+.3f"),
            reconsolidation + (f"\n({not_reached} not back)" if not_reached else ""),
        )
        finals.add_row(
            _method_label(str(method)),
            *(_mean_interval(group[f"final_val_{c}"], ".4f") for c in corpora),
            _mean_interval(group["final_val_mean"], ".4f"),
        )
    return [_whole_words(measures), _whole_words(finals)]


def phases_table(per_phase: pd.DataFrame, title: str) -> Table:
    """Per method and phase, means over seeds: how each measure moves from switch to switch."""
    table = Table(
        title=f"{title}: per phase (means over seeds)",
        title_justify="left",
        pad_edge=False,
        caption="steps back: steps until a returning corpus is back at its earlier loss",
        caption_justify="left",
    )
    columns = ["method", "phase", "corpus", "loss at end", "plasticity", "forgetting next", "steps back"]
    _add_columns(table, columns, (0, 2))
    measures = ["own_loss_at_end", "plasticity_ratio", "forgetting_next", "reconsolidation_steps"]
    formats = [".3f", ".3f", "+.3f", ".0f"]
    for (method, index), rows in per_phase.groupby(["method", "index"], sort=False):
        means = rows[measures].astype(float).mean()
        cells = ["-" if pd.isna(means[m]) else format(means[m], f) for m, f in zip(measures, formats, strict=True)]
        table.add_row(_method_label(str(method)), str(index + 1), str(rows["corpus"].iloc[0]), *cells)
    return _whole_words(table)


def plot_continual(runs: list[PlannedRun], per_phase: pd.DataFrame, out_dir: Path) -> None:
    """``continual_loss.png``: validation loss on each corpus over the run (one panel per corpus,
    mean ± sd over seeds per method, solid lines at phase ends); ``plasticity.png``: the
    plasticity ratio of each phase per method."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    from apoptosis.training import read_metrics
    from apoptosis.training.run_plots import save_figure

    curves = []
    for run in runs:
        metrics = read_metrics(run.run_dir)
        value_columns = [c for c in metrics.columns if c.startswith("val_") and c != "val_loss"]
        long = metrics.melt(id_vars="step", value_vars=value_columns, var_name="corpus", value_name="loss")
        curves.append(long.dropna().assign(method=run.strategy, seed=run.seed))
    data = pd.concat(curves)
    data["corpus"] = data["corpus"].str.removeprefix("val_")
    grid = sns.relplot(
        data=data, x="step", y="loss", hue="method", col="corpus", kind="line", errorbar="sd", height=3.5
    )
    c = runs[0].config.continual
    for ax in grid.axes.flat:
        for i in range(1, len(c.phases)):
            ax.axvline(i * c.steps_per_phase, color="black", linewidth=1)
    grid.figure.suptitle("validation loss per corpus (mean ± sd over seeds); solid lines: phase ends", y=1.03)
    save_figure(grid.figure, out_dir / "continual_loss.png")
    fig, ax = plt.subplots(figsize=(8, 4))
    dodge = 0.3 if per_phase["method"].nunique() > 1 else False  # seaborn cannot dodge a single method
    sns.pointplot(data=per_phase, x="index", y="plasticity_ratio", hue="method", errorbar="sd", dodge=dodge, ax=ax)
    ax.axhline(1.0, color="grey", linestyle=":")
    ax.set_xlabel("phase")
    ax.set_title("plasticity ratio per phase (loss after K steps / fresh model's; below 1 = faster)")
    save_figure(fig, out_dir / "plasticity.png")


def corpora_of(config: RunConfig) -> list[str]:
    return [s.name for s in distinct_corpora(phase_specs(config))]


def phase_specs(config: RunConfig) -> list[PhaseSpec]:
    """The phases a continual config saved (each as ``parse_phases`` reads it)."""
    return parse_phases(",".join(config.continual.phases))
