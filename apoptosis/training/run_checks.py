"""Warnings about a run that is not doing what its user expects: settings under which no event
can happen, and a model worse than one with no context at all. One line each on stderr."""

from __future__ import annotations

import math

from rich.console import Console

from apoptosis.core.config import RunConfig


def warn(message: str) -> None:
    """One line on stderr, shown even with --quiet."""
    Console(stderr=True, log_path=False).print(f"warning: {message}", highlight=False, soft_wrap=True)


def why_no_events(config: RunConfig) -> str | None:
    """Why the strategy's settings allow no event within the run's steps (None if they do): an
    ``interval`` not below the steps, or a ``maturity`` no neuron reaches before the last step."""
    params, steps = config.strategy.params, config.trainer.steps
    interval, maturity = params.get("interval"), params.get("maturity", 0)
    if not isinstance(interval, int) or interval < 1:
        return None
    if interval >= steps:
        return f"strategy.interval ({interval}) is not below trainer.steps ({steps})"
    first = max(interval, math.ceil(maturity / interval) * interval)  # the first event step with mature neurons
    if first >= steps:
        return f"no neuron is strategy.maturity ({maturity}) steps old at an event step before trainer.steps ({steps})"
    return None


def not_learning(step: int, val_loss: float, unigram_loss: float, warmup_steps: int) -> str | None:
    """The warning for a model that, after warm-up, is worse than the no-context (unigram) model:
    a finite but absurd loss, e.g. from far too high a learning rate. None if it learns."""
    if step <= warmup_steps or val_loss <= unigram_loss:
        return None
    return (
        f"step {step}: val loss {val_loss:.3f} is above the no-context (unigram) loss {unigram_loss:.3f} "
        "after warm-up: the model is not learning (lower trainer.lr?)"
    )
