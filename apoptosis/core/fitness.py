"""Neuron fitness, accumulated for free during normal training.

A forward hook on each MLP's ``gate`` (the hidden activation h) and, for gradient metrics, a
tensor hook on h's gradient give every metric a per-step value per neuron. A metric that only
needs the sum over tokens of h * dL/dh (``reads_weight_grad``, the Taylor metrics) gets no hooks:
that sum is a column-wise dot product of the MLP's ``proj`` weight with its gradient, read once
per step by ``FitnessTracker.after_backward``. An exponential moving average (bias-corrected per
neuron, so a newborn is not scored as if it had a history of zeros) carries the value from one
apoptosis event to the next. Metrics are plugins registered by name.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import torch
import torch.nn as nn

from apoptosis.core.model import GPT, MLP
from apoptosis.core.registry import FITNESS_METRICS, register_fitness_metric


class FitnessMetric:
    """Base class: ``step_value`` maps one training step's h (and dL/dh) to a value per neuron;
    ``score`` turns the averaged value into the fitness (higher = fitter). A metric with
    ``reads_weight_grad`` computes the same per-step value from the ``proj`` weight gradient
    instead (``weight_grad_value``), so training needs no hooks for it."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    needs_grad: ClassVar[bool] = False
    reads_weight_grad: ClassVar[bool] = False
    generator: torch.Generator  # set by the tracker, for metrics that draw random numbers

    def step_value(self, h: torch.Tensor, grad: torch.Tensor | None) -> torch.Tensor:
        """h, grad: (B, T, width) -> (width,)."""
        raise NotImplementedError

    def weight_grad_value(self, mlp: MLP) -> torch.Tensor:
        """(width,) from ``mlp.proj.weight`` and its ``.grad`` after ``backward()``: the value
        ``step_value`` gives for that step, for metrics with ``reads_weight_grad``."""
        raise NotImplementedError

    def score(self, average: torch.Tensor, mlp: MLP) -> torch.Tensor:
        return average


@register_fitness_metric
class GradActivation(FitnessMetric):
    name = "grad_activation"
    description = "mean |h * dL/dh| per neuron: first-order estimate of the loss change if it died"
    needs_grad = True

    def step_value(self, h: torch.Tensor, grad: torch.Tensor | None) -> torch.Tensor:
        return (h * grad).abs().mean(dim=(0, 1))


@register_fitness_metric
class Activation(FitnessMetric):
    name = "activation"
    description = "mean |h| per neuron"

    def step_value(self, h: torch.Tensor, grad: torch.Tensor | None) -> torch.Tensor:
        return h.abs().mean(dim=(0, 1))


@register_fitness_metric
class Contribution(Activation):
    name = "contribution"
    description = "mean |h| x L1 norm of the outgoing weights (continual backprop's utility)"

    def score(self, average: torch.Tensor, mlp: MLP) -> torch.Tensor:
        return average * mlp.proj.weight.detach().abs().sum(dim=0)


@register_fitness_metric
class RandomFitness(FitnessMetric):
    name = "random"
    description = "average of uniform noise: a control for every other metric, at the same cost"

    def step_value(self, h: torch.Tensor, grad: torch.Tensor | None) -> torch.Tensor:
        return torch.rand(h.shape[-1], generator=self.generator).to(h.device)


@register_fitness_metric
class TaylorSigned(FitnessMetric):
    name = "taylor_signed"
    description = (
        "-sum of h * dL/dh over the step's tokens: first-order estimate of how much the loss would rise "
        "without the neuron (negative: removing it would lower the loss)"
    )
    needs_grad = True
    reads_weight_grad = True

    def step_value(self, h: torch.Tensor, grad: torch.Tensor | None) -> torch.Tensor:
        return -(h * grad).sum(dim=(0, 1))

    def weight_grad_value(self, mlp: MLP) -> torch.Tensor:
        # y = h @ W^T, so dL/dW[j, i] = sum_tokens dL/dy_j * h_i and sum_j W[j, i] * dL/dW[j, i]
        # = sum_tokens h_i * dL/dh_i: the hooks' sum, from one (d_model, width) product per step.
        weight = mlp.proj.weight
        return -(weight.detach() * weight.grad).sum(dim=0)


@register_fitness_metric
class Taylor(TaylorSigned):
    name = "taylor"
    description = "|sum of h * dL/dh| over the step's tokens: size of the loss change if the neuron died (Molchanov)"

    def step_value(self, h: torch.Tensor, grad: torch.Tensor | None) -> torch.Tensor:
        return super().step_value(h, grad).abs()

    def weight_grad_value(self, mlp: MLP) -> torch.Tensor:
        return super().weight_grad_value(mlp).abs()


class FitnessTracker:
    """Per-layer moving averages of a metric, kept aligned with neuron slots through surgery."""

    def __init__(self, model: GPT, metric: str = "taylor_signed", ema_decay: float = 0.99, seed: int = 0) -> None:
        self.model = model
        self.metric: FitnessMetric = FITNESS_METRICS.get(metric)()
        self.ema_decay = ema_decay
        self.generator = torch.Generator().manual_seed(seed)
        self.metric.generator = self.generator  # the metric's random stream, checkpointed here
        device = next(model.parameters()).device
        self.sums = [torch.zeros(w, device=device) for w in model.mlp_widths()]
        self.weights = [torch.zeros(w, device=device) for w in model.mlp_widths()]
        self._handles: list[Any] = []
        self._attached = False

    @property
    def mlps(self) -> list[MLP]:
        return [block.mlp for block in self.model.blocks]

    def attach(self) -> None:
        """Start watching training steps (forward passes with grad enabled, in train mode); a
        metric that reads weight gradients needs no hooks, only ``after_backward`` calls."""
        if self._attached:
            return
        self._attached = True
        if self.metric.reads_weight_grad:
            return
        for layer, mlp in enumerate(self.mlps):
            self._handles.append(mlp.gate.register_forward_hook(self._make_hook(layer)))

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._attached = False

    @contextmanager
    def paused(self) -> Iterator[None]:
        """No fitness updates inside (a follower's own optimisation is not training)."""
        attached = self._attached
        self.detach()
        try:
            yield
        finally:
            if attached:
                self.attach()

    @torch.no_grad()
    def after_backward(self) -> None:
        """Called by the training step between ``backward()`` and gradient clipping: updates every
        layer from its ``proj`` weight gradient when attached with a ``reads_weight_grad`` metric
        (the gradient then includes a strategy's extra loss, such as replay's). A layer with no
        gradient is skipped."""
        if not (self._attached and self.metric.reads_weight_grad):
            return
        mlps = self.mlps
        layers = [layer for layer, mlp in enumerate(mlps) if mlp.proj.weight.grad is not None]
        if layers:
            self._update(layers, [self.metric.weight_grad_value(mlps[layer]) for layer in layers])

    def _make_hook(self, layer: int):
        def hook(module: nn.Module, inputs: Any, h: torch.Tensor) -> None:
            if not (module.training and torch.is_grad_enabled()):
                return
            value = h.detach()  # no reference back to h: a closure over h would form a cycle
            if self.metric.needs_grad:
                h.register_hook(lambda grad: self._update([layer], [self.metric.step_value(value, grad)]))
            else:
                self._update([layer], [self.metric.step_value(value, None)])

        return hook

    @torch.no_grad()
    def _update(self, layers: list[int], values: list[torch.Tensor]) -> None:
        """One step's ``values`` into the moving averages of ``layers``, all layers in four list
        operations: at this size each small operation costs more than its arithmetic."""
        d = self.ema_decay
        sums, weights = [self.sums[layer] for layer in layers], [self.weights[layer] for layer in layers]
        torch._foreach_mul_(sums, d)
        torch._foreach_add_(sums, values, alpha=1 - d)
        torch._foreach_mul_(weights, d)
        torch._foreach_add_(weights, 1 - d)

    @torch.no_grad()
    def scores(self, layer: int) -> torch.Tensor:
        """Fitness of every neuron of ``layer`` (0 for neurons with no history yet), on the CPU."""
        w = self.weights[layer]
        average = torch.where(w > 0, self.sums[layer] / w.clamp_min(1e-12), torch.zeros_like(w))
        return self.metric.score(average, self.mlps[layer]).float().cpu()

    # --- kept aligned with the population's surgery --------------------------------------------

    def reset(self, layer: int, slots: torch.Tensor) -> None:
        self.sums[layer][slots] = 0.0
        self.weights[layer][slots] = 0.0

    def grow(self, layer: int, k: int) -> None:
        zeros = torch.zeros(k, device=self.sums[layer].device)
        self.sums[layer] = torch.cat([self.sums[layer], zeros])
        self.weights[layer] = torch.cat([self.weights[layer], zeros])

    def keep(self, layer: int, keep_slots: torch.Tensor) -> None:
        self.sums[layer] = self.sums[layer][keep_slots]
        self.weights[layer] = self.weights[layer][keep_slots]

    def state_dict(self) -> dict[str, Any]:
        return {
            "sums": [s.cpu() for s in self.sums],
            "weights": [w.cpu() for w in self.weights],
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        device = self.sums[0].device
        self.sums = [s.to(device) for s in state["sums"]]
        self.weights = [w.to(device) for w in state["weights"]]
        self.generator.set_state(state["generator"])
