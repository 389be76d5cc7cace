"""``growth_only``: every ``interval`` steps each layer grows by ``growth_rate`` of its width, up
to ``max_width``; nothing dies. Newborns are split from fit parents Net2Net-style (the parent's
outgoing weights are shared with the child). With no mutation a child and its parent would get
identical gradients forever (growth would add parameters but no capacity), so, as Net2Net
recommends, a little noise (1% of the parent's weight RMS by default) goes on the child's
incoming weights: the loss at birth moves by about 1e-6 on the default model (logits by about
1e-3), and the two neurons diverge. The population resizes ``fc``, ``proj`` and the optimizer
state, splitting the moments with the weights."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from apoptosis.core.params import param
from apoptosis.core.population import NeuronPopulation
from apoptosis.core.registry import register_strategy
from apoptosis.core.strategy import Strategy, TrainingContext
from apoptosis.strategies.selection import BreedingParams, PeriodicParams, select_parents


@dataclass
class GrowthOnlyParams(BreedingParams, PeriodicParams):
    growth_rate: float = param(0.05, low=0.0, high=1.0, search=(0.01, 0.2), help="share of the width added per event")
    max_width: int = param(1024, low=1, high=1_000_000, search=(256, 2048), log=True, help="no layer grows past this")
    mutation_strength: float = param(
        0.01,
        low=0.0,
        high=10.0,
        search=(0.0, 0.1),
        help="child noise, in units of the parent's weight RMS: breaks the split's symmetry (0 = exact copies)",
    )


@register_strategy
class GrowthOnly(Strategy):
    name = "growth_only"
    description = "layers widen by splitting fit neurons (Net2Net), up to max_width; nothing dies"
    Params = GrowthOnlyParams

    def on_step_end(self, ctx: TrainingContext) -> None:
        if ctx.every(self.params.interval):
            ctx.event(self.name, lambda pop: self.grow(pop, ctx))

    def grow(self, pop: NeuronPopulation, ctx: TrainingContext) -> None:
        p = self.params
        k = min(math.ceil(p.growth_rate * pop.width), p.max_width - pop.width)
        if k <= 0:
            return
        parents = select_parents(pop, k, torch.empty(0, dtype=torch.long), p.parent_pool, ctx.generator)
        pop.grow(k, step=ctx.step, parent_slots=parents, mutation_strength=p.mutation_strength, generator=ctx.generator)
