"""``l2_init``: L2 regularisation towards the initial parameters, from

    S. Kumar, H. Marklund, B. Van Roy, "Maintaining Plasticity in Continual Learning via
    Regenerative Regularization" (arXiv:2308.11958, 2023).

Every training step adds to the loss

    weight x sum over every parameter of ||theta - theta_0||^2

where theta_0 are the parameters as they were when training began (captured by
``on_train_begin`` before the first step). Parameters that the recent losses leave alone drift
back towards their initial values, which keeps them ready to learn. The term goes through the
optimizer with the loss (its gradient 2 x weight x (theta - theta_0) enters Adam's moments), as
in the paper. theta_0 is saved in the checkpoint, so ``--resume`` regularises towards the same
point (``on_train_begin`` runs again after the checkpoint is loaded and keeps it).

Default: ``weight`` (the paper's lambda) 1e-2. The paper has no single default: it selects
lambda per benchmark with a sweep over powers of ten, and so should a study here
(``apoptosis search``, searched from 1e-5 to 1e-1 on a log scale).

Deviations and notes:

* the trainer's AdamW still applies its decoupled weight decay (``trainer.weight_decay``, 0.1 by
  default) to the weight matrices, pulling them towards 0, which the paper's setting does not
  have; run with ``--set trainer.weight_decay=0`` for the paper's objective alone;
* the sum covers every parameter once (the head is tied to the token embedding), biases and
  LayerNorm parameters included, as ||theta - theta_0||^2 does;
* the model's shapes must not change (no strategy runs alongside a main strategy); if they do
  differ from theta_0's, the run stops with a clear error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from apoptosis.core.errors import ApoptosisError
from apoptosis.core.model import GPT
from apoptosis.core.params import StrategyParams, param
from apoptosis.core.registry import register_strategy
from apoptosis.core.strategy import Strategy, TrainingContext


@dataclass
class L2InitParams(StrategyParams):
    weight: float = param(
        1e-2, low=0.0, high=100.0, search=(1e-5, 1e-1), log=True, help="lambda: weight of ||theta - theta_0||^2"
    )


@register_strategy
class L2Init(Strategy):
    name = "l2_init"
    description = "L2 Init: the loss gains weight x ||theta - theta_0||^2, pulling parameters back to their start"
    Params = L2InitParams
    uses_fitness = False

    def __init__(self, params: StrategyParams | None = None) -> None:
        super().__init__(params)
        self.theta0: dict[str, torch.Tensor] | None = None  # parameter name -> its value at the start

    def on_train_begin(self, ctx: TrainingContext) -> None:
        if self.theta0 is None:  # after a resume it was restored from the checkpoint: keep it
            self.theta0 = {name: p.detach().clone() for name, p in ctx.model.named_parameters()}
        self.check(ctx.model)

    def check(self, model: GPT) -> None:
        """theta_0 must name every parameter of ``model`` with its shape; moves it to the model's device."""
        assert self.theta0 is not None
        params = dict(model.named_parameters())
        if set(params) != set(self.theta0):
            missing = sorted(set(params) ^ set(self.theta0))
            raise ApoptosisError(f"l2_init: the initial parameters do not match the model's ({', '.join(missing)})")
        for name, p in params.items():
            start = self.theta0[name]
            if start.shape != p.shape:
                raise ApoptosisError(
                    f"l2_init: parameter {name} has shape {tuple(p.shape)} but started as {tuple(start.shape)}; "
                    "it cannot follow a model whose layers grow or shrink"
                )
            if start.device != p.device or start.dtype != p.dtype:
                self.theta0[name] = start.to(device=p.device, dtype=p.dtype)

    def extra_loss(self, ctx: TrainingContext) -> torch.Tensor | None:
        if self.params.weight == 0:
            return None
        if self.theta0 is None:
            self.on_train_begin(ctx)
        return self.params.weight * self.distance(ctx.model)

    def distance(self, model: GPT) -> torch.Tensor:
        """sum over every parameter of ||theta - theta_0||^2 (differentiable)."""
        assert self.theta0 is not None
        total = None
        for name, p in model.named_parameters():
            start = self.theta0[name]
            if start.shape != p.shape:
                self.check(model)  # raises the error naming the parameter
            term = (p - start).pow(2).sum()
            total = term if total is None else total + term
        assert total is not None
        return total

    def state_dict(self) -> dict[str, Any]:
        if self.theta0 is None:
            return {}
        return {"theta0": {name: t.detach().cpu().clone() for name, t in self.theta0.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "theta0" in state:
            self.theta0 = {name: t.clone() for name, t in state["theta0"].items()}
