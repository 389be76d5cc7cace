"""Per-neuron statistics of one training step's hidden activations, for strategies that score
neurons by what they output (``cbp``, ``redo``) rather than by the run's fitness tracker.

A forward hook on each MLP's ``gate`` (whose output is the hidden activation h, masked) keeps,
from the *first* training forward pass (train mode, gradients on) of every step, the mean of
|h| and of h over the batch's tokens, per neuron. Later forwards of the same step (a follower's
extra loss, for example) are ignored, so the values describe the step's training batch. A strategy
calls ``take()`` in ``on_step_end`` to read the step's values (on the CPU) and ``clear()`` once
its events are done, so forwards made during them do not count for the next step.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from apoptosis.core.population import NeuronPopulation


class StepActivations:
    def __init__(self) -> None:
        self._handles: list[Any] = []
        self._step: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # layer -> (mean |h|, mean h)

    def attach(self, populations: list[NeuronPopulation]) -> None:
        """Watch every population's MLP (replacing any earlier hooks)."""
        self.detach()
        for pop in populations:
            self._handles.append(pop.mlp.gate.register_forward_hook(self._hook(pop.layer)))

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._step = {}

    def _hook(self, layer: int):
        def hook(module: nn.Module, inputs: Any, h: torch.Tensor) -> None:
            if not (module.training and torch.is_grad_enabled()) or layer in self._step:
                return
            with torch.no_grad():
                h = h.detach().float()
                self._step[layer] = (h.abs().mean(dim=(0, 1)), h.mean(dim=(0, 1)))  # (B, T, width) -> (width,)

        return hook

    def take(self) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """This step's (mean |h|, mean h) per layer, on the CPU; layers not seen are absent."""
        values = {layer: (a.cpu(), m.cpu()) for layer, (a, m) in self._step.items()}
        self._step = {}
        return values

    def clear(self) -> None:
        self._step = {}
