"""``full_reset``: the whole network starts again from a fresh initialisation at every task
boundary: the reset baseline of the loss-of-plasticity literature (training from scratch on
each new task, as in Ash & Adams, NeurIPS 2020, and the "retrained network" of Dohare et al.,
Nature 2024; Nikishin et al., "The Primacy Bias in Deep Reinforcement Learning", ICML 2022,
reset the last layers of an agent periodically).

At the end of every phase of continual training (``on_phase_end``), and also every ``interval``
steps when it is above 0 (never on the last step):

* every parameter is drawn again from the model's initial distribution (``fresh_parameters``:
  N(0, 0.02) weights, GPT-2's smaller residual projections, biases 0, LayerNorm weights 1), from
  the strategy's own random stream (``ctx.generator``), so runs resume exactly;
* every MLP neuron dies and is reborn in its slot with the new weights (no parents, cause
  ``reset``), through the population, so the lineage and ``events.jsonl`` record it as one event;
* the optimizer's whole state is restarted, as a newly built optimizer: Adam's moments zero and
  every step count from zero, for the neurons and every other parameter alike;
* the neuron masks are all 1 again (a fresh network has none masked).

Defaults: ``interval`` 0 (at phase ends only). The learning-rate schedule is the run's: in
continual training it starts again with every phase (warmup, then cosine decay).

Notes: the whole model is redrawn in the first layer's surgery, so the first layer's
``events.jsonl`` line carries the event's disruption (the probe loss after a fresh network) and
the other layers' lines record their deaths and births with the loss unchanged. A run with one
corpus has no phase end, so it resets nothing unless ``interval`` is set.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from apoptosis.core.model import fresh_parameters
from apoptosis.core.params import StrategyParams, param
from apoptosis.core.population import NeuronPopulation, restart_optimizer
from apoptosis.core.registry import register_strategy
from apoptosis.core.strategy import TrainingContext
from apoptosis.strategies.boundaries import AtBoundaries

CAUSE = "reset"


@dataclass
class FullResetParams(StrategyParams):
    interval: int = param(
        0, low=0, high=1_000_000, search=(100, 5000), log=True, help="also every this many steps (0: phase ends only)"
    )


@register_strategy
class FullReset(AtBoundaries):
    name = "full_reset"
    description = "reset baseline: at each phase end the whole network and optimizer start again from scratch"
    Params = FullResetParams

    def act(self, ctx: TrainingContext, reason: str) -> None:
        fresh = fresh_parameters(ctx.model, ctx.generator)
        first = ctx.populations[0]

        def surgery(pop: NeuronPopulation) -> None:
            if pop is first:
                with torch.no_grad():
                    for name, p in ctx.model.named_parameters():
                        p.copy_(fresh[name])
            slots = torch.arange(pop.width)  # every neuron is reborn with the weights just drawn
            pop.replace(slots, pop.incoming(), pop.outgoing(), step=ctx.step, parents=[()] * pop.width, cause=CAUSE)

        ctx.event(self.name, surgery)
        restart_optimizer(ctx.optimizer, ctx.populations)
        ctx.log(f"step {ctx.step}: full reset ({reason}): fresh weights, optimizer state restarted")
