"""``apoptosis bench`` (throughput), ``apoptosis bench-corpus`` (what a large corpus costs in memory and
start-up) and ``apoptosis fitness-check`` (does fitness predict the cost of removal?)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from apoptosis.cli.app import SetOption, app, build_config, console
from apoptosis.core.errors import ApoptosisError
from apoptosis.core.io import atomic_write_json


@app.command()
def bench(
    rounds: Annotated[int, typer.Option(help="measured rounds; each advances every run by --segment steps")] = 8,
    segment: Annotated[int, typer.Option(help="steps each run trains per round")] = 100,
    strategy: Annotated[str, typer.Option(help="strategy measured against none")] = "standard",
    set_: SetOption = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="also write the figures to this file")] = None,
) -> None:
    """Throughput of `none` against a strategy, eager and compiled (same config; the four runs train
    in turn, --segment steps at a time, so a noisy machine's drift hits them alike), what a growth
    costs a compiled run, sampling speed, peak memory, and the model's FLOP/s as a share of this
    machine's float32 matmul FLOP/s. Unless set, the strategy's interval is 100 and maturity 50,
    so a short bench includes events."""
    from apoptosis.analysis.bench import print_bench, run_bench

    if rounds < 1 or segment < 1:
        raise ApoptosisError(f"--rounds and --segment must be >= 1, got {rounds} and {segment}")
    if strategy == "none":
        raise ApoptosisError("--strategy must name a strategy other than none, which it is measured against")
    config = build_config(None, strategy, None, None, None, None, None, set_)
    result = run_bench(config, strategy=strategy, rounds=rounds, segment=segment, console=console)
    print_bench(result, console)
    if json_path is not None:
        atomic_write_json(json_path, result)
        console.print(f"figures written to {json_path}")


@app.command("bench-corpus")
def bench_corpus(
    size_mb: Annotated[float, typer.Option(help="size of the generated text corpus, in MB")] = 50.0,
    steps: Annotated[int, typer.Option(help="training steps per run")] = 5,
) -> None:
    """Peak memory and start-up time of `apoptosis train` on a generated corpus of --size-mb MB: a
    run that encodes it into an empty cache, a second run that maps the cached ids, against a run
    on a tiny corpus. Each run is its own process; everything lives in a temporary folder."""
    from apoptosis.analysis.corpus_bench import print_corpus_bench, run_corpus_bench

    if size_mb <= 0 or steps < 1:
        raise ApoptosisError(f"--size-mb must be > 0 and --steps >= 1, got {size_mb} and {steps}")
    print_corpus_bench(run_corpus_bench(size_mb, steps, console), console)


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
    from apoptosis.analysis.fitness_check import NEURONS_CSV, SUMMARY_CSV, run_fitness_check

    result = run_fitness_check(run_dir, batches=batches, batch_size=batch_size, score_batches=score_batches, seed=seed,
                               device=device, json_path=json_path, console=console)  # fmt: skip
    console.print(result.table())
    console.print(f"Wrote {run_dir / SUMMARY_CSV} and {NEURONS_CSV}")
