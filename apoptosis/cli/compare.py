"""``apoptosis compare`` and ``apoptosis continual``: several methods on the same seeds."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from apoptosis.cli.app import (
    CompileOption,
    SetOption,
    app,
    build_config,
    console,
    default_name,
    distinct_names,
    split_set_options,
    with_compile,
)
from apoptosis.core.errors import ApoptosisError


@app.command()
def compare(
    strategies: Annotated[
        str,
        typer.Option(
            help="comma-separated strategies, e.g. none,standard,standard+lazarus (A+B: B follows A); "
            "A@X=v gives A its own setting, e.g. standard@prune_rate=0.05 (a sweep: sweep.png)"
        ),
    ],
    seeds: Annotated[int, typer.Option(help="seeds 1..N for every strategy")] = 3,
    steps: Annotated[int | None, typer.Option(help="training steps per run")] = None,
    name: Annotated[str | None, typer.Option(help="comparison folder name (default: time)")] = None,
    runs_dir: Annotated[Path, typer.Option(help="folder holding run folders")] = Path("runs"),
    data: Annotated[str | None, typer.Option(help="UTF-8 text file (default: Shakespeare's plays)")] = None,
    device: Annotated[str | None, typer.Option(help="cpu or cuda")] = None,
    config: Annotated[Path | None, typer.Option(help="TOML config file for every run")] = None,
    set_: SetOption = None,
    workers: Annotated[int, typer.Option(help="runs in parallel processes")] = 1,
    compile_: CompileOption = False,
) -> None:
    """Every strategy under one config and the same seeds: compare.csv, a table against `none`
    with paired and Welch 95% intervals, and plots; the same command again continues a stopped
    comparison. `--set strategy.X=v` goes to the strategies that have X."""
    from apoptosis.analysis.compare import compare as run_comparison
    from apoptosis.analysis.compare import comparison_tables

    names = distinct_names(strategies, "--strategies")
    sets, other_sets = split_set_options(with_compile(set_, compile_))
    base = build_config(config, "none", "", steps, None, data, device, other_sets)
    name = name or default_name("compare")
    out_dir = runs_dir / name
    frame = run_comparison(base, names, seeds, sets["strategy"], out_dir, workers, console, sets["then"])
    for table in comparison_tables(frame, f"{name} ({base.trainer.steps} steps, seeds 1..{seeds})"):
        console.print(table)
    plots = "val_loss.png, ages.png" + (", sweep.png" if (out_dir / "sweep.png").exists() else "")
    console.print(f"Comparison folder: {out_dir} (compare.csv, {plots})")


@app.command()
def continual(
    phases: Annotated[
        str, typer.Option(help="corpus of each phase: shakespeare, python or name=FILE; names may repeat")
    ] = "shakespeare,python,shakespeare",
    steps_per_phase: Annotated[int, typer.Option(help="training steps of each phase")] = 1000,
    plasticity_steps: Annotated[
        int | None,
        typer.Option(
            help="K: every corpus is measured K steps into each phase (plasticity); default: a tenth of the "
            "phase, at most 100"
        ),
    ] = None,
    strategy: Annotated[
        str | None, typer.Option(help="one method, e.g. standard, replay or standard+stability_first")
    ] = None,
    methods: Annotated[
        str | None,
        typer.Option("--compare", help="methods (default none,standard), e.g. none,standard,stability_first,replay"),
    ] = None,
    seeds: Annotated[int, typer.Option(help="seeds 1..N for every method")] = 1,
    name: Annotated[str | None, typer.Option(help="folder name under runs/ (default: time)")] = None,
    runs_dir: Annotated[Path, typer.Option(help="folder holding run folders")] = Path("runs"),
    device: Annotated[str | None, typer.Option(help="cpu or cuda")] = None,
    config: Annotated[Path | None, typer.Option(help="TOML config file for every run")] = None,
    set_: SetOption = None,
    workers: Annotated[int, typer.Option(help="runs in parallel processes")] = 1,
) -> None:
    """Train one model through phases of corpora with each method on the same seeds; measure
    forgetting, plasticity (against fresh models) and reconsolidation; table, CSVs and plots."""
    from apoptosis.continual.experiment import (
        continual_config,
        continual_tables,
        corpora_of,
        default_plasticity_steps,
        phases_table,
        run_continual,
    )

    if strategy is not None and methods is not None:
        raise ApoptosisError("give --strategy S (one method) or --compare A,B,... (several), not both")
    labels = [strategy] if strategy is not None else distinct_names(methods or "none,standard", "--compare")
    sets, other_sets = split_set_options(set_)
    if steps_per_phase < 1:
        raise ApoptosisError(f"--steps-per-phase must be >= 1, got {steps_per_phase}")
    if plasticity_steps is None:
        plasticity_steps = default_plasticity_steps(steps_per_phase)
    if not 1 <= plasticity_steps <= steps_per_phase:
        raise ApoptosisError(f"--plasticity-steps must be in 1..{steps_per_phase} (--steps-per-phase)")
    base = build_config(config, "none", "", None, None, None, device, other_sets)
    base = continual_config(base, phases, steps_per_phase, plasticity_steps)
    name = name or default_name("continual")
    out_dir = runs_dir / name
    table, per_phase = run_continual(base, labels, seeds, sets["strategy"], sets["then"], out_dir, workers, console)
    title = f"{name}: {' -> '.join(phases.split(','))}, {steps_per_phase} steps per phase, seeds 1..{seeds}"
    console.print(phases_table(per_phase, name))
    for printed in continual_tables(table, corpora_of(base), title):
        console.print(printed)
    console.print(f"Folder: {out_dir} (continual.csv, phases.csv, continual_loss.png, plasticity.png, fresh/)")
