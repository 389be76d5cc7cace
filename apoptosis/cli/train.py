"""``apoptosis train`` and ``apoptosis sample``: make a run, read text out of it."""

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
    deferred_figures,
    with_compile,
)
from apoptosis.core.config import RunConfig
from apoptosis.core.errors import ApoptosisError


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
    tensorboard: Annotated[
        bool, typer.Option(help="also write TensorBoard logs to RUN/tensorboard/ (pip install tensorboard)")
    ] = False,
    compile_: CompileOption = False,
) -> None:
    """Train the char-level transformer with an apoptosis strategy; write runs/NAME/."""
    from apoptosis.analysis.report import print_ages, summary_table
    from apoptosis.training import Trainer

    if tensorboard:  # the same as --set trainer.tensorboard=true
        set_ = [*(set_ or []), "trainer.tensorboard=true"]
    set_ = with_compile(set_, compile_)
    if resume:
        if name is None:
            raise ApoptosisError("--resume needs --name RUN (the run folder to continue)")
        saved = runs_dir / name / "config.toml"
        if not saved.exists():
            raise ApoptosisError(f"nothing to resume: {saved} does not exist")
        if any(v is not None for v in (strategy, then, steps, seed, data, device, config, set_)):
            refuse_changes(saved, build_config(config or saved, strategy, then, steps, seed, data, device, set_))
        run_config = RunConfig()
    else:
        run_config = build_config(config, strategy, then, steps, seed, data, device, set_)
        name = name or default_name(run_config.strategy_label)
    run_dir = runs_dir / name
    later = deferred_figures.run_dirs
    trainer = Trainer(
        run_config, run_dir, resume=resume, console=console, show_progress=not quiet, draw_figures=later is None
    )
    summary = trainer.fit()
    if later is not None and trainer.config.trainer.plots:
        later.append(run_dir)
    if not quiet:
        console.print(summary_table(summary, f"Run {name}"))
        print_ages(run_dir, console, trainer.lineage, trainer.step)
        console.print(f"Run folder: {run_dir}  (sample text: apoptosis sample {run_dir})")


def refuse_changes(saved_path: Path, asked: RunConfig) -> None:
    """``--resume`` continues a run with its saved config: options that repeat it are fine, a real
    change is an error naming the setting, its saved value and the new one."""
    from apoptosis.analysis.compare import flat_settings

    saved, new = flat_settings(RunConfig.from_toml_file(saved_path)), flat_settings(asked)
    for key in sorted(set(saved) | set(new)):
        if saved.get(key) != new.get(key):
            raise ApoptosisError(
                f"--resume continues a run with its saved config, but {key} would change from "
                f"{saved.get(key)!r} to {new.get(key)!r}: drop that option, or start a new run with another --name"
            )


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

    from apoptosis.training import load_model

    if chars < 1:
        raise ApoptosisError(f"--chars must be >= 1, got {chars}")
    if temperature <= 0:
        raise ApoptosisError(f"--temperature must be > 0, got {temperature}")
    model, vocab, _ = load_model(run_dir, device)
    context = vocab.encode(prompt)[None, :].to(device)
    out = model.generate(context, chars, temperature=temperature, generator=torch.Generator().manual_seed(seed))
    print(vocab.decode(out[0].tolist()))
