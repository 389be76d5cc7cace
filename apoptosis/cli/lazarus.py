"""The ``damage``, ``recover`` and ``lazarus-curve`` commands (Lazarus), added to the app they import
from ``apoptosis.cli.app`` (``compress`` and ``compress-table`` are in ``apoptosis.cli.compress``).

Each command writes one new folder and refuses to overwrite one, so a damaged, recovered or
compressed model can always be traced back to the run it came from.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from apoptosis.cli.app import app, console
from apoptosis.core.errors import ApoptosisError

DeviceOption = Annotated[str, typer.Option(help="cpu or cuda")]
OutOption = Annotated[Path | None, typer.Option(help="folder to write (must not exist)")]
SeedOption = Annotated[int, typer.Option(help="random seed")]
LossOption = Annotated[str, typer.Option(help="full, consistency, stability, entropy or noise (no recovery: control)")]
LrOption = Annotated[float, typer.Option(help="Adam learning rate of the recovery")]
BatchOption = Annotated[int | None, typer.Option(help="recovery sequences per step (default: the run's batch size)")]
SeqLenOption = Annotated[int | None, typer.Option(help="recovery sequence length (default: model.block_size)")]
QuietOption = Annotated[bool, typer.Option(help="no progress bar or tables")]


@app.command()
def damage(
    run_dir: Annotated[Path, typer.Argument(help="a finished run folder, e.g. runs/NAME")],
    noise: Annotated[float | None, typer.Option(help="Gaussian weight noise: W += ALPHA * std(W) * N(0,1)")] = None,
    prune: Annotated[float | None, typer.Option(help="zero this FRACTION of the blocks' linear weights")] = None,
    structured: Annotated[bool, typer.Option(help="with --prune: remove whole MLP neurons instead")] = False,
    seed: SeedOption = 0,
    out: OutOption = None,
    device: DeviceOption = "cpu",
) -> None:
    """Write a damaged copy of a run's model to RUN_DIR/damaged-<kind><amount>/ (the run is untouched)."""
    from apoptosis.lazarus.damage import DamageSpec, damage_run

    _check_device(device)
    if (noise is None) == (prune is None):
        raise ApoptosisError("give exactly one of --noise ALPHA or --prune FRACTION")
    spec = (
        DamageSpec("noise", noise, structured, seed)
        if noise is not None
        else DamageSpec("prune", prune, structured, seed)
    )
    folder, result = damage_run(run_dir, spec, out, device)
    what = (
        f"{len(result.tensors_changed)} tensors noised"
        if spec.kind == "noise"
        else f"{result.weights_pruned:,} weights pruned"
        + (f" ({sum(map(len, result.removed_neurons))} neurons)" if spec.structured else "")
    )
    console.print(f"Damaged model ({spec.label}, {what}): {folder}  (next: apoptosis recover {folder})")


@app.command()
def recover(
    damaged_dir: Annotated[
        Path, typer.Argument(help="a folder written by `apoptosis damage`, or a run folder holding exactly one")
    ],
    steps: Annotated[int, typer.Option(help="recovery steps")] = 200,
    mode: Annotated[str, typer.Option(help="frozen (pruned weights stay zero) or regrow")] = "frozen",
    loss: LossOption = "full",
    anchor: Annotated[
        str, typer.Option(help="original (the run before damage) or damaged (a frozen copy)")
    ] = "original",
    lr: LrOption = 1e-4,
    batch_size: BatchOption = None,
    seq_len: SeqLenOption = None,
    seed: SeedOption = 0,
    out: OutOption = None,
    device: DeviceOption = "cpu",
    quiet: QuietOption = False,
) -> None:
    """Recover a damaged model without training data; measure it against clean, damaged and
    temperature-scaled models on validation text; write DAMAGED_DIR/recovered-<anchor>-<loss>-<mode>-<steps>/."""
    from apoptosis.lazarus.damage import (
        checkpoint_dict,
        find_damaged,
        load_damaged,
        model_size,
        refuse_existing,
        write_folder,
    )
    from apoptosis.lazarus.recovery import RecoverySettings, compare_models, evaluation_batches, recover_copy
    from apoptosis.training import load_model

    _check_device(device)
    damaged_dir = find_damaged(damaged_dir)
    damaged = load_damaged(damaged_dir, device)
    settings = RecoverySettings(
        steps, mode, loss, anchor, lr, batch_size or damaged.config.trainer.batch_size, seq_len, seed=seed
    )
    settings.validate()
    out = out or damaged_dir / f"recovered-{anchor}-{loss}-{mode}-{steps}"
    refuse_existing(out)
    if not (damaged.run_dir / "checkpoints" / "last.pt").is_file():
        raise ApoptosisError(f"the original run of {damaged_dir} is not at {damaged.run_dir} any more")
    original, _, ckpt = load_model(damaged.run_dir, device)
    if ckpt["step"] != damaged.state.get("step", ckpt["step"]):
        raise ApoptosisError(
            f"{damaged.run_dir} is now at step {ckpt['step']} but {damaged_dir} was damaged at step "
            f"{damaged.state['step']}: damage the run again"
        )
    recovered, history = _with_progress(
        steps,
        quiet,
        lambda progress: recover_copy(
            original, damaged.model, settings, damaged.masks, damaged.damage.get("removed_neurons"), progress
        ),
    )
    figures = compare_models(
        original, damaged.model, recovered, *evaluation_batches(damaged.config, damaged.vocab, device)
    )
    masks = damaged.masks if mode == "frozen" else {}
    state = checkpoint_dict(
        recovered,
        damaged.vocab,
        damaged.state["config"],
        masks,
        damage=damaged.damage,
        recovery=settings.to_dict(),
        step=ckpt["step"],
    )
    summary = {
        "damage": damaged.damage,
        "settings": settings.to_dict(),
        **_json_safe(figures),
        "size": model_size(recovered),
        "history": history,
    }
    write_folder(out, damaged.run_dir, state, "recovery.json", summary)
    if not quiet:
        console.print(
            quality_table(figures, f"Lazarus recovery of {damaged_dir} ({settings.loss}, {mode}, anchor {anchor})")
        )
        console.print(f"Recovered model: {out}")


@app.command("lazarus-curve")
def lazarus_curve(
    run_dir: Annotated[Path, typer.Argument(help="a finished run folder, e.g. runs/NAME")],
    noise: Annotated[str, typer.Option(help='noise levels ALPHA, comma-separated ("" for none)')] = "0.1,0.2,0.3,0.35",
    prune: Annotated[str, typer.Option(help='pruned fractions, comma-separated ("" for none)')] = "0.3,0.5,0.7,0.8",
    structured: Annotated[bool, typer.Option(help="prune whole MLP neurons instead of single weights")] = False,
    modes: Annotated[str, typer.Option(help="frozen and/or regrow, comma-separated (pruning only)")] = "frozen,regrow",
    anchors: Annotated[str, typer.Option(help="original and/or damaged, comma-separated")] = "original,damaged",
    losses: Annotated[
        str, typer.Option(help="any of full, consistency, stability, entropy (no recovery is always included)")
    ] = "full,consistency,stability,entropy",
    seeds: Annotated[int, typer.Option(help="seeds 0..N-1 (noise draw and recovery inputs)")] = 3,
    steps: Annotated[int, typer.Option(help="recovery steps")] = 200,
    lr: LrOption = 1e-4,
    batch_size: BatchOption = None,
    seq_len: SeqLenOption = None,
    out: Annotated[
        Path | None, typer.Option(help="folder to write or to resume (default: RUN_DIR/lazarus-curve)")
    ] = None,
    device: DeviceOption = "cpu",
    quiet: QuietOption = False,
) -> None:
    """Sweep damage levels x anchors x modes x losses x seeds, with the no-recovery and temperature
    controls: curve.csv (resumable), curve.json, recovery.png, val_loss.png and a table."""
    from apoptosis.lazarus.curve_runner import sweep

    _check_device(device)
    sweep(
        run_dir,
        noise=noise,
        prune=prune,
        modes=modes,
        anchors=anchors,
        losses=losses,
        structured=structured,
        seeds=seeds,
        steps=steps,
        lr=lr,
        batch_size=batch_size,
        seq_len=seq_len,
        out=out,
        device=device,
        console=console,
        quiet=quiet,
    )


# --- helpers ----------------------------------------------------------------------------------


def _check_device(device: str) -> None:
    import torch

    if re.fullmatch(r"cpu|cuda(:\d+)?", device) is None:
        raise ApoptosisError(f"--device must be cpu, cuda or cuda:N, got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ApoptosisError("--device is cuda but this machine has no CUDA GPU: use --device cpu")


def _with_progress(steps: int, quiet: bool, run: Callable[[Any], Any]) -> Any:
    """Call ``run(progress)`` under a rich progress bar fed by the recovery's per-step callback."""
    columns = [
        TextColumn("[bold]recovering"),
        BarColumn(bar_width=16),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=console, disable=quiet, transient=False) as bar:
        task = bar.add_task("recover", total=steps, loss="-")
        result = run(lambda step, parts: bar.update(task, completed=step, loss=f"{parts['total']:.4f}"))
        bar.update(task, completed=steps)
    return result


def _json_safe(obj: Any) -> Any:
    """NaN (undefined recovery) becomes null, so the JSON files stay standard JSON."""
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, float) and math.isnan(obj):
        return None
    return obj


def _percent(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.1f}%"


def quality_table(figures: dict[str, Any], title: str, damaged: str = "damaged", recovered: str = "recovered") -> Table:
    """Clean, damaged, temperature-scaled and recovered: loss, accuracy, agreement and recovery."""
    models, rec = figures["models"], figures["recovery"]
    table = Table(
        title=title,
        title_justify="left",
        caption="rec. = (damaged - model) / (damaged - clean)",
        caption_justify="left",
    )
    for column in ("model", "val loss", "accuracy", "agreement", "loss rec.", "acc. rec."):
        table.add_column(column, justify="left" if column == "model" else "right")
    temperature = models["temperature_scaled"]["temperature"]
    rows = [
        ("clean", "clean", "-", "-"),
        (damaged, "damaged", "-", "-"),
        (f"{damaged} T={temperature:.2f}", "temperature_scaled", "temperature_scaled_loss", "-"),
        (recovered, "recovered", "recovered_loss", "recovered_accuracy"),
    ]
    for label, key, loss_key, acc_key in rows:
        m = models[key]
        table.add_row(
            label,
            f"{m['loss']:.4f}",
            f"{100 * m['accuracy']:.2f}%",
            f"{100 * m['agreement']:.2f}%",
            "-" if loss_key == "-" else _percent(rec[loss_key]),
            "-" if acc_key == "-" else _percent(rec[acc_key]),
        )
    return table
