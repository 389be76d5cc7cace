"""Who dies and who breeds: fitness-based choices shared by the built-in strategies."""

from __future__ import annotations

import math

import torch

from apoptosis.population import NeuronPopulation


def select_deaths(pop: NeuronPopulation, step: int, rate: float, maturity: int) -> torch.Tensor:
    """Slots of the ``rate`` share of the layer with the lowest fitness among mature neurons."""
    eligible = pop.mature(step, maturity)
    n = min(int(round(rate * pop.width)), int(eligible.sum()))
    if n == 0:
        return torch.empty(0, dtype=torch.long)
    fitness = torch.where(eligible, pop.fitness(), torch.full((pop.width,), math.inf))
    return torch.argsort(fitness, stable=True)[:n]


def select_parents(
    pop: NeuronPopulation, n: int, exclude: torch.Tensor, pool_share: float, generator: torch.Generator
) -> torch.Tensor:
    """``n`` parents drawn uniformly (with replacement) from the fittest ``pool_share`` of the
    living neurons that are not in ``exclude``."""
    candidates = pop.active().clone()
    candidates[exclude] = False
    fitness = torch.where(candidates, pop.fitness(), torch.full((pop.width,), -math.inf))
    pool_size = max(1, math.ceil(pool_share * int(candidates.sum())))
    pool = torch.argsort(fitness, descending=True, stable=True)[:pool_size]
    return pool[torch.randint(len(pool), (n,), generator=generator)]
