"""The ``compress`` and ``compress-table`` commands: a run's model pruned by the field's methods
(magnitude, Wanda, SparseGPT) or by our neuron fitness, recovered without data (Lazarus) or with it
(fine-tuning), and measured in bits per character, size and speed against the dense model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from apoptosis.cli.app import app, console
from apoptosis.cli.lazarus import (
    BatchOption,
    DeviceOption,
    LossOption,
    LrOption,
    OutOption,
    QuietOption,
    SeedOption,
    SeqLenOption,
    _check_device,
    quality_table,
)
from apoptosis.core.errors import ApoptosisError

MethodOption = Annotated[str, typer.Option(help="magnitude, wanda, sparsegpt or fitness (neurons only)")]
CalibrationOption = Annotated[
    int, typer.Option(help="calibration sequences from the training text (wanda, sparsegpt, fitness)")
]


@app.command()
def compress(
    run_dir: Annotated[Path, typer.Argument(help="a finished run folder, e.g. runs/NAME")],
    prune: Annotated[
        float | None, typer.Option(help="share of weights (or of each layer's neurons) to remove; 2:4: 0.5")
    ] = None,
    method: MethodOption = "magnitude",
    pattern: Annotated[
        str | None, typer.Option(help="unstructured, 2:4 or neurons (whole MLP neurons: a smaller model)")
    ] = None,
    structured: Annotated[bool, typer.Option(help="the same as --pattern neurons")] = False,
    recover: Annotated[str, typer.Option(help="none, lazarus (data-free) or finetune (training text)")] = "lazarus",
    recover_steps: Annotated[int, typer.Option(help="recovery steps (lazarus and finetune alike)")] = 200,
    calibration: CalibrationOption = 128,
    anchor: Annotated[str, typer.Option(help="lazarus: original (distil from the unpruned run) or damaged")] = (
        "original"
    ),
    loss: LossOption = "full",
    lr: LrOption = 1e-4,
    batch_size: BatchOption = None,
    seq_len: SeqLenOption = None,
    seed: SeedOption = 0,
    out: OutOption = None,
    device: DeviceOption = "cpu",
    quiet: QuietOption = False,
) -> None:
    """Prune a run's model, recover it, and write it as a new run folder (default
    RUN_DIR/compressed-<label>/) with compress.json: bits per character, parameters, file size and
    inference speed against the dense model. The run itself is only read."""
    from apoptosis.core.config import RunConfig
    from apoptosis.core.io import read_torch_file
    from apoptosis.lazarus.compress import CompressSpec, compress_run
    from apoptosis.lazarus.recovery import RecoverySettings
    from apoptosis.lazarus.speed import NO_SPEEDUP_NOTE
    from apoptosis.training import CHECKPOINT

    _check_device(device)
    if structured and pattern not in (None, "neurons"):
        raise ApoptosisError(f"--structured is --pattern neurons, but --pattern is {pattern!r}: give one of them")
    pattern = "neurons" if structured else pattern or "unstructured"
    if prune is None:
        if pattern != "2:4":
            raise ApoptosisError("--prune FRACTION is needed (only --pattern 2:4 implies 0.5)")
        prune = 0.5
    spec = CompressSpec(method, pattern, prune, recover, calibration, seed)
    spec.validate()
    if not (run_dir / CHECKPOINT).is_file():
        raise ApoptosisError(f"no checkpoint at {run_dir / CHECKPOINT}: is {run_dir} a run folder?")
    config = RunConfig.from_dict(read_torch_file(run_dir / CHECKPOINT, keys=("config",))["config"])
    settings = RecoverySettings(
        recover_steps, "frozen", loss, anchor, lr, batch_size or config.trainer.batch_size, seq_len, seed=seed
    )
    with _progress(quiet) as report:
        folder, summary = compress_run(run_dir, spec, settings, out, device, report)
    if not quiet:
        title = f"Compression of {run_dir} ({spec.method}, {spec.pattern}, {spec.prune:g}, recovery {spec.recover})"
        console.print(quality_table(summary, title, "pruned", "compressed"))
        console.print(result_table(summary["result"]))
        console.print(size_table(summary["size"]))
        console.print(NO_SPEEDUP_NOTE)
        console.print(f"Compressed model: {folder}  (a run folder: apoptosis sample {folder})")


@app.command("compress-table")
def compress_table(
    run_dir: Annotated[Path, typer.Argument(help="a finished run folder, e.g. runs/NAME")],
    methods: Annotated[str, typer.Option(help="comma-separated")] = "magnitude,wanda,sparsegpt,fitness",
    sparsities: Annotated[str, typer.Option(help="comma-separated, each in (0, 1); 2:4 runs at 0.5")] = "0.3,0.5,0.7",
    patterns: Annotated[str, typer.Option(help="comma-separated")] = "unstructured,2:4,neurons",
    recoveries: Annotated[str, typer.Option(help="comma-separated")] = "none,lazarus,finetune",
    seeds: Annotated[int, typer.Option(help="seeds 0..N-1 (calibration windows and recovery inputs)")] = 3,
    steps: Annotated[int, typer.Option(help="recovery steps (lazarus and finetune alike)")] = 200,
    calibration: CalibrationOption = 128,
    lr: LrOption = 1e-4,
    batch_size: BatchOption = None,
    seq_len: SeqLenOption = None,
    workers: Annotated[int, typer.Option(help="pruned models in parallel processes")] = 1,
    out: Annotated[
        Path | None, typer.Option(help="folder to write or to resume (default: RUN_DIR/compress-table)")
    ] = None,
    device: DeviceOption = "cpu",
    quiet: QuietOption = False,
) -> None:
    """Methods x sparsities x patterns x recoveries x seeds on one run: cells.csv (resumable: the
    same command again skips finished cells), table.csv and a table of bits per character, size
    and speed against the dense model."""
    from apoptosis.core.config import RunConfig
    from apoptosis.core.io import read_torch_file
    from apoptosis.lazarus.compress_table import TableSettings
    from apoptosis.lazarus.compress_table import compress_table as run
    from apoptosis.training import CHECKPOINT

    _check_device(device)
    rest: dict[str, Any] = {"seeds": seeds, "steps": steps, "calibration": calibration, "lr": lr, "seq_len": seq_len}
    TableSettings.from_options(methods, sparsities, patterns, recoveries, **rest)  # fail before loading anything
    if not (run_dir / CHECKPOINT).is_file():
        raise ApoptosisError(f"no checkpoint at {run_dir / CHECKPOINT}: is {run_dir} a run folder?")
    config = RunConfig.from_dict(read_torch_file(run_dir / CHECKPOINT, keys=("config",))["config"])
    rest["batch_size"] = batch_size or config.trainer.batch_size
    settings = TableSettings.from_options(methods, sparsities, patterns, recoveries, **rest)
    run(run_dir, settings, out, workers, device, console, quiet)


# --- output -------------------------------------------------------------------------------------


class _progress:
    """A rich progress bar fed by ``compress_run``'s ``(what, done, total)`` reports: one task per stage."""

    def __init__(self, quiet: bool) -> None:
        columns = [TextColumn("[bold]{task.description}"), BarColumn(bar_width=16), MofNCompleteColumn(),
                   TimeRemainingColumn()]  # fmt: skip
        self.bar = Progress(*columns, console=console, disable=quiet)
        self.tasks: dict[str, Any] = {}

    def __enter__(self):  # noqa: ANN204
        self.bar.__enter__()
        return self.report

    def __exit__(self, *exc: object) -> None:
        self.bar.__exit__(*exc)

    def report(self, what: str, done: int, total: int) -> None:
        if what not in self.tasks:
            self.tasks[what] = self.bar.add_task(what, total=total)
        self.bar.update(self.tasks[what], completed=done)


def result_table(row: dict[str, Any]) -> Table:
    """Bits per character, kept parameters, bytes and speed: dense against compressed."""
    table = Table(title="Result (bits per character = val loss / ln 2)", title_justify="left")
    for column in ("model", "bpc", "parameters", "nonzero", "file bytes", "tokens/s"):
        table.add_column(column, justify="left" if column == "model" else "right")
    table.add_row("dense", f"{row['dense_bpc']:.4f}", f"{row['dense_parameters']:,}", f"{row['dense_parameters']:,}",
                  f"{row['dense_bytes']:,}", f"{row['dense_tokens_per_s']:,.0f}")  # fmt: skip
    table.add_row("pruned", f"{row['pruned_bpc']:.4f}", "", "", "", "")
    table.add_row(
        "compressed", f"{row['bpc']:.4f}", f"{row['parameters']:,}",
        f"{row['nonzero_parameters']:,} ({100 * row['kept']:.1f}%)", f"{row['model_bytes']:,}",
        f"{row['tokens_per_s']:,.0f} ({row['speedup']:.2f}x)",
    )  # fmt: skip
    return table


def size_table(sizes: dict[str, dict[str, int | float]]) -> Table:
    table = Table(title="Size (bitmap-sparse: nonzero float32 values + 1 bit per entry)", title_justify="left")
    for column in ("model", "parameters", "nonzero", "dense bytes", "sparse bytes", "compression"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for name, s in sizes.items():
        table.add_row(
            name,
            f"{s['parameters']:,}",
            f"{s['nonzero_parameters']:,}",
            f"{s['dense_bytes']:,}",
            f"{s['sparse_bytes']:,}",
            f"{s['compression']:.2f}x",
        )
    return table
