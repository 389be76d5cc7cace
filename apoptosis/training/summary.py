"""summary.json: what a finished run reports (each key is described in runs/README.md)."""

from __future__ import annotations

import csv
import platform
from pathlib import Path
from typing import Any

import numpy as np

from apoptosis.core.config import RunConfig
from apoptosis.core.data import CharDataset
from apoptosis.core.lineage import Lineage
from apoptosis.core.model import GPT
from apoptosis.training.evaluation import Evaluator
from apoptosis.training.totals import RunTotals


def run_summary(
    config: RunConfig,
    step: int,
    run_dir: Path,
    model: GPT,
    lineage: Lineage,
    totals: RunTotals,
    evaluator: Evaluator,
    corpora: dict[str, CharDataset],
    phase_corpora: list[str],
    corpus: str,
) -> dict[str, Any]:
    """The run's figures at ``step``; ``corpus`` is the one being trained (the last phase's)."""
    train_loss, val_loss = evaluator.train_val(corpus)
    tail_steps, tail_losses = logged_losses(run_dir, after=0.8 * config.trainer.steps)
    disruptions, surgery = totals.disruptions, totals.surgery_disruptions
    summary = {
        "strategy": config.strategy_label,
        "steps": step,
        "final_train_loss": train_loss,
        "final_val_loss": val_loss,
        "unigram_val_loss": corpora[corpus].unigram_loss(),
        "train_loss_detrended_variance": detrended_variance(tail_steps, tail_losses),
        "tokens_per_s": totals.tokens_per_s,
        "events": totals.events,
        "neurons_replaced": totals.neurons_replaced,
        "neurons_born": totals.neurons_born,
        "mean_event_disruption": float(np.mean(disruptions)) if disruptions else None,
        "mean_abs_event_disruption": float(np.mean(np.abs(disruptions))) if disruptions else None,
        "mean_surgery_disruption": float(np.mean(surgery)) if surgery else None,
        "age_diversity": lineage.age_diversity(step),
        "founders_share": lineage.founders_share(),
        "max_generation": lineage.max_generation(),
        "neurons": sum(model.mlp_widths()),
        "parameters": model.num_params(),
    }
    if config.continual.phases:
        summary |= {
            "phases": phase_corpora,
            "steps_per_phase": config.continual.steps_per_phase,
            "corpus_chars": {name: len(data.train) + len(data.val) for name, data in corpora.items()},
            "python_version": platform.python_version(),  # the `python` corpus is this version's library
            **{f"final_val_{name}": loss for name, loss in evaluator.val_losses().items()},
        }
    return summary


def logged_losses(run_dir: Path, after: float) -> tuple[list[int], list[float]]:
    """Steps and training losses of the metrics rows after step ``after``, read without pandas
    (the process that trained writes its summary and should not load pandas for it: memory)."""
    with open(Path(run_dir) / "metrics.csv", encoding="utf-8", newline="") as f:
        rows = [row for row in csv.DictReader(f) if int(row["step"]) > after and row["train_loss"]]
    return [int(row["step"]) for row in rows], [float(row["train_loss"]) for row in rows]


def detrended_variance(steps, losses) -> float | None:
    """Variance of the logged training losses around their least-squares line: how much the loss
    jumps about (events, noise) with its downward trend taken out. None for fewer than 3 rows."""
    if len(losses) < 3:
        return None
    x, y = np.asarray(steps, dtype=float), np.asarray(losses, dtype=float)
    slope, intercept = np.polyfit(x, y, 1)
    return float(np.var(y - (slope * x + intercept)))
