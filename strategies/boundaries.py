"""Strategies that act on the whole network at task boundaries (``shrink_perturb``,
``full_reset``): at every phase end, and also every ``interval`` steps when that is above 0,
never twice in one step. Each application is kept in ``history`` (step and reason), which is
checkpointed; a subclass says what one application does in ``act``."""

from __future__ import annotations

from typing import Any

from apoptosis.core.params import StrategyParams
from apoptosis.core.strategy import Phase, Strategy, TrainingContext


class AtBoundaries(Strategy):
    uses_fitness = False

    def __init__(self, params: StrategyParams | None = None) -> None:
        super().__init__(params)
        self.history: list[dict[str, Any]] = []  # one entry per application: step and reason

    def act(self, ctx: TrainingContext, reason: str) -> None:
        """One application to the whole network."""
        raise NotImplementedError

    def on_step_end(self, ctx: TrainingContext) -> None:
        if self.params.interval > 0 and ctx.every(self.params.interval):
            self._apply(ctx, "interval")

    def on_phase_end(self, ctx: TrainingContext, phase: Phase) -> None:
        if not (self.history and self.history[-1]["step"] == ctx.step):  # not twice in one step
            self._apply(ctx, f"end of {phase.corpus}")

    def _apply(self, ctx: TrainingContext, reason: str) -> None:
        self.act(ctx, reason)
        self.history.append({"step": ctx.step, "reason": reason})

    def state_dict(self) -> dict[str, Any]:
        return {"history": [dict(entry) for entry in self.history]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = [dict(entry) for entry in state.get("history", [])]
