"""Rich console summaries of a run: its results and the ages and lineages of its neurons."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from rich.console import Console
from rich.table import Table

from apoptosis.core.errors import ApoptosisError
from apoptosis.core.io import read_torch_file
from apoptosis.core.lineage import Lineage

if TYPE_CHECKING:  # pandas is imported where a frame is read: `apoptosis train` prints without it
    import pandas as pd

SPARK = "▁▂▃▄▅▆▇█"


def load_lineage(run_dir: str | Path) -> tuple[Lineage, int]:
    """The lineage of a run and the step it describes: from ``lineage.csv`` when the run
    finished, else from its last checkpoint (a run still going or killed)."""
    run_dir = Path(run_dir)
    summary, csv_path = run_dir / "summary.json", run_dir / "lineage.csv"
    if summary.exists() and csv_path.exists():
        import pandas as pd

        step = int(json.loads(summary.read_text(encoding="utf-8"))["steps"])
        return Lineage.from_frame(pd.read_csv(csv_path)), step
    ckpt_path = run_dir / "checkpoints" / "last.pt"
    if ckpt_path.exists():
        ckpt = read_torch_file(ckpt_path, keys=("lineage", "step"))
        lineage = Lineage()
        lineage.load_state_dict(ckpt["lineage"])
        return lineage, int(ckpt["step"])
    raise ApoptosisError(f"{run_dir} is not a run folder: it has neither lineage.csv nor checkpoints/last.pt")


def sparkline(ages: np.ndarray, step: int, bins: int = 10) -> str:
    """Age histogram over [0, step] as block characters, youngest on the left."""
    if len(ages) == 0:
        return ""
    counts, _ = np.histogram(ages, bins=bins, range=(0, max(step, 1)))
    top = counts.max()
    return "".join(" " if c == 0 else SPARK[min(len(SPARK) - 1, int(c / top * (len(SPARK) - 1) + 0.5))] for c in counts)


def ages_table(lineage: Lineage, step: int) -> Table:
    table = Table(
        title=f"Neuron ages at step {step} (gen = max generation, div = age diversity)",
        title_justify="left",
        padding=(0, 1),
        collapse_padding=True,
        pad_edge=False,
    )
    table.add_column("layer", no_wrap=True, min_width=3)
    for name in ("neurons", "founders", "mean", "median", "max", "gen", "div", "deaths"):
        table.add_column(name, justify="right", no_wrap=True)
    table.add_column(f"ages 0..{step}", no_wrap=True)
    deaths = Counter(r.layer for r in lineage.records if not r.alive)
    layers: list[tuple[str, int | None]] = [(str(i), i) for i in range(len(lineage.slots))] + [("all", None)]
    for label, layer in layers:
        ages = lineage.ages(step, layer)
        table.add_row(
            label,
            f"{len(ages)}",
            f"{lineage.founders_share(layer):.0%}",
            f"{ages.mean():.0f}" if len(ages) else "-",
            f"{np.median(ages):.0f}" if len(ages) else "-",
            f"{ages.max()}" if len(ages) else "-",
            f"{lineage.max_generation(layer)}",
            f"{lineage.age_diversity(step, layer):.3f}",
            f"{deaths[layer] if layer is not None else sum(deaths.values())}",
            sparkline(ages, step),
            style="bold" if layer is None else None,
        )
    return table


def lineages_table(lineage: Lineage, top: int = 5) -> Table:
    """The founders with the most living descendants (themselves included)."""
    living = Counter()
    ever = Counter()
    deepest: dict[int, int] = {}
    for r in lineage.records:
        root = lineage.founder_of(r.id)
        ever[root] += 1
        if r.alive:
            living[root] += 1
            deepest[root] = max(deepest.get(root, 0), r.generation)
    table = Table(title=f"Largest living lineages (top {top})", title_justify="left")
    table.add_column("founder", justify="right")
    table.add_column("layer", justify="right")
    for name in ("living", "ever born", "deepest gen", "founder alive"):
        table.add_column(name, justify="right")
    for root, n in sorted(living.items(), key=lambda kv: (-kv[1], kv[0]))[:top]:
        record = lineage.record(root)
        table.add_row(
            f"{root}", f"{record.layer}", f"{n}", f"{ever[root]}", f"{deepest[root]}", "yes" if record.alive else "no"
        )
    return table


def print_ages(run_dir: str | Path, console: Console, lineage: Lineage | None = None, step: int = 0) -> None:
    """The ages and lineages tables of a run: of ``lineage`` at ``step`` when given (the trainer's
    own, in memory), else read from the run folder."""
    if lineage is None:
        lineage, step = load_lineage(run_dir)
    console.print(ages_table(lineage, step))
    console.print(lineages_table(lineage))


def summary_table(summary: dict[str, Any], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("measure")
    table.add_column("value", justify="right")
    rows = [
        ("strategy", summary["strategy"]),
        ("steps", f"{summary['steps']}"),
        ("final train loss", f"{summary['final_train_loss']:.4f}"),
        ("final val loss", f"{summary['final_val_loss']:.4f}"),
        ("unigram val loss (no context)", f"{summary['unigram_val_loss']:.4f}"),
        ("train loss variance around its trend (last 20%)", _num(summary.get("train_loss_detrended_variance"), ".6f")),
        ("tokens/s", _num(summary["tokens_per_s"], ",.0f")),
        ("events", f"{summary['events']}"),
        ("neurons replaced", f"{summary['neurons_replaced']}"),
        ("mean event disruption (probe loss)", _num(summary["mean_event_disruption"], "+.4f")),
        ("age diversity", f"{summary['age_diversity']:.3f}"),
        ("neurons / parameters", f"{summary['neurons']} / {summary['parameters']:,}"),
    ]
    if "+" in summary["strategy"]:  # a follower ran after each event: show the surgery's own share
        surgery = ("  before the follower ran", _num(summary.get("mean_surgery_disruption"), "+.4f"))
        rows.insert(next(i for i, row in enumerate(rows) if row[0].startswith("mean event")) + 1, surgery)
    for name, value in rows:
        table.add_row(name, value)
    return table


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def runs_frame(run_dirs: list[Path]) -> pd.DataFrame:
    """One row per finished run (its summary.json), with the run folder's name."""
    import pandas as pd

    rows = []
    for run_dir in run_dirs:
        path = Path(run_dir) / "summary.json"
        if not path.exists():
            raise ApoptosisError(f"{run_dir} has no summary.json: is it a finished run folder?")
        rows.append({"run": Path(run_dir).name, **json.loads(path.read_text(encoding="utf-8"))})
    return pd.DataFrame(rows)


def strategies_table(frame: pd.DataFrame) -> Table:
    """Mean and standard deviation over runs (seeds) of each strategy's main results."""
    measures = [
        ("final_val_loss", "val loss", ".4f"),
        ("final_train_loss", "train loss", ".4f"),
        ("train_loss_detrended_variance", "variance", ".6f"),
        ("mean_event_disruption", "disruption", "+.4f"),
        ("age_diversity", "age div", ".3f"),
        ("tokens_per_s", "tok/s", ",.0f"),
    ]
    table = Table(title="Runs by strategy: mean ± std over runs", title_justify="left")
    table.add_column("strategy")
    table.add_column("runs", justify="right")
    for _, header, _ in measures:
        table.add_column(header, justify="right", no_wrap=True)
    for strategy, group in frame.groupby("strategy", sort=True):
        cells = []
        for column, _, fmt in measures:
            values = group[column].dropna().astype(float) if column in group else None
            if values is None or values.empty:
                cells.append("-")
            else:
                std = values.std(ddof=1) if len(values) > 1 else float("nan")
                cells.append(f"{format(values.mean(), fmt)} ± {abs(std):{fmt.lstrip('+')}}")
        table.add_row(str(strategy), str(len(group)), *cells)
    return table


def recovery_steps(metrics: pd.DataFrame, step: int) -> float:
    """Steps after an event at ``step`` until the training loss (per logged window) is back at or
    below the last window before the event; inf if it never is in the run, nan where no window
    was logged before or after the event (nothing to tell)."""
    before = metrics[metrics["step"] <= step]["train_loss"].dropna()
    after = metrics[metrics["step"] > step].dropna(subset=["train_loss"])
    if before.empty or after.empty:
        return float("nan")
    back = after[after["train_loss"] <= before.iloc[-1]]
    return float(back["step"].iloc[0] - step) if len(back) else math.inf


def events_frame(run_dirs: list[Path]) -> pd.DataFrame:
    """One row per event of each finished run: the probe-loss change of the surgery alone
    (``surgery``, the event's loss spike), after the follower if one ran (``after_follower``), the
    follower's seconds, and the steps until the training loss is back at its level before the
    event (``recovery_steps``). ``group`` is the run's parent folder and strategy, so runs of
    several comparisons stay apart."""
    import pandas as pd

    from apoptosis.training import read_events, read_metrics

    rows = []
    for run_dir in map(Path, run_dirs):
        strategy = runs_frame([run_dir])["strategy"].iloc[0]  # a comparison's label, with a sweep's own settings
        metrics = read_metrics(run_dir)
        events = [e for e in read_events(run_dir) if e.get("event") is not None]
        for number in sorted({e["event"] for e in events}):
            lines = [e for e in events if e["event"] == number]
            surgery = [e for e in lines if e["layer"] is not None]
            follower = [e for e in lines if e["layer"] is None]
            before, after = _loss(surgery[0]["probe_loss_before"]), _loss(surgery[-1]["probe_loss_after"])
            rows.append(
                {
                    "group": f"{run_dir.parent.name}/{strategy}",
                    "run": run_dir.name,
                    "event": number,
                    "step": surgery[0]["step"],
                    "surgery": after - before,
                    "after_follower": (_loss(follower[-1]["probe_loss_after"]) if follower else after) - before,
                    "follower_seconds": follower[-1]["seconds"] if follower else 0.0,
                    "recovery_steps": recovery_steps(metrics, surgery[0]["step"]),
                }
            )
    return pd.DataFrame(rows)


def plot_events(frame: pd.DataFrame, path: Path) -> None:
    """Per event number, one line per group with the runs' 95% interval: the loss spike (the
    surgery's probe-loss change) and the steps until the training loss is back."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    from apoptosis.training.run_plots import save_figure

    frame = frame.replace(math.inf, np.nan)  # never back: left out of the means, as in the table
    interval = ("ci", 95) if frame["event"].nunique() <= 50 else None  # thousands of events: means only
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.5))
    for ax, column, label in ((axes[0], "surgery", "loss spike (probe loss change)"),
                              (axes[1], "recovery_steps", "steps until the loss is back")):  # fmt: skip
        sns.lineplot(data=frame, x="event", y=column, hue="group", errorbar=interval, marker="o", ax=ax,
                     legend=ax is axes[1])  # fmt: skip
        ax.set_ylabel(label)
    axes[0].axhline(0, color="grey", linewidth=1)
    sns.move_legend(axes[1], "upper left", bbox_to_anchor=(1.02, 1), frameon=False)  # one legend, beside both
    fig.suptitle("each event: mean over runs and 95% interval")
    save_figure(fig, path)


def _loss(value: float | None) -> float:
    """A probe loss from events.jsonl; nan where the run did not probe its events."""
    return float("nan") if value is None else value


def events_table(frame: pd.DataFrame) -> Table:
    """Per group and event number, means over runs (seeds) of the disruption before and after
    the follower and of the steps to recover; then the means over all events."""
    table = Table(
        title="Event disruption (probe-loss change per event; mean over runs)",
        title_justify="left",
        caption="surgery: the strategy's surgery alone; after follower: once the follower (--then) ran; "
        "steps back: until the training loss is back at its level before the event (mean over the events "
        "where it was; n/m: back in n of m events)",
        caption_justify="left",
    )
    for i, column in enumerate(["group", "event", "runs", "surgery", "after follower", "follower s", "steps back"]):
        table.add_column(column, justify="left" if i == 0 else "right")
    for (group, event), rows in frame.groupby(["group", "event"], sort=True):
        table.add_row(group, str(event), str(len(rows)), *_event_cells(rows))
    for group, rows in frame.groupby("group", sort=True):
        table.add_row(f"[bold]{group}", "all", str(rows["run"].nunique()), *_event_cells(rows))
    return table


def _event_cells(rows: pd.DataFrame) -> list[str]:
    steps = rows["recovery_steps"].dropna()  # nan: no window to tell
    back = steps[np.isfinite(steps)]  # inf: never back within the run
    cell = f"{back.mean():.0f}" if len(back) else "-"
    if len(back) < len(steps):
        cell += f" ({len(back)}/{len(steps)})"
    means = rows[["surgery", "after_follower", "follower_seconds"]].mean()
    loss = [f"{means[c]:+.4f}" if np.isfinite(means[c]) else "-" for c in ("surgery", "after_follower")]
    return [*loss, f"{means['follower_seconds']:.1f}", cell]
