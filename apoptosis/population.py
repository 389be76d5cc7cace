"""The neurons of one MLP layer and every surgery on them.

Neuron ``i`` of a layer is row ``i`` of ``fc.weight`` with ``fc.bias[i]`` (its incoming weights)
and column ``i`` of ``proj.weight`` (its outgoing weights). Strategies decide *who* dies and
*who* breeds; this class does the surgery and keeps everything else consistent with it:

* the optimizer: moments of replaced neurons are zeroed, grown neurons get zero moments, removed
  neurons' moments are dropped, and every other neuron keeps weights and moments bit for bit.
  Parameters keep their identity (their ``.data`` is resized), so the optimizer never holds a
  stale reference after growth or shrinkage;
* the fitness tracker (scores of new neurons start empty) and the lineage (births and deaths);
* per-neuron update scales (``protect``): a protected neuron's optimizer updates are scaled down
  (0 = frozen), which is how knowledge of an earlier task is kept in continual learning.
"""

from __future__ import annotations

import torch

from apoptosis.fitness import FitnessTracker
from apoptosis.lineage import Lineage
from apoptosis.model import MLP

OUTGOING_MODES = ("zero", "split", "copy")


class NeuronPopulation:
    def __init__(
        self, layer: int, mlp: MLP, optimizer: torch.optim.Optimizer, fitness: FitnessTracker, lineage: Lineage
    ) -> None:
        self.layer = layer
        self.mlp = mlp
        self.optimizer = optimizer
        self.fitness_tracker = fitness
        self.lineage = lineage
        self.update_scale = torch.ones(mlp.width)  # (width,) on the CPU, so reading it never waits for a GPU

    # --- reading ------------------------------------------------------------------------------

    @property
    def width(self) -> int:
        return self.mlp.width

    def ids(self) -> list[int]:
        return self.lineage.ids(self.layer)

    def fitness(self) -> torch.Tensor:
        """(width,) fitness on the CPU; higher is fitter."""
        return self.fitness_tracker.scores(self.layer)

    def ages(self, step: int) -> torch.Tensor:
        return torch.tensor([step - self.lineage.record(i).birth_step for i in self.ids()])

    def mature(self, step: int, maturity: int) -> torch.Tensor:
        """(width,) bool: neurons at least ``maturity`` steps old, not masked and not protected
        (what a strategy may kill)."""
        return (self.ages(step) >= maturity) & self.active() & ~self.protected()

    def protected(self) -> torch.Tensor:
        """(width,) bool: neurons whose updates are scaled below 1."""
        return self.update_scale < 1.0

    def active(self) -> torch.Tensor:
        return self.mlp.gate.mask.detach().cpu() > 0

    @torch.no_grad()
    def incoming(self) -> torch.Tensor:
        """(width, d_model + 1) copy of every neuron's incoming weights and bias."""
        return torch.cat([self.mlp.fc.weight, self.mlp.fc.bias[:, None]], dim=1).detach().float().cpu().clone()

    @torch.no_grad()
    def outgoing(self) -> torch.Tensor:
        """(width, d_model) copy of every neuron's outgoing weights."""
        return self.mlp.proj.weight.t().detach().float().cpu().clone()

    # --- surgery ------------------------------------------------------------------------------

    @torch.no_grad()
    def replace(
        self,
        slots: torch.Tensor,
        incoming: torch.Tensor,
        outgoing: torch.Tensor,
        *,
        step: int,
        parents: list[tuple[int, ...]],
        cause: str,
    ) -> list[int]:
        """Kill the neurons in ``slots`` and put new ones there.

        incoming: (k, d_model + 1) weights and bias; outgoing: (k, d_model); parents: for each
        new neuron, the *slots* of its parents (read before anything changes). Returns new ids.
        """
        slots = _as_index(slots)
        k = len(slots)
        assert incoming.shape == (k, self.mlp.fc.in_features + 1), incoming.shape
        assert outgoing.shape == (k, self.mlp.proj.out_features), outgoing.shape
        assert len(parents) == k
        fit = self.fitness()
        ids = self.ids()
        parent_ids = [tuple(ids[p] for p in ps) for ps in parents]
        parent_fitness = [float(fit[list(ps)].mean()) if ps else None for ps in parents]
        for slot in slots.tolist():
            self.lineage.death(ids[slot], step, cause, float(fit[slot]))

        fc, proj = self.mlp.fc, self.mlp.proj
        dev_slots = slots.to(fc.weight.device)
        fc.weight[dev_slots] = incoming[:, :-1].to(fc.weight)
        fc.bias[dev_slots] = incoming[:, -1].to(fc.bias)
        proj.weight[:, dev_slots] = outgoing.t().to(proj.weight)
        self.mlp.gate.mask[dev_slots] = 1.0
        self.update_scale[slots] = 1.0
        self._zero_moments(dev_slots)
        self.fitness_tracker.reset(self.layer, dev_slots)
        return [
            self.lineage.birth(self.layer, slot, step, pid, pf)
            for slot, pid, pf in zip(slots.tolist(), parent_ids, parent_fitness, strict=True)
        ]

    @torch.no_grad()
    def copy_from(
        self,
        slots: torch.Tensor,
        parent_slots: torch.Tensor,
        *,
        step: int,
        mutation_strength: float,
        outgoing: str,
        generator: torch.Generator,
        cause: str,
    ) -> list[int]:
        """Replace ``slots`` by mutated children of ``parent_slots`` (one parent per child).

        child incoming = parent's + mutation_strength x RMS(parent's) x N(0, 1) (the bias is
        mutated with the RMS of the parents' biases). outgoing: ``zero`` (the child starts silent),
        ``split`` (parent and its children share the parent's outgoing weights equally, so with
        no mutation the layer's output is unchanged) or ``copy`` (the child gets them whole).
        """
        if outgoing not in OUTGOING_MODES:
            raise ValueError(f"outgoing must be one of {OUTGOING_MODES}, got {outgoing!r}")
        slots, parent_slots = _as_index(slots), _as_index(parent_slots)
        incoming = self.mutate(self.incoming()[parent_slots], mutation_strength, generator)
        out = self._children_outgoing(parent_slots, outgoing)
        return self.replace(slots, incoming, out, step=step, parents=[(int(p),) for p in parent_slots], cause=cause)

    @torch.no_grad()
    def crossover(
        self,
        slots: torch.Tensor,
        parent_a: torch.Tensor,
        parent_b: torch.Tensor,
        share_a: torch.Tensor,
        *,
        step: int,
        mutation_strength: float,
        generator: torch.Generator,
        cause: str,
    ) -> list[int]:
        """Replace ``slots`` by children of two parents each.

        share_a: (k, d_model + 1) in [0, 1], how much of parent a each incoming weight takes
        (a 0/1 mask is uniform crossover, a constant is blending). Outgoing weights start at zero.
        """
        slots, parent_a, parent_b = _as_index(slots), _as_index(parent_a), _as_index(parent_b)
        w = self.incoming()
        child = share_a * w[parent_a] + (1 - share_a) * w[parent_b]
        child = self.mutate(child, mutation_strength, generator)
        out = torch.zeros(len(slots), self.mlp.proj.out_features)
        parents = [(int(a), int(b)) for a, b in zip(parent_a, parent_b, strict=True)]
        return self.replace(slots, child, out, step=step, parents=parents, cause=cause)

    @torch.no_grad()
    def grow(
        self,
        k: int,
        *,
        step: int,
        parent_slots: torch.Tensor | None = None,
        mutation_strength: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> list[int]:
        """Add ``k`` neurons at the end of the layer; returns their ids.

        With parents, each newborn is split from its parent Net2Net-style (see ``copy_from``'s
        ``split``): with no mutation the model's outputs are unchanged. Without parents, newborns
        get small random incoming weights and zero outgoing weights (also output-preserving).
        """
        if k < 1:
            return []
        generator = generator or torch.Generator().manual_seed(0)
        d_model = self.mlp.fc.in_features
        if parent_slots is not None:
            parent_slots = _as_index(parent_slots)
            assert len(parent_slots) == k
            incoming = self.mutate(self.incoming()[parent_slots], mutation_strength, generator)
            outgoing = self._children_outgoing(parent_slots, "split")
            parents = [(int(p),) for p in parent_slots]
        else:
            incoming = torch.randn(k, d_model + 1, generator=generator) * 0.02
            incoming[:, -1] = 0.0
            outgoing = torch.zeros(k, self.mlp.proj.out_features)
            parents = [()] * k
        ids = self.ids()
        fit = self.fitness()
        parent_ids = [tuple(ids[p] for p in ps) for ps in parents]
        parent_fitness = [float(fit[list(ps)].mean()) if ps else None for ps in parents]

        fc, proj = self.mlp.fc, self.mlp.proj
        old = self.width
        self._resize(lambda t, dim: _append_zeros(t, dim, k))
        self.mlp.gate.mask[old:] = 1.0
        self.update_scale[old:] = 1.0
        fc.weight[old:] = incoming[:, :-1].to(fc.weight)
        fc.bias[old:] = incoming[:, -1].to(fc.bias)
        proj.weight[:, old:] = outgoing.t().to(proj.weight)
        self.fitness_tracker.grow(self.layer, k)
        return [
            self.lineage.birth(self.layer, old + i, step, pid, pf)
            for i, (pid, pf) in enumerate(zip(parent_ids, parent_fitness, strict=True))
        ]

    @torch.no_grad()
    def shrink(self, slots: torch.Tensor, *, step: int, cause: str) -> None:
        """Remove the neurons in ``slots``; the others move down to fill the gaps, in order."""
        slots = _as_index(slots)
        keep = torch.ones(self.width, dtype=torch.bool)
        keep[slots] = False
        keep_slots = keep.nonzero().squeeze(1)
        if len(keep_slots) == 0:
            raise ValueError("a layer cannot shrink to zero neurons")
        fit = self.fitness()
        ids = self.ids()
        for slot in slots.tolist():
            self.lineage.death(ids[slot], step, cause, float(fit[slot]))
        dev_keep = keep_slots.to(self.mlp.fc.weight.device)
        self._resize(lambda t, dim: t.index_select(dim, dev_keep))
        self.fitness_tracker.keep(self.layer, dev_keep)
        self.lineage.compact(self.layer, keep_slots.tolist())

    @torch.no_grad()
    def set_mask(self, slots: torch.Tensor, active: bool) -> None:
        """Silence (``active=False``) or revive neurons without removing them; saved with the model."""
        self.mlp.gate.mask[_as_index(slots).to(self.mlp.gate.mask.device)] = 1.0 if active else 0.0

    def protect(self, slots: torch.Tensor, factor: float) -> None:
        """Scale every later optimizer update of these neurons (incoming and outgoing weights) by
        ``factor``: 0 freezes them, 1 lifts the protection. A newborn in a slot starts at 1."""
        if not 0.0 <= factor <= 1.0:
            raise ValueError(f"an update scale must be in [0, 1], got {factor}")
        self.update_scale[_as_index(slots)] = factor

    @torch.no_grad()
    def before_update(self) -> list[torch.Tensor] | None:
        """Copies of the neuron tensors before an optimizer step, or None when no neuron is
        protected (then ``after_update`` has nothing to do and nothing is copied)."""
        if not bool(self.protected().any()):
            return None
        return [param.detach().clone() for param, _ in self._neuron_params()]

    @torch.no_grad()
    def after_update(self, before: list[torch.Tensor] | None) -> None:
        """Scale the step just taken per neuron: w = w_before + scale * (w_after - w_before), so
        any optimizer (weight decay included) moves a protected neuron by ``scale`` of its step."""
        if before is None:
            return
        for (param, dim), old in zip(self._neuron_params(), before, strict=True):
            shape = [1] * param.dim()
            shape[dim] = -1
            scale = self.update_scale.to(param).view(shape)
            param.copy_(old + scale * (param - old))

    # --- helpers ------------------------------------------------------------------------------

    @staticmethod
    def mutate(weights: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
        """weights (k, d_model + 1) + strength x RMS x N(0, 1); rows scaled by their own weight RMS,
        the bias column by the RMS of the given biases."""
        if strength == 0:
            return weights.clone()
        noise = torch.randn(weights.shape, generator=generator)
        scale = weights[:, :-1].pow(2).mean(dim=1, keepdim=True).sqrt().expand(-1, weights.shape[1]).clone()
        scale[:, -1] = weights[:, -1].pow(2).mean().sqrt()
        return weights + strength * scale * noise

    def _children_outgoing(self, parent_slots: torch.Tensor, mode: str) -> torch.Tensor:
        """(k, d_model) outgoing weights for children of ``parent_slots``; ``split`` also scales
        the parents' own outgoing weights, so call it only as part of a surgery."""
        out = self.outgoing()[parent_slots]
        if mode == "zero":
            return torch.zeros_like(out)
        if mode == "copy":
            return out
        counts = torch.bincount(parent_slots, minlength=self.width).float()
        share = 1.0 / (counts[parent_slots] + 1.0)
        proj = self.mlp.proj.weight
        parents = torch.unique(parent_slots)
        proj[:, parents.to(proj.device)] *= (1.0 / (counts[parents] + 1.0)).to(proj)
        return out * share[:, None]

    def _zero_moments(self, slots: torch.Tensor) -> None:
        for param, dim in self._neuron_params():
            for value in self.optimizer.state.get(param, {}).values():
                if torch.is_tensor(value) and value.shape == param.shape:
                    value.index_fill_(dim, slots, 0.0)

    def _neuron_params(self) -> list[tuple[torch.nn.Parameter, int]]:
        """Each neuron tensor with the dimension that indexes neurons."""
        return [(self.mlp.fc.weight, 0), (self.mlp.fc.bias, 0), (self.mlp.proj.weight, 1)]

    def _resize(self, along_neurons) -> None:
        """Apply ``along_neurons(tensor, dim)`` to every neuron tensor, its optimizer state and
        the mask, keeping parameter identity."""
        for param, dim in self._neuron_params():
            state = self.optimizer.state.get(param, {})
            for key, value in list(state.items()):
                if torch.is_tensor(value) and value.shape == param.shape:
                    state[key] = along_neurons(value, dim)
            param.data = along_neurons(param.data, dim)
            param.grad = None
        gate = self.mlp.gate
        gate.mask = along_neurons(gate.mask, 0)
        self.update_scale = along_neurons(self.update_scale.to(gate.mask.device), 0).cpu()
        width = self.mlp.fc.weight.shape[0]
        self.mlp.fc.out_features = width
        self.mlp.proj.in_features = width


def _append_zeros(t: torch.Tensor, dim: int, k: int) -> torch.Tensor:
    shape = list(t.shape)
    shape[dim] = k
    return torch.cat([t, t.new_zeros(shape)], dim=dim)


def _as_index(slots: torch.Tensor | list[int]) -> torch.Tensor:
    return torch.as_tensor(slots, dtype=torch.long).flatten().cpu()
