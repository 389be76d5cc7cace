"""The counters a run keeps from step to step: checkpointed, and summed up in summary.json."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch


@dataclass
class RunTotals:
    events: int = 0
    neurons_replaced: int = 0
    neurons_born: int = 0
    disruptions: list[float] = field(default_factory=list)  # probe loss after - before, per event
    surgery_disruptions: list[float] = field(default_factory=list)  # the same before any follower ran
    train_time_s: float = 0.0
    tokens: int = 0
    pending_loss_sum: Any = 0.0  # since the last metrics row: a device tensor until it is read
    pending_steps: int = 0
    pending_tokens: int = 0
    pending_time_s: float = 0.0
    last_val_loss: float | None = None
    last_train_loss: float | None = None

    @property
    def tokens_per_s(self) -> float | None:
        return self.tokens / self.train_time_s if self.train_time_s > 0 else None

    def add_loss(self, loss: torch.Tensor) -> None:
        """One step's training loss, summed where it was computed (no wait for the device)."""
        self.pending_loss_sum = self.pending_loss_sum + loss.double()
        self.pending_steps += 1

    def read_losses(self, step: int) -> tuple[float, int]:
        """The mean training loss of the steps since the last row, up to ``step`` (one read from
        the device), kept as ``last_train_loss``, with the window's first step."""
        self.last_train_loss = float(self.pending_loss_sum) / max(self.pending_steps, 1)
        return self.last_train_loss, step - self.pending_steps + 1

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps: plain numbers (the loss sum read from the device)."""
        return {**asdict(self), "pending_loss_sum": float(self.pending_loss_sum)}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> RunTotals:
        state = dict(state)
        losses = state.pop("pending_losses", None)  # checkpoints before the loss stayed on the device
        if losses is not None:
            state["pending_loss_sum"], state["pending_steps"] = float(np.sum(losses, dtype=np.float64)), len(losses)
        return cls(**state)

    def take_row(self, step: int, lr: float, val_loss: float | None, neurons: int) -> list[Any]:
        """The metrics row of the steps since the last one (mean train loss, tokens/s over them),
        and a fresh window for the next."""
        row = [
            step,
            f"{self.last_train_loss:.6f}",
            "" if val_loss is None else f"{val_loss:.6f}",
            f"{lr:.6g}",
            f"{self.pending_tokens / max(self.pending_time_s, 1e-9):.1f}",
            neurons,
            self.events,
        ]
        self.pending_loss_sum, self.pending_steps, self.pending_tokens, self.pending_time_s = 0.0, 0, 0, 0.0
        return row
