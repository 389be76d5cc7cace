"""``stability_first``: a follower for continual training (``--then stability_first``, or alone as
``stability_first``). When a phase ends, in every layer the ``protect_share`` of the still
unprotected neurons that were fittest on that phase get their updates scaled by ``lr_scale``
(0 = frozen) for the rest of the run, and are never chosen to die: what the network learned
first is kept in the neurons that carried it, the others stay free to learn the next task."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from apoptosis.core.params import StrategyParams, param
from apoptosis.core.registry import register_strategy
from apoptosis.core.strategy import Phase, Strategy, TrainingContext


@dataclass
class StabilityFirstParams(StrategyParams):
    protect_share: float = param(
        0.2, low=0.0, high=1.0, search=(0.05, 0.5), help="share of each layer protected at each phase end"
    )
    lr_scale: float = param(0.0, low=0.0, high=1.0, search=(0.0, 0.5), help="update scale of protected neurons")


@register_strategy
class StabilityFirst(Strategy):
    name = "stability_first"
    description = "follower: at each phase end the fittest free neurons are protected (updates scaled, never killed)"
    Params = StabilityFirstParams
    follows_events = True

    def on_phase_end(self, ctx: TrainingContext, phase: Phase) -> None:
        p = self.params
        counts = []
        for pop in ctx.populations:
            free = pop.active() & ~pop.protected()
            k = min(round(p.protect_share * pop.width), int(free.sum()))
            fitness = pop.fitness().clone()
            fitness[~free] = -torch.inf
            chosen = fitness.topk(k).indices if k > 0 else torch.empty(0, dtype=torch.long)
            pop.protect(chosen, p.lr_scale)
            counts.append(int(pop.protected().sum()))
        ctx.log(f"stability_first: protected after {phase.corpus}: {counts} neurons per layer")
