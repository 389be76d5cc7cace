"""``standard``: every ``interval`` steps, in each layer, the least fit mature neurons die and
each is replaced by a mutated child of a parent drawn from the fittest neurons."""

from __future__ import annotations

from dataclasses import dataclass

from apoptosis.core.params import param
from apoptosis.core.population import OUTGOING_MODES, NeuronPopulation
from apoptosis.core.registry import register_strategy
from apoptosis.core.strategy import Strategy, TrainingContext
from apoptosis.strategies.selection import ReplacementParams, select_deaths, select_parents


@dataclass
class StandardParams(ReplacementParams):
    outgoing: str = param("zero", choices=OUTGOING_MODES, help="child's outgoing weights: zero, split or copy")


@register_strategy
class Standard(Strategy):
    name = "standard"
    description = "periodic death of the least fit neurons, reborn as mutated children of the fittest"
    Params = StandardParams

    def on_step_end(self, ctx: TrainingContext) -> None:
        p = self.params
        if ctx.every(p.interval):
            ctx.event(self.name, lambda pop: self.evolve(pop, ctx))

    def evolve(self, pop: NeuronPopulation, ctx: TrainingContext) -> None:
        p = self.params
        dead = select_deaths(pop, ctx.step, p.prune_rate, p.maturity)
        if len(dead) == 0:
            return
        parents = select_parents(pop, len(dead), dead, p.parent_pool, ctx.generator)
        pop.copy_from(
            dead,
            parents,
            step=ctx.step,
            mutation_strength=p.mutation_strength,
            outgoing=p.outgoing,
            generator=ctx.generator,
            cause="low_fitness",
        )
