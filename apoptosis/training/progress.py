"""The progress bar of a run: what it shows, and the figures it shows from the run's totals."""

from __future__ import annotations

from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

from apoptosis.training.totals import RunTotals

PROGRESS_COLUMNS = (
    TextColumn("[bold]{task.description}"),
    BarColumn(bar_width=16),
    MofNCompleteColumn(),
    TextColumn("loss {task.fields[loss]}"),
    TextColumn("val {task.fields[val]}"),
    TextColumn("{task.fields[tps]} tok/s"),
    TextColumn("events {task.fields[events]}"),
    TimeRemainingColumn(),
)


def progress_fields(totals: RunTotals) -> dict[str, Any]:
    val = "-" if totals.last_val_loss is None else f"{totals.last_val_loss:.3f}"
    loss = "-" if totals.last_train_loss is None else f"{totals.last_train_loss:.3f}"
    return {"loss": loss, "val": val, "tps": f"{totals.tokens_per_s or 0.0:,.0f}", "events": totals.events}
