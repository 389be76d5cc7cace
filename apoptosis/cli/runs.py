"""Commands that read runs and the registry: ``strategies``, ``ages``, ``lineage``, ``summarize``,
``events``."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from apoptosis.cli.app import app, console
from apoptosis.core.errors import ApoptosisError


@app.command()
def strategies(
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
    pattern: Annotated[str, typer.Argument(help="shell-style wildcard on names")] = "*",
) -> None:
    """List the registered strategies with their parameters, defaults and ranges."""
    from apoptosis.core.registry import STRATEGIES
    from apoptosis.core.strategy import Strategy

    listing = []
    for strategy_name in STRATEGIES.names(pattern):
        cls = STRATEGIES.get(strategy_name)
        if not (isinstance(cls, type) and issubclass(cls, Strategy)):
            warnings.warn(f"strategy plugin {strategy_name!r} is {cls!r}, not a Strategy: skipped", stacklevel=1)
            continue
        listing.append(
            {
                "name": strategy_name,
                "kind": "follower" if cls.follows_events else "strategy",
                "description": getattr(cls, "description", ""),
                "parameters": cls.Params.describe(),
            }
        )
    if as_json:
        print(json.dumps(listing, indent=2))
        return
    for kind, title in (("strategy", "Strategies"), ("follower", "Followers (after another's events: --then)")):
        chosen = [item for item in listing if item["kind"] == kind]
        if chosen:
            console.print(_strategy_table(title, chosen))


def _strategy_table(title: str, listing: list[dict]) -> Table:
    table = Table(title=title, title_justify="left", show_lines=True)
    table.add_column("name", style="bold")
    table.add_column("description")
    table.add_column("parameters (default; allowed; search range)")
    for item in listing:
        lines = [
            f"{p['name']} = {p['default']!r}; {p['allowed']}; "
            + (f"search {p['search'][0]}..{p['search'][1]}{' (log)' if p['log'] else ''}" if p["search"] else
               f"search {p['choices']}" if p["choices"] else "not searched")
            for p in item["parameters"]
        ]  # fmt: skip
        table.add_row(item["name"], item["description"], "\n".join(lines) or "-")
    return table


@app.command()
def ages(run_dir: Annotated[Path, typer.Argument(help="a run folder, e.g. runs/NAME")]) -> None:
    """Neuron ages per layer, age histogram, age diversity and the largest living lineages."""
    from apoptosis.analysis.report import print_ages

    print_ages(run_dir, console)


@app.command()
def lineage(
    run_dir: Annotated[Path, typer.Argument(help="a run folder, finished or killed, e.g. runs/NAME")],
    clades: Annotated[int, typer.Option(min=1, help="largest clades drawn per layer; the rest are grouped")] = 8,
    out: Annotated[Path | None, typer.Option(help="where to write the PNG (default RUN_DIR/lineage.png)")] = None,
) -> None:
    """Muller (fish) plots of the founders' clades per layer and the family trees of the largest
    lineages (lineage.png), and a table of the largest clades."""
    from apoptosis.analysis.report import load_lineage
    from apoptosis.training import read_events
    from apoptosis.training.lineage_plots import largest_clades, plot_lineage
    from apoptosis.training.run_plots import save_figure

    history, step = load_lineage(run_dir)
    frame = history.to_frame()
    logged = [e for e in read_events(run_dir) if e["step"] <= step]  # a killed run's, up to its checkpoint
    surgery = [e["step"] for e in logged if e["kind"] != "phase"]
    phases = [e["step"] for e in logged if e["kind"] == "phase"]
    out = out or run_dir / "lineage.png"
    title = f"{run_dir.name}: neuron lineages to step {step}"
    save_figure(plot_lineage(frame, step, surgery, title, phases, top=clades), out)
    console.print(f"Lineage picture: {out}")
    table = Table(
        title=f"Largest clades at step {step} (top {clades} per layer)",
        title_justify="left",
        caption="clade: the living descendants of a founder through first parents, itself included; "
        "generations: the deepest living one",
        caption_justify="left",
    )
    for column in ("layer", "founder", "living", "share", "generations"):
        table.add_column(column, justify="right")
    for row in largest_clades(frame, step, clades).itertuples(index=False):
        table.add_row(f"{row.layer}", f"{row.founder}", f"{row.living}", f"{row.share:.1%}", f"{row.generations}")
    console.print(table if table.row_count else "No clade has two living neurons (no births, or no family survived).")


@app.command()
def summarize(
    run_dirs: Annotated[list[Path], typer.Argument(help="finished run folders, e.g. runs/exp-*")],
    csv: Annotated[Path | None, typer.Option(help="also write one row per run to this CSV file")] = None,
) -> None:
    """Mean and spread over runs (seeds) of each strategy's results."""
    from apoptosis.analysis.report import runs_frame, strategies_table
    from apoptosis.core.io import atomic_write_text

    frame = runs_frame(run_dirs)
    console.print(strategies_table(frame))
    if csv is not None:
        atomic_write_text(csv, frame.to_csv(index=False))


@app.command()
def events(
    run_dirs: Annotated[list[Path], typer.Argument(help="finished run folders, e.g. runs/cmp/*-s*")],
    csv: Annotated[Path | None, typer.Option(help="also write one row per run and event to this CSV file")] = None,
    plot: Annotated[Path | None, typer.Option(help="also draw each event's spike and recovery (PNG)")] = None,
) -> None:
    """The disruption of every event (probe loss before and after the surgery, and after a
    follower) and the steps until the training loss is back, per comparison and strategy,
    averaged over runs."""
    from apoptosis.analysis.report import events_frame, events_table, plot_events
    from apoptosis.core.io import atomic_write_text

    frame = events_frame(run_dirs)
    if frame.empty:
        raise ApoptosisError("none of these runs had an event")
    console.print(events_table(frame))
    if csv is not None:
        atomic_write_text(csv, frame.to_csv(index=False))
    if plot is not None:
        plot_events(frame, plot)
