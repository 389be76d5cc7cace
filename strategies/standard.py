"""``standard``: every ``interval`` steps, in each layer, the least fit mature neurons die and
each is replaced by a mutated child of a parent drawn from the fittest neurons."""

from __future__ import annotations

from dataclasses import dataclass

from apoptosis.params import StrategyParams, param
from apoptosis.population import OUTGOING_MODES, NeuronPopulation
from apoptosis.registry import register_strategy
from apoptosis.strategies.selection import select_deaths, select_parents
from apoptosis.strategy import Strategy, TrainingContext


@dataclass
class StandardParams(StrategyParams):
    prune_rate: float = param(
        0.10, low=0.0, high=0.5, search=(0.01, 0.3), help="share of each layer replaced per event"
    )
    interval: int = param(500, low=1, high=1_000_000, search=(50, 2000), log=True, help="steps between events")
    mutation_strength: float = param(
        0.3, low=0.0, high=10.0, search=(0.0, 1.0), help="child noise, in units of the parent's weight RMS"
    )
    maturity: int = param(250, low=0, high=1_000_000, search=(0, 1000), help="steps a neuron lives before it can die")
    parent_pool: float = param(
        0.2, low=0.01, high=1.0, search=(0.05, 0.5), help="share of the fittest living neurons that may breed"
    )
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
