"""``random_death``: a control strategy for ``standard``.

Every ``interval`` steps, in each layer, a ``rate`` share of the mature neurons, chosen at random,
die; each is replaced by a mutated child of a parent drawn at random from the layer's other
living neurons. Fitness decides nothing here, so comparing a run of this strategy with a run of
``standard`` at the same rate separates the effect of *selection* from the effect of *turnover*.

Everything goes through the ``NeuronPopulation`` handed over by ``ctx.event``: the strategy
never touches a weight tensor, so the optimizer state, fitness and lineage stay consistent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from apoptosis.core.params import StrategyParams, param
from apoptosis.core.population import OUTGOING_MODES, NeuronPopulation
from apoptosis.core.strategy import Strategy, TrainingContext


@dataclass
class RandomDeathParams(StrategyParams):
    rate: float = param(0.05, low=0.0, high=0.5, search=(0.01, 0.2), help="share of each layer replaced per event")
    interval: int = param(500, low=1, high=1_000_000, search=(50, 2000), log=True, help="steps between events")
    maturity: int = param(250, low=0, high=1_000_000, search=(0, 1000), help="steps a neuron lives before it can die")
    mutation_strength: float = param(
        0.3, low=0.0, high=10.0, search=(0.0, 1.0), help="child noise, in units of the parent's weight RMS"
    )
    outgoing: str = param("zero", choices=OUTGOING_MODES, help="child's outgoing weights: zero, split or copy")


class RandomDeath(Strategy):
    name = "random_death"  # the same as the entry-point name in pyproject.toml
    description = "control: random mature neurons die, reborn as mutated children of random parents"
    Params = RandomDeathParams
    # Fitness chooses nothing here, but it is still tracked, so events.jsonl records how fit the
    # random victims were. Set this to False to skip the fitness hooks and their cost.
    uses_fitness = True

    def __init__(self, params: StrategyParams | None = None) -> None:
        super().__init__(params)
        self.killed = 0  # neurons this strategy replaced so far; checkpointed below

    def on_train_begin(self, ctx: TrainingContext) -> None:
        ctx.log(f"random_death: {self.params.to_dict()} (from step {ctx.step})")

    def on_step_end(self, ctx: TrainingContext) -> None:
        # No event at the last step: nothing would train (or be measured) after it.
        if ctx.every(self.params.interval):
            ctx.event(self.name, lambda pop: self.turnover(pop, ctx))

    def on_train_end(self, ctx: TrainingContext) -> None:
        ctx.log(f"random_death: {self.killed} neurons replaced in all")

    def turnover(self, pop: NeuronPopulation, ctx: TrainingContext) -> None:
        """One layer's share of an event."""
        p = self.params
        eligible = pop.mature(ctx.step, p.maturity).nonzero().squeeze(1)  # slots
        n = min(int(round(p.rate * pop.width)), len(eligible))
        if n == 0:
            return
        dead = eligible[torch.randperm(len(eligible), generator=ctx.generator)[:n]]
        survivors = pop.active().clone()
        survivors[dead] = False
        pool = survivors.nonzero().squeeze(1)
        if len(pool) == 0:
            return
        parents = pool[torch.randint(len(pool), (n,), generator=ctx.generator)]
        pop.copy_from(
            dead,
            parents,
            step=ctx.step,
            mutation_strength=p.mutation_strength,
            outgoing=p.outgoing,
            generator=ctx.generator,
            cause="random",
        )
        self.killed += n

    def state_dict(self) -> dict[str, Any]:
        return {"killed": self.killed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.killed = int(state.get("killed", 0))
