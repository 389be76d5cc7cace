"""The ``apoptosis`` command line. Every user error is one line on stderr and exit code 2."""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from apoptosis.config import RunConfig, StrategyConfig, parse_set_option
from apoptosis.errors import ApoptosisError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Neuron-level evolution inside a char-level transformer.",
)
console = Console(log_path=False)


def _add_command_groups() -> None:
    """Commands defined beside their subject: ``search ...`` and the Lazarus commands."""
    from apoptosis.lazarus_cli import register
    from apoptosis.search.cli import search_app

    app.add_typer(search_app, name="search")
    register(app)


_add_command_groups()

SetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set", help="override a setting: section.key=value (e.g. model.n_layer=2, strategy.prune_rate=0.05)"
    ),
]


def build_config(
    config_file: Path | None,
    strategy: str | None,
    then: str | None,
    steps: int | None,
    seed: int | None,
    data: str | None,
    device: str | None,
    sets: list[str] | None,
) -> RunConfig:
    """Defaults, then the config file, then the named options, then ``--set`` in order."""
    from apoptosis.data import DEFAULT_CORPUS
    from apoptosis.registry import FITNESS_METRICS
    from apoptosis.strategy import build_strategy

    config = RunConfig.from_toml_file(config_file) if config_file else RunConfig()
    if strategy is not None and strategy != config.strategy.name:
        config.strategy = StrategyConfig(name=strategy)
    if then is not None and then != config.then.name:
        config.then = StrategyConfig(name=then)
    for key, value in (
        ("trainer.steps", steps),
        ("trainer.seed", seed),
        ("data.path", data),
        ("trainer.device", device),
    ):
        if value is not None:
            config.set(key, value, source=f"--{key.split('.')[1]}")
    for assignment in sets or []:
        config.set(*parse_set_option(assignment))
    if config.data.path != DEFAULT_CORPUS:  # saved with the run, so resume works from any folder
        config.data.path = str(Path(config.data.path).resolve())
    config.validate()
    build_strategy(config.strategy.name, config.strategy.params)  # fail now, not after loading data
    if config.then.name:
        build_strategy(config.then.name, config.then.params, follower=True)
    elif config.then.params:
        raise ApoptosisError(f"then.{next(iter(config.then.params))} is set but no follower is: add --then NAME")
    FITNESS_METRICS.get(config.fitness.metric)
    return config


@app.command()
def train(
    strategy: Annotated[str | None, typer.Option(help="strategy name (see `apoptosis strategies`)")] = None,
    then: Annotated[
        str | None, typer.Option(help="a follower run after each event, e.g. lazarus (its settings: --set then.X=v)")
    ] = None,
    steps: Annotated[int | None, typer.Option(help="training steps")] = None,
    seed: Annotated[int | None, typer.Option(help="random seed")] = None,
    name: Annotated[str | None, typer.Option(help="run name (default: time and strategy)")] = None,
    runs_dir: Annotated[Path, typer.Option(help="folder holding run folders")] = Path("runs"),
    data: Annotated[str | None, typer.Option(help="UTF-8 text file (default: Shakespeare's plays)")] = None,
    device: Annotated[str | None, typer.Option(help="cpu or cuda")] = None,
    config: Annotated[Path | None, typer.Option(help="TOML config file, e.g. a run's config.toml")] = None,
    set_: SetOption = None,
    resume: Annotated[bool, typer.Option(help="continue the run --name from its last checkpoint")] = False,
    quiet: Annotated[bool, typer.Option(help="no progress bar or summary tables")] = False,
) -> None:
    """Train the char-level transformer with an apoptosis strategy; write runs/NAME/."""
    from apoptosis.report import print_ages, summary_table
    from apoptosis.trainer import Trainer

    if resume:
        if name is None:
            raise ApoptosisError("--resume needs --name RUN (the run folder to continue)")
        changed = [opt for opt, v in (("--strategy", strategy), ("--then", then), ("--steps", steps), ("--seed", seed),
                   ("--data", data), ("--device", device), ("--config", config), ("--set", set_)) if v]  # fmt: skip
        if changed:
            raise ApoptosisError(f"--resume continues a run with its saved config; drop {', '.join(changed)}")
        run_config = RunConfig()
    else:
        run_config = build_config(config, strategy, then, steps, seed, data, device, set_)
        name = name or f"{time.strftime('%Y%m%d-%H%M%S')}-{run_config.strategy_label}"
    run_dir = runs_dir / name
    trainer = Trainer(run_config, run_dir, resume=resume, console=console, show_progress=not quiet)
    summary = trainer.fit()
    if not quiet:
        console.print(summary_table(summary, f"Run {name}"))
        print_ages(run_dir, console)
        console.print(f"Run folder: {run_dir}  (sample text: apoptosis sample {run_dir})")


@app.command()
def strategies(
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
    pattern: Annotated[str, typer.Argument(help="shell-style wildcard on names")] = "*",
) -> None:
    """List the registered strategies with their parameters, defaults and ranges."""
    from apoptosis.registry import STRATEGIES
    from apoptosis.strategy import Strategy

    listing = []
    for strategy_name in STRATEGIES.names(pattern):
        cls = STRATEGIES.get(strategy_name)
        if not (isinstance(cls, type) and issubclass(cls, Strategy)):
            warnings.warn(f"strategy plugin {strategy_name!r} is {cls!r}, not a Strategy: skipped", stacklevel=1)
            continue
        listing.append(
            {"name": strategy_name, "description": getattr(cls, "description", ""), "parameters": cls.Params.describe()}
        )
    if as_json:
        print(json.dumps(listing, indent=2))
        return
    table = Table(title="Strategies", title_justify="left", show_lines=True)
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
    console.print(table)


@app.command()
def ages(run_dir: Annotated[Path, typer.Argument(help="a run folder, e.g. runs/NAME")]) -> None:
    """Neuron ages per layer, age histogram, age diversity and the largest living lineages."""
    from apoptosis.report import print_ages

    print_ages(run_dir, console)


@app.command()
def summarize(
    run_dirs: Annotated[list[Path], typer.Argument(help="finished run folders, e.g. runs/exp-*")],
    csv: Annotated[Path | None, typer.Option(help="also write one row per run to this CSV file")] = None,
) -> None:
    """Mean and spread over runs (seeds) of each strategy's results."""
    from apoptosis.io import atomic_write_text
    from apoptosis.report import runs_frame, strategies_table

    frame = runs_frame(run_dirs)
    console.print(strategies_table(frame))
    if csv is not None:
        atomic_write_text(csv, frame.to_csv(index=False))


@app.command()
def events(
    run_dirs: Annotated[list[Path], typer.Argument(help="finished run folders, e.g. runs/cmp/*-s*")],
    csv: Annotated[Path | None, typer.Option(help="also write one row per run and event to this CSV file")] = None,
) -> None:
    """The disruption of every event (probe loss before and after the surgery, and after a
    follower), per comparison and strategy, averaged over runs."""
    from apoptosis.io import atomic_write_text
    from apoptosis.report import events_frame, events_table

    frame = events_frame(run_dirs)
    if frame.empty:
        raise ApoptosisError("none of these runs had an event")
    console.print(events_table(frame))
    if csv is not None:
        atomic_write_text(csv, frame.to_csv(index=False))


@app.command()
def compare(
    strategies: Annotated[
        str, typer.Option(help="comma-separated strategies, e.g. none,standard,standard+lazarus (A+B: B follows A)")
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
) -> None:
    """Every strategy under one config and the same seeds: compare.csv, a table against `none`
    with Welch 95% intervals, and plots. `--set strategy.X=v` goes to the strategies that have X."""
    from apoptosis.compare import compare as run_comparison
    from apoptosis.compare import comparison_tables

    names = distinct_names(strategies, "--strategies")
    sets, other_sets = split_set_options(set_)
    base = build_config(config, "none", "", steps, None, data, device, other_sets)
    name = name or f"{time.strftime('%Y%m%d-%H%M%S')}-compare"
    out_dir = runs_dir / name
    frame = run_comparison(base, names, seeds, sets["strategy"], out_dir, workers, console, sets["then"])
    for table in comparison_tables(frame, f"{name} ({base.trainer.steps} steps, seeds 1..{seeds})"):
        console.print(table)
    console.print(f"Comparison folder: {out_dir} (compare.csv, val_loss.png, ages.png)")


def distinct_names(text: str, option: str, required: bool = True) -> list[str]:
    """``a,b,c`` -> names, each once; an empty list only when not ``required``."""
    names = [s.strip() for s in text.split(",") if s.strip()]
    if (required and not names) or len(set(names)) != len(names):
        raise ApoptosisError(f"{option} needs distinct comma-separated names, got {text!r}")
    return names


def split_set_options(
    assignments: list[str] | None, sections: tuple[str, ...] = ("strategy", "then")
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """``--set`` for several runs: ``strategy.X`` and ``then.X`` (of ``sections``) go to the
    strategies and followers that have X; every other key goes to every run as it is."""
    sets: dict[str, dict[str, Any]] = {section: {} for section in sections}
    others = []
    for assignment in assignments or []:
        key, value = parse_set_option(assignment)
        section, _, param = key.partition(".")
        if section in sets and param != "name":
            sets[section][param] = value
        else:
            others.append(assignment)
    return sets, others


@app.command()
def continual(
    phases: Annotated[
        str, typer.Option(help="corpus of each phase: shakespeare, python or name=FILE; names may repeat")
    ] = "shakespeare,python,shakespeare",
    steps_per_phase: Annotated[int, typer.Option(help="training steps of each phase")] = 1000,
    plasticity_steps: Annotated[
        int, typer.Option(help="K: every corpus is measured K steps into each phase (plasticity)")
    ] = 100,
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
    from apoptosis.continual import continual_config, continual_tables, corpora_of, phases_table, run_continual

    if strategy is not None and methods is not None:
        raise ApoptosisError("give --strategy S (one method) or --compare A,B,... (several), not both")
    labels = [strategy] if strategy is not None else distinct_names(methods or "none,standard", "--compare")
    sets, other_sets = split_set_options(set_)
    if steps_per_phase < 1:
        raise ApoptosisError(f"--steps-per-phase must be >= 1, got {steps_per_phase}")
    if not 1 <= plasticity_steps <= steps_per_phase:
        raise ApoptosisError(f"--plasticity-steps must be in 1..{steps_per_phase} (--steps-per-phase)")
    base = build_config(config, "none", "", None, None, None, device, other_sets)
    base = continual_config(base, phases, steps_per_phase, plasticity_steps)
    name = name or f"{time.strftime('%Y%m%d-%H%M%S')}-continual"
    out_dir = runs_dir / name
    table, per_phase = run_continual(base, labels, seeds, sets["strategy"], sets["then"], out_dir, workers, console)
    title = f"{name}: {' -> '.join(phases.split(','))}, {steps_per_phase} steps per phase, seeds 1..{seeds}"
    console.print(phases_table(per_phase, name))
    for printed in continual_tables(table, corpora_of(base), title):
        console.print(printed)
    console.print(f"Folder: {out_dir} (continual.csv, phases.csv, continual_loss.png, plasticity.png, fresh/)")


@app.command()
def sample(
    run_dir: Annotated[Path, typer.Argument(help="a run folder, e.g. runs/NAME")],
    chars: Annotated[int, typer.Option(help="characters to generate")] = 500,
    prompt: Annotated[str, typer.Option(help="text to start from")] = "\n",
    temperature: Annotated[float, typer.Option(help="softmax temperature")] = 0.8,
    seed: Annotated[int, typer.Option(help="sampling seed")] = 0,
    device: Annotated[str, typer.Option(help="cpu or cuda")] = "cpu",
) -> None:
    """Generate text from a run's last checkpoint."""
    import torch

    from apoptosis.trainer import load_model

    if chars < 1:
        raise ApoptosisError(f"--chars must be >= 1, got {chars}")
    if temperature <= 0:
        raise ApoptosisError(f"--temperature must be > 0, got {temperature}")
    model, vocab, _ = load_model(run_dir, device)
    context = vocab.encode(prompt)[None, :].to(device)
    out = model.generate(context, chars, temperature=temperature, generator=torch.Generator().manual_seed(seed))
    print(vocab.decode(out[0].tolist()))


@app.command()
def bench(
    steps: Annotated[int, typer.Option(help="training steps per measured run")] = 300,
    repeats: Annotated[int, typer.Option(help="alternating runs per strategy")] = 3,
    strategy: Annotated[str, typer.Option(help="strategy measured against none")] = "standard",
    set_: SetOption = None,
) -> None:
    """Throughput of `none` against a strategy (same config, alternating runs) and the model's
    FLOP/s as a share of this machine's float32 matmul FLOP/s. Unless set, the strategy's
    interval is 100 and maturity 50, so a short bench includes events."""
    from apoptosis.bench import print_bench, run_bench

    if repeats < 1:
        raise ApoptosisError(f"--repeats must be >= 1, got {repeats}")
    config = build_config(None, strategy, None, steps, None, None, None, set_)
    result = run_bench(config, strategy=strategy, repeats=repeats, console=console)
    print_bench(result, console)


@app.command("fitness-check")
def fitness_check(
    run_dir: Annotated[Path, typer.Argument(help="a run folder, e.g. runs/NAME")],
    batches: Annotated[int, typer.Option(help="validation batches the true removal cost is measured on")] = 16,
    batch_size: Annotated[int, typer.Option(help="windows per batch")] = 32,
    score_batches: Annotated[int, typer.Option(help="training batches each metric's score is averaged over")] = 32,
    seed: Annotated[int, typer.Option(help="seed of the batches (and of random metrics)")] = 0,
    device: Annotated[str, typer.Option(help="cpu or cuda")] = "cpu",
    json_path: Annotated[Path | None, typer.Option("--json", help="also write the comparison to this file")] = None,
) -> None:
    """How well each fitness metric ranks neurons by the true cost of removing them (the val loss
    with the neuron alone masked, minus without), on a run's last checkpoint. Writes
    fitness_check.csv and fitness_check_neurons.csv into the run folder."""
    from apoptosis.fitness_check import NEURONS_CSV, SUMMARY_CSV, run_fitness_check

    result = run_fitness_check(run_dir, batches=batches, batch_size=batch_size, score_batches=score_batches, seed=seed,
                               device=device, json_path=json_path, console=console)  # fmt: skip
    console.print(result.table())
    console.print(f"Wrote {run_dir / SUMMARY_CSV} and {NEURONS_CSV}")


def main() -> None:
    try:
        app()
    except ApoptosisError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
