"""``apoptosis search ...``: Optuna studies, Taguchi arrays, and the two side by side."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from apoptosis.cli.app import (
    CompileOption,
    app,
    build_config,
    console,
    default_name,
    distinct_names,
    split_set_options,
    with_compile,
)
from apoptosis.core.errors import ApoptosisError

search_app = typer.Typer(
    no_args_is_help=True,
    help="Search strategy parameters: Optuna studies and Taguchi orthogonal arrays (one machine or many).",
)
app.add_typer(search_app, name="search")

Study = Annotated[str, typer.Option("--study", help="study name; its folder is RUNS_DIR/NAME")]
Steps = Annotated[int, typer.Option(help="training steps per run")]
Seeds = Annotated[int, typer.Option(help="seeds 1..K per trial (the objective is their mean)")]
Storage = Annotated[
    str | None,
    typer.Option(help="database URL shared by several machines (default: a journal file in the study folder)"),
]
Workers = Annotated[int, typer.Option(help="worker processes on this machine (0: only create and queue the study)")]
ObjectiveOpt = Annotated[
    str, typer.Option("--objective", help="train (real runs) or synthetic (analytic, known optimum)")
]
OptunaObjectiveOpt = Annotated[
    str,
    typer.Option(
        "--objective",
        help="train (real runs), plasticity (the plasticity benchmark's excess loss over its last tasks) "
        "or synthetic (analytic, known optimum)",
    ),
]
SyntheticSeconds = Annotated[float, typer.Option(help="synthetic objective: seconds each trial takes")]
Heartbeat = Annotated[int, typer.Option(help="database storages: seconds between worker heartbeats")]
RunsDir = Annotated[Path, typer.Option(help="folder holding run and study folders")]
Data = Annotated[str | None, typer.Option(help="UTF-8 text file (default: Shakespeare's plays)")]
Device = Annotated[str | None, typer.Option(help="cpu or cuda")]
ConfigFile = Annotated[Path | None, typer.Option(help="TOML config file for every run")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="fixed setting for every run, section.key=value (strategy.X=v fixes X, unsearched)"),
]


def _check_objective(objective: str, allowed: tuple[str, ...] = ("train", "synthetic")) -> None:
    if objective not in allowed:
        raise ApoptosisError(f"--objective must be one of {', '.join(allowed)}, got {objective!r}")


def _check_counts(steps: int, seeds: int) -> None:
    if steps < 1:
        raise ApoptosisError(f"--steps must be >= 1, got {steps}")
    if seeds < 1:
        raise ApoptosisError(f"--seeds must be >= 1, got {seeds}")


@search_app.command("optuna")
def optuna_command(
    study: Study,
    strategies: Annotated[
        str, typer.Option(help="comma-separated strategies; several make the strategy a factor")
    ] = "standard",
    params: Annotated[
        str, typer.Option(help="search only these strategy parameters, e.g. replacement_rate (default: all)")
    ] = "",
    tune: Annotated[str, typer.Option(help="also tune these settings, e.g. trainer.lr,trainer.weight_decay")] = "",
    factors: Annotated[
        Path | None, typer.Option(help="search the ranges spanned by a factors file's levels instead")
    ] = None,
    trials: Annotated[int, typer.Option(help="trials in the whole study (all workers and machines)")] = 20,
    steps: Annotated[int, typer.Option(help="training steps per run (plasticity objective: per task)")] = 600,
    tasks: Annotated[int, typer.Option(help="plasticity objective: tasks in sequence per run")] = 20,
    seeds: Seeds = 1,
    sampler: Annotated[
        str, typer.Option(help="tpe, random, cmaes, gp, qmc or grid (one parameter, --trials even points)")
    ] = "tpe",
    sampler_seed: Annotated[int, typer.Option(help="seed of the sampler (worker i uses seed + i)")] = 0,
    pruner: Annotated[str, typer.Option(help="median, hyperband or none")] = "median",
    storage: Storage = None,
    workers: Workers = 1,
    objective: OptunaObjectiveOpt = "train",
    synthetic_seconds: SyntheticSeconds = 0.0,
    heartbeat: Heartbeat = 60,
    runs_dir: RunsDir = Path("runs"),
    data: Data = None,
    device: Device = None,
    config: ConfigFile = None,
    set_: SetOpt = None,
    compile_: CompileOption = False,
) -> None:
    """An Optuna study over strategy parameters (ranges from each strategy's declaration).
    Re-running the same command resumes it; the same command on other machines with the same
    --storage URL joins it. With --objective plasticity each run is a cell of the plasticity
    benchmark at its defaults (--tasks tasks of --steps steps, on tasks no benchmark seed uses)."""
    from apoptosis.search.algorithms import PRUNERS, SAMPLERS
    from apoptosis.search.objective import SyntheticObjective
    from apoptosis.search.optuna_search import run_optuna
    from apoptosis.search.space import Factors, SearchSpace
    from apoptosis.search.study import StudySpec

    _check_objective(objective, ("train", "plasticity", "synthetic"))
    _check_counts(steps, seeds)
    if sampler not in SAMPLERS:
        raise ApoptosisError(f"--sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    if pruner not in PRUNERS:
        raise ApoptosisError(f"--pruner must be one of {', '.join(PRUNERS)}, got {pruner!r}")
    names = distinct_names(strategies, "--strategies", required=False)
    sets, other_sets = split_set_options(with_compile(set_, compile_), sections=("strategy",))
    benchmark = None
    if objective == "plasticity":
        benchmark = _plasticity_settings(names, tasks, steps, seeds, device, other_sets, config, data, factors)
        base = benchmark.base_config()
    else:
        base = build_config(config, names[0] if names else None, None, steps, None, data, device, other_sets)
    if factors is not None:
        factor_file = Factors.from_toml_file(factors)
        base = factor_file.base_config(base)
        space = SearchSpace.from_levels(factor_file.levels, base)
    else:
        only = distinct_names(params, "--params", required=False) or None
        space = SearchSpace.from_registry(names, distinct_names(tune, "--tune", required=False), sets["strategy"], only)
    spec = StudySpec(
        name=study,
        study_dir=runs_dir / study,
        kind="optuna",
        objective=objective,
        base=base,
        steps=steps,
        seeds=list(range(1, seeds + 1)),
        space=space,
        storage=storage,
        sampler=sampler,
        sampler_seed=sampler_seed,
        pruner=pruner,
        synthetic=SyntheticObjective(seconds=synthetic_seconds),
        plasticity=benchmark,
        heartbeat_s=heartbeat,
    )
    started = time.perf_counter()
    run_optuna(spec, trials, workers, console)
    console.print(f"wall time {time.perf_counter() - started:.1f} s")


def _plasticity_settings(
    strategies: list[str],
    tasks: int,
    steps: int,
    seeds: int,
    device: str | None,
    sets: list[str],
    config: Path | None,
    data: str | None,
    factors: Path | None,
):
    """The plasticity benchmark at its defaults for the searched strategies; options that only
    make sense for training on a corpus are refused, not ignored."""
    from apoptosis.plasticity.benchmark import Settings

    for option, value in (("--config", config), ("--data", data), ("--factors", factors)):
        if value is not None:
            raise ApoptosisError(f"{option} does not apply to --objective plasticity (its tasks are generated)")
    settings = Settings(methods=tuple(strategies or ["standard"]), tasks=tasks, steps_per_task=steps,
                        seeds=seeds, probe_every=0, device=device or "cpu", sets=tuple(sets))  # fmt: skip
    settings.validate()
    return settings


@search_app.command("taguchi")
def taguchi_command(
    study: Study,
    factors: Annotated[Path, typer.Option(help="TOML file: [factors] levels per setting, optional [base]")],
    array: Annotated[
        str | None, typer.Option(help="orthogonal array, e.g. L9 (default: the smallest that fits)")
    ] = None,
    steps: Steps = 600,
    seeds: Annotated[int, typer.Option(help="seeds 1..K per row: the noise replicates of the S/N ratio")] = 2,
    confirm: Annotated[bool, typer.Option(help="run the predicted optimum once more to confirm it")] = True,
    storage: Storage = None,
    workers: Workers = 1,
    objective: ObjectiveOpt = "train",
    synthetic_seconds: SyntheticSeconds = 0.0,
    heartbeat: Heartbeat = 60,
    runs_dir: RunsDir = Path("runs"),
    data: Data = None,
    device: Device = None,
    config: ConfigFile = None,
    set_: SetOpt = None,
    compile_: CompileOption = False,
) -> None:
    """Every row of an orthogonal array (seeds as noise replicates), then S/N, response table,
    ANOVA with % contribution, the predicted optimum with its interval and a confirmation run."""
    from apoptosis.search.objective import SyntheticObjective
    from apoptosis.search.space import Factors, LevelSpace
    from apoptosis.search.study import StudySpec
    from apoptosis.search.taguchi import run_taguchi

    _check_objective(objective)
    _check_counts(steps, seeds)
    factor_file = Factors.from_toml_file(factors)
    sets = with_compile(set_, compile_)
    base = factor_file.base_config(build_config(config, None, None, steps, None, data, device, sets))
    spec = StudySpec(
        name=study,
        study_dir=runs_dir / study,
        kind="taguchi",
        objective=objective,
        base=base,
        steps=steps,
        seeds=list(range(1, seeds + 1)),
        space=LevelSpace(factor_file.levels),
        storage=storage,
        synthetic=SyntheticObjective(seconds=synthetic_seconds),
        heartbeat_s=heartbeat,
    )
    started = time.perf_counter()
    run_taguchi(spec, array, workers, console, confirm=confirm)
    console.print(f"wall time {time.perf_counter() - started:.1f} s")


@search_app.command("compare")
def compare_command(
    factors: Annotated[Path, typer.Option(help="TOML factors file: Taguchi's levels, and the ranges Optuna searches")],
    name: Annotated[str | None, typer.Option(help="comparison folder name (default: time)")] = None,
    array: Annotated[str | None, typer.Option(help="orthogonal array (default: the smallest that fits)")] = None,
    trials: Annotated[
        int | None, typer.Option(help="trials for TPE and random (default: the array's rows + 1)")
    ] = None,
    repeats: Annotated[int, typer.Option(help="independent repeats (sampler seeds and noise seeds)")] = 3,
    steps: Steps = 600,
    seeds: Seeds = 1,
    objective: ObjectiveOpt = "synthetic",
    runs_dir: RunsDir = Path("runs"),
    data: Data = None,
    device: Device = None,
    config: ConfigFile = None,
    set_: SetOpt = None,
    compile_: CompileOption = False,
) -> None:
    """Taguchi (one array + confirmation) against Optuna TPE and random search with the same
    number of trials, on the same objective and seeds: best value found, value re-measured on
    fresh seeds (and the true value on the synthetic objective), wall time."""
    from apoptosis.search.compare import compare_searches, compare_table
    from apoptosis.search.space import Factors

    _check_objective(objective)
    _check_counts(steps, seeds)
    factor_file = Factors.from_toml_file(factors)
    sets = with_compile(set_, compile_)
    base = factor_file.base_config(build_config(config, None, None, steps, None, data, device, sets))
    name = name or default_name("search-compare")
    out_dir = runs_dir / name
    frame = compare_searches(factor_file, base, objective, steps, seeds, array, trials, repeats, out_dir, console)
    title = f"{name}: {objective} objective, {repeats} repeats, {seeds} seed(s) per trial (mean ± sd over repeats)"
    console.print(compare_table(frame, title))
    console.print(f"Comparison folder: {out_dir} (search_compare.csv, one study folder per method and repeat)")
