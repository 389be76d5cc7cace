"""Per-neuron control of one MLP layer's optimizer updates: Adam's bias correction counted from
each neuron's birth, and update scales that protect neurons.

Why the bias correction: PyTorch's AdamW keeps one step count per tensor. When surgery zeroes a
newborn's moments, that count stays large, so the bias correction is ~1 while the second moment
restarts from zero, and the newborn's first updates are several times what Adam gives a fresh
parameter (2.1x with beta2 0.99, 6.6x with 0.999). Continual Backprop's AdamGnT keeps a step count
per element for this reason. Here each neuron remembers the optimizer step at which its moments
were last reset (``born_at``), and after each optimizer step the rows of young neurons are
recomputed with the exact AdamW formula at their own age (``a`` updates since birth):

    w <- w_before * (1 - lr * wd) - lr / (1 - beta1^a) * m / (sqrt(v / (1 - beta2^a)) + eps)

Neurons whose correction no longer differs from the tensor's (beta2^a below 1e-7) stop being
young, so the hot loop does nothing once newborns have grown up. Founders are never young. Only
``torch.optim.AdamW`` (and ``Adam`` without weight decay) is corrected; other optimizers are left
as they are.

Why the scales: ``protect`` in continual learning slows (0 = freezes) a neuron's updates, whatever
the optimizer does, as w = w_before + scale * (w_after - w_before).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

YOUNG_UNTIL = 1e-7  # a neuron is young while beta2 ** age is above this
NeuronTensor = tuple[torch.nn.Parameter, int]  # a tensor holding one slice per neuron, and that dimension


class NeuronUpdates:
    def __init__(self, width: int, optimizer: torch.optim.Optimizer, tensors: Callable[[], list[NeuronTensor]]) -> None:
        self.optimizer = optimizer
        self.tensors = tensors
        self.scale = torch.ones(width)  # (width,) on the CPU, so reading it never waits for a GPU
        self.born_at = torch.zeros(width, dtype=torch.long)  # optimizer step of the last moment reset
        self._groups: dict[int, dict[str, Any] | None] = {}  # id(param) -> its AdamW group
        self._before: list[torch.Tensor] | None = None
        self._young: torch.Tensor | None = None
        self._young_before: list[torch.Tensor] = []

    # --- what surgery tells it ----------------------------------------------------------------

    def optimizer_step(self) -> int:
        """Updates the layer's tensors have received so far (0 before the first)."""
        state = self.optimizer.state.get(self.tensors()[0][0], {})
        step = state.get("step")
        return int(step) if step is not None else 0

    def reborn(self, slots: torch.Tensor) -> None:
        """Moments of ``slots`` were just reset: their bias correction starts again, unprotected."""
        self.born_at[slots] = self.optimizer_step()
        self.scale[slots] = 1.0

    def inherit(self, children: torch.Tensor, parents: torch.Tensor) -> None:
        """Children that took their parents' moments also take their age and protection."""
        self.born_at[children] = self.born_at[parents]
        self.scale[children] = self.scale[parents]

    def resize(self, along_neurons: Callable[[torch.Tensor, int], torch.Tensor]) -> None:
        """Apply the population's resize (index_select, or append zeros) to the per-neuron state;
        appended neurons are fresh: scale 1 and born now."""
        old = len(self.scale)
        self.scale = along_neurons(self.scale, 0)
        self.born_at = along_neurons(self.born_at, 0)
        if len(self.scale) > old:
            self.reborn(torch.arange(old, len(self.scale)))

    def protect(self, slots: torch.Tensor, factor: float) -> None:
        if not 0.0 <= factor <= 1.0:
            raise ValueError(f"an update scale must be in [0, 1], got {factor}")
        self.scale[slots] = factor

    def protected(self) -> torch.Tensor:
        """(width,) bool: neurons whose updates are scaled below 1."""
        return self.scale < 1.0

    def young(self) -> torch.Tensor:
        """Slots whose Adam bias correction still differs from their tensor's."""
        adam = self._adam_group()
        if adam is None:
            return torch.empty(0, dtype=torch.long)
        beta2 = adam["betas"][1]
        step = self.optimizer_step()
        limit = math.log(YOUNG_UNTIL) / math.log(beta2) if 0 < beta2 < 1 else 0.0
        return ((self.born_at > 0) & ((step - self.born_at) < limit)).nonzero().squeeze(1)

    # --- around the optimizer step ------------------------------------------------------------

    @torch.no_grad()
    def before_step(self) -> None:
        """Remember what ``after_step`` needs: the young rows, and whole tensors when a neuron is
        protected. Nothing is copied when no neuron is young or protected."""
        young = self.young()
        self._young = young if len(young) else None
        self._young_before = []
        if self._young is not None:
            self._young_before = [
                param.detach().index_select(dim, self._young.to(param.device)) for param, dim in self.tensors()
            ]
        self._before = None
        if bool(self.protected().any()):
            self._before = [param.detach().clone() for param, _ in self.tensors()]

    @torch.no_grad()
    def after_step(self) -> None:
        if self._young is not None:
            self._correct_young()
        if self._before is not None:
            for (param, dim), old in zip(self.tensors(), self._before, strict=True):
                param.copy_(old + self.scale.to(param).view(_along(param, dim)) * (param - old))
        self._before, self._young, self._young_before = None, None, []

    def _correct_young(self) -> None:
        young = self._young
        assert young is not None
        for (param, dim), old in zip(self.tensors(), self._young_before, strict=True):
            group, state = self._group_of(param), self.optimizer.state.get(param, {})
            if group is None or "exp_avg" not in state:
                continue
            index = young.to(param.device)
            beta1, beta2 = group["betas"]
            age = (int(state["step"]) - self.born_at[young]).clamp_min(1).to(param.device, torch.float64)
            shape = _along(param, dim)
            correction1 = (1 - beta1**age).view(shape)
            correction2 = (1 - beta2**age).view(shape)
            m = state["exp_avg"].index_select(dim, index)
            v = state["exp_avg_sq"].index_select(dim, index)
            lr, decay = group["lr"], group["weight_decay"]
            denom = (v.double() / correction2).sqrt() + group["eps"]
            update = (lr / correction1) * m.double() / denom
            row = old.double() * (1 - lr * decay) - update
            param.index_copy_(dim, index, row.to(param.dtype))

    def _adam_group(self) -> dict[str, Any] | None:
        return self._group_of(self.tensors()[0][0])

    def _group_of(self, param: torch.nn.Parameter) -> dict[str, Any] | None:
        """The param group of ``param`` when its formula is AdamW's; None otherwise."""
        if id(param) not in self._groups:
            self._groups[id(param)] = self._find_group(param)
        return self._groups[id(param)]

    def _find_group(self, param: torch.nn.Parameter) -> dict[str, Any] | None:
        opt = self.optimizer
        if not isinstance(opt, torch.optim.Adam | torch.optim.AdamW):
            return None
        for group in opt.param_groups:
            if any(p is param for p in group["params"]):
                if group.get("amsgrad") or group.get("maximize"):
                    return None
                if not isinstance(opt, torch.optim.AdamW) and group["weight_decay"] != 0:
                    return None  # Adam's L2 decay enters the moments: not this formula
                return group
        return None

    # --- checkpoints --------------------------------------------------------------------------

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"scale": self.scale.clone(), "born_at": self.born_at.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor] | torch.Tensor) -> None:
        """A dict, or a bare scale tensor from checkpoints written before bias correction was
        per neuron (their neurons count as founders)."""
        if isinstance(state, torch.Tensor):
            self.scale = state.clone()
            self.born_at = torch.zeros(len(state), dtype=torch.long)
            return
        self.scale = state["scale"].clone()
        self.born_at = state["born_at"].clone()


def _along(param: torch.Tensor, dim: int) -> list[int]:
    """A view shape that broadcasts a per-neuron vector along ``dim`` of ``param``."""
    shape = [1] * param.dim()
    shape[dim] = -1
    return shape
