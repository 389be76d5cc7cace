"""``orthogonal``: deaths and parents chosen for diversity as well as fitness.

Every ``interval`` steps, in each layer:

* candidates are the ``candidate_share`` of the layer with the lowest fitness among the mature
  neurons (at least as many as will die);
* deaths: the ``prune_rate`` share of the layer with the highest death score
  ``(1 - diversity_weight) x fitness_score + diversity_weight x redundancy_score``, where a
  neuron's redundancy is the max cosine similarity of its incoming weights (and bias) to any
  other living neuron. Both terms are normalised to [0, 1] by *rank* among the candidates
  (fitness_score 1 = least fit candidate, redundancy_score 1 = most redundant; tied values share
  their average rank). Deaths are picked one at a time and redundancy is recomputed after each
  pick without the neurons already chosen, so of two duplicates only one dies;
* parents: the pool is the fittest ``parent_pool`` share of the survivors; each pool member is
  scored by its max cosine similarity s to the other survivors (a child starts as a copy of
  its parent, so a parent unlike the rest gives a child that adds least redundancy), and parents
  are drawn with replacement with probability softmax(-s / temperature);
* children: mutated copies (``mutation_strength``) with zero outgoing weights.

diversity_weight 0 is standard's choice of deaths (lowest fitness); 1 kills by redundancy only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from apoptosis.core.params import param
from apoptosis.core.population import NeuronPopulation
from apoptosis.core.registry import register_strategy
from apoptosis.core.strategy import Strategy, TrainingContext
from apoptosis.strategies.selection import ReplacementParams, select_deaths


@dataclass
class OrthogonalParams(ReplacementParams):
    candidate_share: float = param(
        0.3, low=0.0, high=1.0, search=(0.1, 0.6), help="share of the layer (least fit mature) that may die"
    )
    diversity_weight: float = param(
        0.5, low=0.0, high=1.0, help="weight of redundancy against low fitness in the death score"
    )
    temperature: float = param(
        0.05, low=1e-4, high=100.0, search=(0.005, 1.0), log=True, help="softmax temperature of parent choice"
    )


def cosine_matrix(weights: torch.Tensor) -> torch.Tensor:
    """(n, n) cosine similarity between rows (0 for all-zero rows)."""
    unit = weights / weights.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return unit @ unit.t()


def max_similarity(cos: torch.Tensor, rows: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
    """For each slot in ``rows``, the max cosine similarity to the slots where ``others`` is
    True, itself excluded (-1 when there is no other)."""
    sim = cos[rows].clone()
    sim[:, ~others] = -math.inf
    sim[torch.arange(len(rows)), rows] = -math.inf
    best = sim.max(dim=1).values
    return torch.where(torch.isfinite(best), best, torch.full_like(best, -1.0))


def rank_score(values: torch.Tensor) -> torch.Tensor:
    """Ranks scaled to [0, 1] (0 = smallest, 1 = largest); ties share their average rank."""
    from scipy import stats  # imported here: every strategy module loads with the registry

    n = len(values)
    if n == 1:
        return torch.ones(1)
    ranks = stats.rankdata(values.numpy(), method="average")  # 1..n
    return torch.as_tensor((ranks - 1) / (n - 1), dtype=torch.float32)


def choose_deaths(pop: NeuronPopulation, step: int, p: OrthogonalParams, cos: torch.Tensor) -> torch.Tensor:
    """Slots that die, in the order they were picked."""
    n_dead = len(select_deaths(pop, step, p.prune_rate, p.maturity))
    if n_dead == 0:
        return torch.empty(0, dtype=torch.long)
    # the least fit first (stable), so equal death scores go to the less fit candidate
    candidates = select_deaths(pop, step, max(p.candidate_share, p.prune_rate), p.maturity)
    fitness_score = 1.0 - rank_score(pop.fitness()[candidates])
    living = pop.active().clone()
    remaining = torch.ones(len(candidates), dtype=torch.bool)
    dead = []
    for _ in range(n_dead):
        rows = candidates[remaining]
        redundancy = rank_score(max_similarity(cos, rows, living))
        score = (1 - p.diversity_weight) * fitness_score[remaining] + p.diversity_weight * redundancy
        pick = int(remaining.nonzero().squeeze(1)[torch.argmax(score)])
        remaining[pick] = False
        living[candidates[pick]] = False
        dead.append(int(candidates[pick]))
    return torch.tensor(dead, dtype=torch.long)


def choose_parents(
    pop: NeuronPopulation, dead: torch.Tensor, p: OrthogonalParams, cos: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(parents for each death, the pool they were drawn from)."""
    survivors = pop.active().clone()
    survivors[dead] = False
    fitness = torch.where(survivors, pop.fitness(), torch.full((pop.width,), -math.inf))
    pool_size = max(1, math.ceil(p.parent_pool * int(survivors.sum())))
    pool = torch.argsort(fitness, descending=True, stable=True)[:pool_size]
    similarity = max_similarity(cos, pool, survivors)
    weights = torch.softmax(-similarity / p.temperature, dim=0)
    picks = torch.multinomial(weights, len(dead), replacement=True, generator=generator)
    return pool[picks], pool


@register_strategy
class Orthogonal(Strategy):
    name = "orthogonal"
    description = "redundant low-fitness neurons die, reborn from fit parents unlike the rest of the layer"
    Params = OrthogonalParams

    def on_step_end(self, ctx: TrainingContext) -> None:
        p = self.params
        if ctx.every(p.interval):
            ctx.event(self.name, lambda pop: self.evolve(pop, ctx))

    def evolve(self, pop: NeuronPopulation, ctx: TrainingContext) -> None:
        p = self.params
        cos = cosine_matrix(pop.incoming())
        dead = choose_deaths(pop, ctx.step, p, cos)
        if len(dead) == 0 or int(pop.active().sum()) <= len(dead):
            return  # nobody to die, or no survivor to breed
        parents, _ = choose_parents(pop, dead, p, cos, ctx.generator)
        pop.copy_from(
            dead,
            parents,
            step=ctx.step,
            mutation_strength=p.mutation_strength,
            outgoing="zero",
            generator=ctx.generator,
            cause="low_fitness",
        )
