"""Per-neuron control of one MLP layer's optimizer updates: Adam's bias correction counted from
each neuron's birth, and update scales that protect neurons.

Why the bias correction: PyTorch's AdamW keeps one step count per tensor. When surgery zeroes a
newborn's moments, that count stays large, so the bias correction is ~1 while the second moment
restarts from zero, and the newborn's first updates are several times what Adam gives a fresh
parameter (2.1x with beta2 0.99, 6.6x with 0.999). Continual Backprop's AdamGnT keeps a step count
per element for this reason. Here each neuron remembers the optimizer step at which its moments
were last reset (``born_at``), and after each optimizer step the rows of young neurons get the
exact AdamW update at their own age (``a`` updates since birth) instead of the tensor's (``t``):

    w <- w_before * (1 - lr * wd) - lr / (1 - beta1^a) * m / (sqrt(v) / sqrt(1 - beta2^a) + eps)

Decay and moments are the same in both, so the optimizer's result is corrected in place: with
``r = sqrt(v)`` and ``c = sqrt(1 - beta2^.)``, AdamW's step is ``lr c / (1 - beta1^.) * m / (r + eps c)``,
and the rows get ``m * (A / (r + eps c_t) - B / (r + eps c_a))`` added, ``A`` and ``B`` the two
``lr c / (1 - beta1^.)``. Nothing is copied before the step; the age factors come from a table
per (beta1, beta2), and a layer's three neuron tensors are corrected as one matrix, because at
this size every small operation costs more than its arithmetic.

Neurons whose correction no longer differs from the tensor's (beta1^a and beta2^a below 1e-7)
stop being young, so the hot loop does nothing once newborns have grown up; by the same bound the
tables end at that age, and a tensor older than it reads their last entry. Founders are never
young. On a GPU the fused optimizer keeps its step count on the device: the hot loop never reads
it on the host (only surgery does), so a step does not wait for the GPU. Only
``torch.optim.AdamW`` (and ``Adam`` without weight decay) is corrected; other optimizers are left
as they are.

Why the scales: ``protect`` in continual learning slows (0 = freezes) a neuron's updates, whatever
the optimizer does, as w = w_before + scale * (w_after - w_before).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import torch

YOUNG_UNTIL = 1e-7  # a neuron is young while beta1 ** age or beta2 ** age is above this
NeuronTensor = tuple[torch.nn.Parameter, int]  # a tensor holding one slice per neuron, and that dimension


class NeuronUpdates:
    def __init__(self, width: int, optimizer: torch.optim.Optimizer, tensors: Callable[[], list[NeuronTensor]]) -> None:
        self.optimizer = optimizer
        self.tensors = tensors
        self.scale = torch.ones(width)  # (width,) on the CPU, so reading it never waits for a GPU
        self.born_at = torch.zeros(width, dtype=torch.long)  # optimizer step of the last moment reset
        self._groups: dict[int, dict[str, Any] | None] = {}  # id(param) -> its AdamW group
        self._before: list[torch.Tensor] | None = None
        # The young slots (None: to be found), their birth steps on the tensors' device, and the
        # optimizer steps left before the first of them grows up (counted down by ``after_step``).
        self._young_slots: torch.Tensor | None = None
        self._young_index = self._young_born = torch.zeros(0, dtype=torch.long)  # set by ``_find_young``
        self._young_left = 0.0

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
        self._young_slots = None

    def inherit(self, children: torch.Tensor, parents: torch.Tensor) -> None:
        """Children that took their parents' moments also take their age and protection."""
        self.born_at[children] = self.born_at[parents]
        self.scale[children] = self.scale[parents]
        self._young_slots = None

    def resize(self, along_neurons: Callable[[torch.Tensor, int], torch.Tensor]) -> None:
        """Apply the population's resize (index_select, or append zeros) to the per-neuron state;
        appended neurons are fresh: scale 1 and born now."""
        old = len(self.scale)
        self.scale = along_neurons(self.scale, 0)
        self.born_at = along_neurons(self.born_at, 0)
        self._young_slots = None
        if len(self.scale) > old:
            self.reborn(torch.arange(old, len(self.scale)))

    def restart_clocks(self) -> None:
        """The optimizer's state was cleared: every neuron's bias correction restarts with its
        tensor's, so none is young."""
        self.born_at.zero_()
        self._young_slots = None
        self._groups.clear()

    def protect(self, slots: torch.Tensor, factor: float) -> None:
        if not 0.0 <= factor <= 1.0:
            raise ValueError(f"an update scale must be in [0, 1], got {factor}")
        self.scale[slots] = factor

    def protected(self) -> torch.Tensor:
        """(width,) bool: neurons whose updates are scaled below 1."""
        return self.scale < 1.0

    def young(self) -> torch.Tensor:
        """Slots whose Adam bias correction still differs from their tensor's. Found once per
        surgery or coming of age (reading the optimizer's step count), then kept."""
        if self._young_slots is None or self._young_left <= 0:
            self._find_young()
        assert self._young_slots is not None
        return self._young_slots

    def _find_young(self) -> None:
        adam = self._adam_group()
        slots, left = torch.empty(0, dtype=torch.long), math.inf  # none until surgery
        if adam is not None:
            step, youth = self.optimizer_step(), _youth(*adam["betas"])
            slots = ((self.born_at > 0) & ((step - self.born_at) < youth)).nonzero().squeeze(1)
            if len(slots):
                left = int(self.born_at[slots].min()) + youth - step
        self._young_slots, self._young_left = slots, left
        device = self.tensors()[0][0].device
        self._young_index, self._young_born = slots.to(device), self.born_at[slots].to(device)

    # --- around the optimizer step ------------------------------------------------------------

    @torch.no_grad()
    def before_step(self) -> None:
        """Remember what ``after_step`` needs: which neurons are young (found if need be), and whole
        tensors when a neuron is protected. Nothing is copied when no neuron is protected."""
        self.young()
        self._before = None
        if bool(self.protected().any()):
            self._before = [param.detach().clone() for param, _ in self.tensors()]

    @torch.no_grad()
    def after_step(self) -> None:
        self._young_left -= 1
        if len(self._young_index):
            self._correct_young()
        if self._before is not None:
            for (param, dim), old in zip(self.tensors(), self._before, strict=True):
                param.copy_(old + self.scale.to(param).view(_along(param, dim)) * (param - old))
        self._before = None

    def _correct_young(self) -> None:
        """Swap the tensor's bias correction for each young neuron's own in the update just made."""
        tensors = [(param, dim) for param, dim in self.tensors() if "exp_avg" in self.optimizer.state.get(param, {})]
        groups = [self._group_of(param) for param, _ in tensors]
        if not tensors or any(g is None for g in groups):
            return
        adam = groups[0]
        assert adam is not None
        settings = ("lr", "betas", "eps")
        if any(any(g[k] != adam[k] for k in settings) for g in groups if g is not None):  # never in our trainer
            raise ValueError("per-neuron bias correction needs one lr, betas and eps for a layer's neuron tensors")
        device = tensors[0][0].device
        index, born = self._young_index, self._young_born  # the young slots', kept on the device
        (beta1, beta2), lr, eps = adam["betas"], adam["lr"], adam["eps"]
        ratio, root = _age_tables(beta1, beta2, device)
        youth = len(ratio) - 1
        step = self.optimizer.state[tensors[0][0]]["step"]  # on the host, or the GPU's count: never read there
        if step.device.type == "cpu":
            step = int(step)
            tensor_age = min(step, youth)
        else:
            tensor_age = step.clamp(max=youth).long()
        made_scale, made_eps = ratio[tensor_age] * lr, root[tensor_age] * eps  # lr c / (1 - beta1^t), eps c
        age = (step - born).clamp_(1, youth).long()  # (young,)
        own_scale, own_eps = ratio[age].mul_(lr), root[age].mul_(eps)  # (young,) each

        # A layer's young rows side by side, neurons first: (young, columns of every tensor).
        def rows(values: list[torch.Tensor]) -> torch.Tensor:
            taken = [v.index_select(d, index).movedim(d, 0).reshape(len(index), -1)
                     for v, (_, d) in zip(values, tensors, strict=True)]  # fmt: skip
            return torch.cat(taken, dim=1)

        states = [self.optimizer.state[param] for param, _ in tensors]
        m = rows([state["exp_avg"] for state in states])
        root_v = rows([state["exp_avg_sq"] for state in states]).sqrt_()
        made = (root_v + made_eps).reciprocal_().mul_(made_scale)
        own = own_scale.unsqueeze(1) / (root_v + own_eps.unsqueeze(1))
        delta = m.mul_(made.sub_(own))
        widths = [param.numel() // param.size(dim) for param, dim in tensors]
        for (param, dim), part in zip(tensors, delta.split(widths, dim=1), strict=True):
            shape = [len(index), *(n for i, n in enumerate(param.shape) if i != dim)]
            param.detach().index_add_(dim, index, part.reshape(shape).movedim(0, dim))

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
        self._young_slots = None
        self._groups.clear()  # a restored optimizer holds new group dicts
        if isinstance(state, torch.Tensor):
            self.scale = state.clone()
            self.born_at = torch.zeros(len(state), dtype=torch.long)
            return
        self.scale = state["scale"].clone()
        self.born_at = state["born_at"].clone()


@functools.cache
def _youth(beta1: float, beta2: float) -> int:
    """Updates after which a neuron's Adam bias correction no longer differs from its tensor's."""
    slowest = max(beta1, beta2)
    return math.ceil(math.log(YOUNG_UNTIL) / math.log(slowest)) if 0 < slowest < 1 else 1


@functools.cache
def _age_tables(beta1: float, beta2: float, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """By age a (updates since the moments' reset, 0 .. youth): ``sqrt(1 - beta2^a) / (1 - beta1^a)``
    and ``sqrt(1 - beta2^a)``, float32 on ``device`` (computed in float64; age 0 is never read)."""
    age = torch.arange(_youth(beta1, beta2) + 1, dtype=torch.float64).clamp_min(1)
    root = (1 - beta2**age).sqrt()
    return (root / (1 - beta1**age)).to(device, torch.float32), root.to(device, torch.float32)


def _along(param: torch.Tensor, dim: int) -> list[int]:
    """A view shape that broadcasts a per-neuron vector along ``dim`` of ``param``."""
    shape = [1] * param.dim()
    shape[dim] = -1
    return shape
