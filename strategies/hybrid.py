"""``hybrid``: every ``interval`` steps each layer gains children of its fittest neurons and loses
as many of its least fit mature neurons, so capacity stays constant. Births and deaths are
separate surgeries (a grow, then a shrink), counted separately in events and lineage."""

from __future__ import annotations

from dataclasses import dataclass

from apoptosis.core.params import param
from apoptosis.core.population import NeuronPopulation
from apoptosis.core.registry import register_strategy
from apoptosis.core.strategy import Strategy, TrainingContext
from apoptosis.strategies.selection import BreedingParams, MaturityParams, PeriodicParams, select_deaths, select_parents


@dataclass
class HybridParams(BreedingParams, MaturityParams, PeriodicParams):
    turnover_rate: float = param(
        0.05, low=0.0, high=0.5, search=(0.01, 0.2), help="share of each layer born and removed per event"
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
