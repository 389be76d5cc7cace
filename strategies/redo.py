"""``redo``: Recycling Dormant neurons, from

    G. Sokar, R. Agarwal, P. S. Castro, U. Evci, "The Dormant Neuron Phenomenon in Deep
    Reinforcement Learning", ICML 2023 (arXiv:2302.12902); reference code
    ``dopamine/labs/redo/weight_recyclers.py`` (``NeuronRecycler``) of github.com/google/dopamine.

Every ``interval`` steps (never on the last step), in each layer, each neuron's score is

    s_i = mean over the batch's tokens of |h_i| / (mean over the layer's neurons of that + 1e-9)

and the neurons with s_i <= ``tau`` (tau-dormant) are recycled: incoming weights drawn again
from the initial distribution (N(0, 0.02), bias 0), outgoing weights 0 (the layer's output is
unchanged at that moment), Adam moments zeroed. The dormant share of every layer is recorded at
each recycling step, also when nothing is dormant: ``dormant_history`` (one entry per recycling
step: ``step``, per-layer ``fractions`` and ``counts``, the overall ``fraction``), kept in the
checkpoint, printed with ``ctx.log``. Dead neurons go into the lineage with cause ``redo`` and
their score as fitness.

Defaults and where they come from:

* ``tau`` 0.1: the larger of the two thresholds of the paper's Atari experiments (0.025 and 0.1;
  0 for SAC). The code's own default, 0, recycles only exactly silent units, which a GELU neuron
  never is (GELU is negative below zero);
* ``interval`` 250 steps. The paper recycles every 1000 gradient steps, hundreds of times in a run
  of millions of updates; our runs last a few thousand steps, so 250 (the default evaluation
  interval) gives 7 recyclings in a default 2000-step run. Searched from 50 to 2000.

Deviations:

* the score is computed on the step's training batch (the first training forward pass of the
  step, before that step's update), not on a separate batch sampled after the update (64 or 256
  transitions in their code); a batch here is ``batch_size`` x ``block_size`` tokens;
* the layer mean is over its active neurons, and masked or protected neurons are never recycled
  (the reference has neither);
* the population restarts each recycled neuron's Adam bias correction from its birth; the
  reference zeroes the moments but keeps the global step count;
* the initial distribution is this model's, not Xavier-uniform.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from apoptosis.core.params import StrategyParams, param
from apoptosis.core.population import NeuronPopulation
from apoptosis.core.registry import register_strategy
from apoptosis.core.strategy import Strategy, TrainingContext
from apoptosis.strategies.activations import StepActivations

EPSILON = 1e-9  # as the reference code: a layer that is entirely silent


@dataclass
class ReDoParams(StrategyParams):
    tau: float = param(
        0.1, low=0.0, high=1.0, search=(0.01, 0.5), log=True, help="a neuron whose score s_i <= tau is dormant"
    )
    interval: int = param(250, low=1, high=1_000_000, search=(50, 2000), log=True, help="steps between recyclings")


def dormancy_scores(abs_mean: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """(width,) s_i: each neuron's mean |h| divided by the mean of that over the active neurons."""
    return abs_mean / (abs_mean[active].mean() + EPSILON) if bool(active.any()) else torch.zeros_like(abs_mean)


@register_strategy
class ReDo(Strategy):
    name = "redo"
    description = "ReDo: every interval steps, tau-dormant neurons (low mean |h|) are reinitialised"
    Params = ReDoParams
    uses_fitness = False  # its own score, from its own hooks

    def __init__(self, params: StrategyParams | None = None) -> None:
        super().__init__(params)
        self.activations = StepActivations()
        self.dormant_history: list[dict[str, Any]] = []

    def on_train_begin(self, ctx: TrainingContext) -> None:
        self.activations.attach(ctx.populations)

    def on_train_end(self, ctx: TrainingContext) -> None:
        self.activations.detach()

    def on_step_end(self, ctx: TrainingContext) -> None:
        if not ctx.every(self.params.interval):
            self.activations.clear()
            return
        stats = self.activations.take()
        plan: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        fractions, counts, total = [], [], 0
        for pop in ctx.populations:
            if pop.layer not in stats:
                continue
            slots, scores = self.dormant(pop, stats[pop.layer][0], ctx.step)
            fractions.append(len(slots) / pop.width)
            counts.append(len(slots))
            total += pop.width
            if len(slots):
                plan[pop.layer] = (slots, scores[slots])
        if counts:
            entry = {"step": ctx.step, "fractions": fractions, "counts": counts, "fraction": sum(counts) / total}
            self.dormant_history.append(entry)
            shares = ", ".join(f"{f:.1%}" for f in fractions)
            ctx.log(f"step {ctx.step}: redo: dormant (s <= {self.params.tau:g}) per layer {shares}; recycling them")
        if plan:
            ctx.event(self.name, lambda pop: self.recycle(pop, ctx, plan.get(pop.layer)))
        self.activations.clear()

    def dormant(self, pop: NeuronPopulation, abs_mean: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The slots of the tau-dormant neurons that may be recycled, and every neuron's score."""
        scores = dormancy_scores(abs_mean, pop.active())
        free = pop.mature(step, 0)  # active and not protected
        return (free & (scores <= self.params.tau)).nonzero().squeeze(1), scores

    def recycle(self, pop: NeuronPopulation, ctx: TrainingContext, plan: tuple[torch.Tensor, torch.Tensor] | None):
        if plan is None:
            return
        slots, scores = plan
        pop.reinitialize(slots, step=ctx.step, cause=self.name, generator=ctx.generator, death_fitness=scores)

    def state_dict(self) -> dict[str, Any]:
        return {"dormant_history": [dict(entry) for entry in self.dormant_history]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.dormant_history = [dict(entry) for entry in state.get("dormant_history", [])]
