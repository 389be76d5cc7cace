"""The benchmark's table and plots, from plasticity.csv's rows (one per method, seed and task).

The table summarises where plasticity shows: the last tasks. For each seed the measures are
averaged over the last ``last`` tasks, then over seeds, with a 95% t interval over the seeds
(scipy); each method's training time per task is set against ``none``'s, and its losses against
``none``'s and the fresh network's paired by seed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from rich import box
from rich.table import Table

from apoptosis.analysis.intervals import half_width

BASELINE = "none"
MEASURES = {  # column -> format in the tables
    "excess_loss": ".3f",
    "probe_loss": ".3f",
    "fresh_probe_loss": ".3f",
    "dormant_fraction": ".2f",
    "effective_rank": ".1f",
    "weight_norm": ".1f",
}


def last_task_stats(frame: pd.DataFrame, last: int) -> pd.DataFrame:
    """Per method (in the order of the rows): seeds, and for every measure the mean over seeds of
    each seed's mean over the last ``last`` tasks, with the half-width of its 95% t interval over
    seeds (``<measure>_ci``). The training seconds per task are each seed's median over all its
    tasks: a task slowed by something else on the machine (or a paused process) does not count."""
    tail = frame[frame["task"] > frame["task"].max() - last]
    columns = [*MEASURES, "train_seconds"]
    per_seed = tail.groupby(["method", "seed"], sort=False)[list(MEASURES)].mean()
    per_seed["train_seconds"] = frame.groupby(["method", "seed"], sort=False)["train_seconds"].median()
    rows = []
    for method, group in per_seed.groupby(level="method", sort=False):
        row: dict[str, object] = {"method": method, "seeds": len(group)}
        for column in columns:
            row[column], row[f"{column}_ci"] = group[column].mean(), half_width(group[column])
        rows.append(row)
    return pd.DataFrame(rows)


def paired_stats(frame: pd.DataFrame, last: int) -> pd.DataFrame:
    """Per method, paired by seed over the last ``last`` tasks (every method meets the same tasks
    on a seed, so the pairs cancel the tasks' own difficulty): the excess and probe loss minus
    ``none``'s on the seeds both have, and the probe loss minus the fresh network's. Each is the
    mean of the per-seed differences with the half-width of its 95% t interval (``<name>_ci``).

    ``late_vs_early``: the method's own probe loss over the last tasks minus over the first
    ``last`` tasks after the first (whose probe starts from the untrained network) that are not
    among the last (nan when none are left), per seed:
    above 0, the network learns a new task worse than it did early on, the measure of loss of
    plasticity in Dohare et al. (2024)'s figures."""
    tail = frame[frame["task"] > frame["task"].max() - last].assign(
        behind_fresh=lambda f: f["probe_loss"] - f["fresh_probe_loss"]
    )
    per_seed = tail.groupby(["method", "seed"], sort=False)[["excess_loss", "probe_loss", "behind_fresh"]].mean()
    early_end = min(1 + last, frame["task"].max() - last)  # the early tasks end before the last ones begin
    early = frame[(frame["task"] > 1) & (frame["task"] <= early_end)]
    per_seed["late_vs_early"] = (
        per_seed["probe_loss"] - early.groupby(["method", "seed"], sort=False)["probe_loss"].mean()
    )
    baseline = per_seed.xs(BASELINE, level="method") if BASELINE in per_seed.index.get_level_values(0) else None
    rows = []
    for method, group in per_seed.groupby(level="method", sort=False):
        group = group.droplevel("method")
        row: dict[str, object] = {"method": method}
        for name in ("behind_fresh", "late_vs_early"):
            row[name], row[f"{name}_ci"] = group[name].mean(), half_width(group[name])
        for column, name in (("excess_loss", "vs_none_excess"), ("probe_loss", "vs_none_probe")):
            missing = pd.Series(dtype=float)
            difference = (group[column] - baseline[column]).dropna() if baseline is not None else missing
            row[name], row[f"{name}_ci"] = difference.mean(), half_width(difference)
            if column == "excess_loss":  # measured at every task: the seeds the pairs cover
                row["paired_seeds"] = len(difference)
        rows.append(row)
    return pd.DataFrame(rows)


def results_tables(frame: pd.DataFrame, last: int, title: str) -> list[Table]:
    """The last tasks' means ± 95% intervals per method in tables that fit 80 columns: the losses
    with each method's extra time, the state of the network, the losses against ``none``'s paired
    by seed, and whether plasticity was kept (against a new network, and against itself early)."""
    summary = last_task_stats(frame, last)
    baseline = summary.set_index("method")["train_seconds"].get(BASELINE)
    tasks = int(frame["task"].max())
    heading = f"{title}\nmeans over the last {min(last, tasks)} of {tasks} tasks, ± 95% t interval over seeds"
    losses = _table(
        f"{heading}: losses",
        "excess: held-out loss over the task's floor at its end; probe, fresh: excess on a new task after the "
        "probe's steps from the weights the task starts with, from a new network; s/task: median training "
        f"time per task; extra: against {BASELINE}'s",
        ["method", "seeds", "excess", "probe", "fresh", "s/task", "extra"],
    )
    state = _table(
        "the network at each task's end (the same means)",
        "dormant: share of hidden units at most 0.01 on every token; eff.rank: of the hidden activations "
        "(mean over layers); |w|: weight norm",
        ["method", "dormant", "eff.rank", "|w|"],
    )
    for row in summary.to_dict("records"):
        cells = {m: _mean_ci(row[m], row[f"{m}_ci"], fmt) for m, fmt in MEASURES.items()}
        seconds = row["train_seconds"]
        extra = "-" if baseline is None or row["method"] == BASELINE else f"{100 * (seconds / baseline - 1):+.0f}%"
        losses.add_row(str(row["method"]), str(row["seeds"]), cells["excess_loss"], cells["probe_loss"],
                       cells["fresh_probe_loss"], f"{seconds:.1f}", extra)  # fmt: skip
        state.add_row(str(row["method"]), cells["dormant_fraction"], cells["effective_rank"], cells["weight_norm"])
    paired = _table(
        f"against {BASELINE}, paired by seed (the same means, on the seeds both have)",
        f"the method's minus {BASELINE}'s on the same seeds: negative, better than {BASELINE}",
        ["method", "seeds", f"excess - {BASELINE}", f"probe - {BASELINE}"],
    )
    kept = _table(
        "plasticity: against a new network and against itself early on, per seed",
        "probe - fresh: above 0, the method learns a new task worse than a new network; late - early: its "
        f"probe loss over the last tasks minus over tasks 2..{max(1, min(1 + last, tasks - last))}; above 0, "
        "it lost plasticity",
        ["method", "probe - fresh", "late - early"],
    )
    for row in paired_stats(frame, last).to_dict("records"):
        cells = {name: _mean_ci(row[name], row[f"{name}_ci"], "+.3f") for name in
                 ("vs_none_excess", "vs_none_probe", "behind_fresh", "late_vs_early")}  # fmt: skip
        if row["method"] != BASELINE:
            paired.add_row(
                str(row["method"]), str(row["paired_seeds"]), cells["vs_none_excess"], cells["vs_none_probe"]
            )
        kept.add_row(str(row["method"]), cells["behind_fresh"], cells["late_vs_early"])
    return [losses, state, paired, kept]


def _table(title: str, caption: str, headings: list[str]) -> Table:
    table = Table(title=title, title_justify="left", caption=caption, caption_justify="left",
                  box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)  # fmt: skip
    for i, heading in enumerate(headings):
        table.add_column(heading, justify="left" if i == 0 else "right", no_wrap=True)
    return table


def _mean_ci(mean: float, ci: float, fmt: str) -> str:
    if pd.isna(mean):
        return "-"
    return format(mean, fmt) if np.isnan(ci) else f"{format(mean, fmt)}±{format(ci, fmt.lstrip('+'))}"


def plot_benchmark(frame: pd.DataFrame, out_dir: Path) -> None:
    """``plasticity.png``: per task, one line per method (mean over seeds, 95% bootstrap band):
    excess loss, probe loss (the fresh network's dashed), dormant fraction, effective rank and
    weight norm."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    from apoptosis.training.run_plots import save_figure

    fig, axes = plt.subplots(2, 3, figsize=(15, 8), layout="constrained")
    panels = ["excess_loss", "probe_loss", "dormant_fraction", "effective_rank", "weight_norm"]
    for ax, column in zip(axes.flat, panels, strict=False):
        data = frame.dropna(subset=[column])
        sns.lineplot(data=data, x="task", y=column, hue="method", errorbar=("ci", 95), marker=".", ax=ax)
        ax.set_title(column.replace("_", " "))
    fresh = frame.dropna(subset=["fresh_probe_loss"]).groupby("task")["fresh_probe_loss"].mean()
    axes[0, 1].plot(fresh.index, fresh.to_numpy(), color="black", linestyle="--", label="fresh network")
    axes[0, 1].legend()
    axes[1, 2].axis("off")
    fig.suptitle("plasticity over tasks (mean over seeds per method)")
    save_figure(fig, out_dir / "plasticity.png")
