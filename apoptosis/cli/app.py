"""The one typer app of the ``apoptosis`` command, and what its commands share: the console, the
``--set`` option and the config built from options. Every command module registers itself here
(see ``apoptosis.cli.main``); every user error is one line on stderr and exit code 2."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from apoptosis.core.config import RunConfig, StrategyConfig, parse_set_option
from apoptosis.core.errors import ApoptosisError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Neuron-level evolution inside a char-level transformer.",
)
console = Console(log_path=False)


@dataclass
class DeferredFigures:
    """Run folders whose figures the ``apoptosis`` entry point draws once the command is done, in a
    fresh process that replaces this one: the figure libraries (~130 MB) then never share memory
    with the trained model. ``run_dirs`` is a list only in the installed command (``main.entry``);
    None where a command is invoked otherwise (tests call ``main.main`` or the app): figures are
    then drawn in-process."""

    run_dirs: list[Path] | None = None


deferred_figures = DeferredFigures()

SetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set", help="override a setting: section.key=value (e.g. model.n_layer=2, strategy.prune_rate=0.05)"
    ),
]
CompileOption = Annotated[
    bool, typer.Option("--compile", help="torch.compile the training step (trainer.compile; see apoptosis bench)")
]


def with_compile(sets: list[str] | None, compile_: bool) -> list[str] | None:
    """``--compile`` is ``--set trainer.compile=true``, recorded in every run's config."""
    return [*(sets or []), "trainer.compile=true"] if compile_ else sets


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
    from apoptosis.core.data import DEFAULT_CORPUS
    from apoptosis.core.registry import FITNESS_METRICS
    from apoptosis.core.strategy import build_strategy

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


def default_name(kind: str) -> str:
    """A folder name from the time, for commands run without --name."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{kind}"
