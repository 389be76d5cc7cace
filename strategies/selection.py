"""Who dies and who breeds: fitness-based choices shared by the built-in strategies."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from apoptosis.core.params import StrategyParams, param
from apoptosis.core.population import NeuronPopulation


@dataclass
class PeriodicParams(StrategyParams):
    """Strategies whose events come every ``interval`` steps."""

    interval: int = param(500, low=1, high=1_000_000, search=(50, 2000), log=True, help="steps between events")


@dataclass
class MaturityParams(StrategyParams):
    """Strategies that let only neurons older than ``maturity`` die."""

    maturity: int = param(250, low=0, high=1_000_000, search=(0, 1000), help="steps a neuron lives before it can die")


@dataclass
class BreedingParams(StrategyParams):
    """Strategies whose children copy a parent drawn from the fittest, with mutation."""

    mutation_strength: float = param(
        0.3, low=0.0, high=10.0, search=(0.0, 1.0), help="child noise, in units of the parent's weight RMS"
    )
    parent_pool: float = param(
        0.2, low=0.01, high=1.0, search=(0.05, 0.5), help="share of the fittest living neurons that may breed"
    )


@dataclass
class ReplacementParams(BreedingParams, MaturityParams, PeriodicParams):
    """Every strategy that replaces the ``prune_rate`` least fit mature neurons with children of
    the fittest at regular intervals; a strategy's own Params extend these."""

    prune_rate: float = param(
        0.10, low=0.0, high=0.5, search=(0.01, 0.3), help="share of each layer replaced per event"
    )


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
