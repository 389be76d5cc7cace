"""``crossover``: every ``interval`` steps, in each layer, the least fit mature neurons die and
each is replaced by a child of two different parents chosen by tournament selection.

A tournament draws ``tournament_size`` distinct living, non-dying neurons uniformly and the
fittest of them wins; parent b is drawn the same way with parent a left out, so a != b. How the
child mixes its parents' incoming weights is ``mode``:

* ``uniform``: each weight comes from parent a or parent b with probability 1/2 (a 0/1 mask);
* ``fitness_weighted``: child = s x a + (1 - s) x b with s = f_a / (f_a + f_b) (fitness clamped
  at 0; s = 1/2 when both are 0), one s per child;
* ``blend``: the same with s ~ U(0, 1) drawn per child.

The child is then mutated (``mutation_strength`` x RMS x N(0, 1)) and starts with zero outgoing
weights; the lineage records both parents.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from apoptosis.core.params import param
from apoptosis.core.population import NeuronPopulation
from apoptosis.core.registry import register_strategy
from apoptosis.core.strategy import Strategy, TrainingContext
from apoptosis.strategies.selection import MaturityParams, PeriodicParams, select_deaths

CROSSOVER_MODES = ("uniform", "fitness_weighted", "blend")


@dataclass
class CrossoverParams(MaturityParams, PeriodicParams):
    prune_rate: float = param(
        0.10, low=0.0, high=0.5, search=(0.01, 0.3), help="share of each layer replaced per event"
    )
    mutation_strength: float = param(
        0.1, low=0.0, high=10.0, search=(0.0, 1.0), help="noise after crossover, in units of the child's weight RMS"
    )
    tournament_size: int = param(
        3, low=2, high=16, search=(2, 8), help="neurons drawn per tournament; the fittest becomes a parent"
    )
    mode: str = param(
        "uniform", choices=CROSSOVER_MODES, help="how parents mix: uniform mask, fitness_weighted or blend"
    )


def tournament(fitness: torch.Tensor, candidates: torch.Tensor, size: int, generator: torch.Generator) -> int:
    """The fittest of ``size`` distinct slots drawn uniformly from ``candidates`` (a 1-D slot
    tensor); with fewer candidates than ``size``, all of them compete. Ties go to the first drawn."""
    drawn = candidates[torch.randperm(len(candidates), generator=generator)[:size]]
    return int(drawn[torch.argmax(fitness[drawn])])


def choose_parents(
    pop: NeuronPopulation, dead: torch.Tensor, size: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """For each dying slot, two different parents from the living, non-dying neurons (None if
    fewer than two such neurons exist)."""
    living = pop.active().clone()
    living[dead] = False
    candidates = living.nonzero().squeeze(1)
    if len(candidates) < 2:
        return None
    fitness = pop.fitness()
    parent_a, parent_b = [], []
    for _ in range(len(dead)):
        a = tournament(fitness, candidates, size, generator)
        b = tournament(fitness, candidates[candidates != a], size, generator)
        parent_a.append(a)
        parent_b.append(b)
    return torch.tensor(parent_a, dtype=torch.long), torch.tensor(parent_b, dtype=torch.long)


def mixing_shares(
    mode: str, fit_a: torch.Tensor, fit_b: torch.Tensor, n_weights: int, generator: torch.Generator
) -> torch.Tensor:
    """(k, n_weights) share of parent a in each child weight."""
    k = len(fit_a)
    if mode == "uniform":
        return (torch.rand(k, n_weights, generator=generator) < 0.5).float()
    if mode == "fitness_weighted":
        fa, fb = fit_a.clamp_min(0.0), fit_b.clamp_min(0.0)
        total = fa + fb
        share = torch.where(total > 0, fa / total.clamp_min(1e-30), torch.full_like(total, 0.5))
    elif mode == "blend":
        share = torch.rand(k, generator=generator)
    else:
        raise ValueError(f"mode must be one of {CROSSOVER_MODES}, got {mode!r}")
    return share[:, None].expand(k, n_weights).clone()


@register_strategy
class Crossover(Strategy):
    name = "crossover"
    description = "least fit neurons die, reborn as crossovers of two tournament-selected parents"
    Params = CrossoverParams

    def on_step_end(self, ctx: TrainingContext) -> None:
        p = self.params
        if ctx.every(p.interval):
            ctx.event(self.name, lambda pop: self.evolve(pop, ctx))

    def evolve(self, pop: NeuronPopulation, ctx: TrainingContext) -> None:
        p = self.params
        dead = select_deaths(pop, ctx.step, p.prune_rate, p.maturity)
        if len(dead) == 0:
            return
        parents = choose_parents(pop, dead, p.tournament_size, ctx.generator)
        if parents is None:
            return
        parent_a, parent_b = parents
        fitness = pop.fitness()
        n_weights = pop.incoming().shape[1]
        share_a = mixing_shares(p.mode, fitness[parent_a], fitness[parent_b], n_weights, ctx.generator)
        pop.crossover(
            dead,
            parent_a,
            parent_b,
            share_a,
            step=ctx.step,
            mutation_strength=p.mutation_strength,
            generator=ctx.generator,
            cause="low_fitness",
        )
