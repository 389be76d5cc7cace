"""The counters a run keeps from step to step: checkpointed, and summed up in summary.json."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class RunTotals:
    events: int = 0
    neurons_replaced: int = 0
    neurons_born: int = 0
    disruptions: list[float] = field(default_factory=list)  # probe loss after - before, per event
    surgery_disruptions: list[float] = field(default_factory=list)  # the same before any follower ran
    train_time_s: float = 0.0
    tokens: int = 0
    pending_losses: list[float] = field(default_factory=list)  # since the last metrics row
    pending_tokens: int = 0
    pending_time_s: float = 0.0
    last_val_loss: float | None = None
    last_train_loss: float | None = None

    @property
    def tokens_per_s(self) -> float | None:
        return self.tokens / self.train_time_s if self.train_time_s > 0 else None

    def take_row(self, step: int, lr: float, val_loss: float | None, neurons: int) -> list[Any]:
        """The metrics row of the steps since the last one (mean train loss, tokens/s over them),
        and a fresh window for the next."""
        row = [
            step,
            f"{np.mean(self.pending_losses):.6f}",
            "" if val_loss is None else f"{val_loss:.6f}",
            f"{lr:.6g}",
            f"{self.pending_tokens / max(self.pending_time_s, 1e-9):.1f}",
            neurons,
            self.events,
        ]
        self.pending_losses, self.pending_tokens, self.pending_time_s = [], 0, 0.0
        return row
