"""``shrink_perturb``: shrink every parameter and add noise from a fresh initialisation, from

    J. T. Ash, R. P. Adams, "On Warm-Starting Neural Network Training", NeurIPS 2020
    (arXiv:1910.08475); reference code ``run.py`` of github.com/JordanAsh/warm_start.

At the end of every phase of continual training (``on_phase_end``, the paper's "new data
arrives"), and also every ``interval`` steps when it is above 0, every parameter of the model
becomes

    theta <- shrink x theta + perturb x theta_fresh

where theta_fresh is a new draw of the model's initialisation (``fresh_parameters``: as the
reference code does with a newly built network, so each kind of parameter gets the noise of its
own initial distribution: N(0, 0.02) weights, GPT-2's smaller residual projections, 0 biases,
LayerNorm weights 1). The draw comes from the strategy's own random stream (``ctx.generator``),
so a run is reproducible and resumes exactly. With ``reset_optimizer`` (the default) the
optimizer's state is then restarted (moments zero, step counts from zero), as the reference code
builds a new optimizer for every round.

Defaults: ``shrink`` 0.4 and ``perturb`` 0.1, the reference code's defaults and the command of
its README (shrink 0 with perturb 1 is a fresh initialisation, shrink 1 with perturb 0 a warm
start); ``interval`` 0 (at phase ends only, as in the paper).

Deviations and notes:

* it is model-wide and no neuron dies or is born, so it is applied directly, not through
  ``ctx.event``: it writes no ``events.jsonl`` line and its disruption is not measured on the
  probe batch (it shows in the loss curves). Each application is printed (``ctx.log``) and kept
  in ``history`` (step and reason), which is checkpointed;
* "applied when new data arrives" is our phase end; a run with one corpus has no phase end, so
  it changes nothing there unless ``interval`` is set;
* the noise of a parameter shared by two modules (the head tied to the token embedding) is drawn
  once, from the embedding's initialisation, which is the same N(0, 0.02).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from apoptosis.core.model import GPT, fresh_parameters
from apoptosis.core.params import StrategyParams, param
from apoptosis.core.population import restart_optimizer
from apoptosis.core.registry import register_strategy
from apoptosis.core.strategy import TrainingContext
from apoptosis.strategies.boundaries import AtBoundaries


@dataclass
class ShrinkPerturbParams(StrategyParams):
    shrink: float = param(0.4, low=0.0, high=1.0, search=(0.1, 1.0), help="lambda: every parameter is multiplied by it")
    perturb: float = param(
        0.1, low=0.0, high=10.0, search=(0.0, 0.5), help="sigma: this times a fresh initialisation is added"
    )
    interval: int = param(
        0, low=0, high=1_000_000, searched=False, help="also every this many steps (0: at phase ends only)"
    )
    reset_optimizer: bool = param(True, help="restart the optimizer's state after each application")


@torch.no_grad()
def shrink_and_perturb(model: GPT, shrink: float, perturb: float, generator: torch.Generator) -> None:
    """theta <- shrink x theta + perturb x (a fresh initialisation drawn from ``generator``), for
    every parameter of ``model``."""
    fresh = fresh_parameters(model, generator)
    for name, p in model.named_parameters():
        p.mul_(shrink).add_(fresh[name], alpha=perturb)


@register_strategy
class ShrinkPerturb(AtBoundaries):
    name = "shrink_perturb"
    description = "shrink & perturb: at each phase end, theta <- 0.4 theta + 0.1 x a fresh initialisation"
    Params = ShrinkPerturbParams

    def act(self, ctx: TrainingContext, reason: str) -> None:
        p = self.params
        shrink_and_perturb(ctx.model, p.shrink, p.perturb, ctx.generator)
        if p.reset_optimizer:
            restart_optimizer(ctx.optimizer, ctx.populations)
        restarted = ", optimizer state restarted" if p.reset_optimizer else ""
        formula = f"theta <- {p.shrink:g} theta + {p.perturb:g} init"
        ctx.log(f"step {ctx.step}: shrink & perturb ({reason}): {formula}{restarted}")
