"""``hybrid``: every ``interval`` steps each layer gains children of its fittest neurons and loses
as many of its least fit mature neurons, so capacity stays constant. Births and deaths are
separate surgeries (a grow, then a shrink), counted separately in events and lineage."""

from __future__ import annotations

from dataclasses import dataclass

from apoptosis.core.params import StrategyParams, param
from apoptosis.core.population import NeuronPopulation
from apoptosis.core.registry import register_strategy
from apoptosis.strategies.selection import select_deaths, select_parents
from apoptosis.core.strategy import Strategy, TrainingContext


@dataclass
class HybridParams(StrategyParams):
    turnover_rate: float = param(
        0.05, low=0.0, high=0.5, search=(0.01, 0.2), help="share of each layer born and removed per event"
    )
    interval: int = param(500, low=1, high=1_000_000, search=(50, 2000), log=True, help="steps between events")
    mutation_strength: float = param(
        0.3, low=0.0, high=10.0, search=(0.0, 1.0), help="child noise, in units of the parent's weight RMS"
    )
    maturity: int = param(250, low=0, high=1_000_000, search=(0, 1000), help="steps a neuron lives before it can die")
    parent_pool: float = param(
        0.2, low=0.01, high=1.0, search=(0.05, 0.5), help="share of the fittest living neurons that may breed"
    )


@register_strategy
class Hybrid(Strategy):
    name = "hybrid"
    description = "constant capacity: children of the fittest are added, as many least fit are removed"
    Params = HybridParams

    def on_step_end(self, ctx: TrainingContext) -> None:
        if ctx.every(self.params.interval):
            ctx.event(self.name, lambda pop: self.turn_over(pop, ctx))

    def turn_over(self, pop: NeuronPopulation, ctx: TrainingContext) -> None:
        p = self.params
        dead = select_deaths(pop, ctx.step, p.turnover_rate, p.maturity)  # chosen before the births
        if len(dead) == 0:
            return
        parents = select_parents(pop, len(dead), dead, p.parent_pool, ctx.generator)
        pop.grow(
            len(dead),
            step=ctx.step,
            parent_slots=parents,
            mutation_strength=p.mutation_strength,
            generator=ctx.generator,
        )
        pop.shrink(dead, step=ctx.step, cause="low_fitness")
