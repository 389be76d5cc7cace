"""The counters a run keeps from step to step: checkpointed, and summed up in summary.json."""

from __future__ import annotations

from dataclasses import dataclass, field


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
