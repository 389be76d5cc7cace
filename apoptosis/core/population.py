"""The neurons of one MLP layer and every surgery on them.

Neuron ``i`` of a layer is row ``i`` of ``fc.weight`` with ``fc.bias[i]`` (its incoming weights)
and column ``i`` of ``proj.weight`` (its outgoing weights). Strategies decide *who* dies and
*who* breeds; this class does the surgery and keeps everything else consistent with it:

* the optimizer: moments of replaced neurons are zeroed, grown neurons get zero moments, removed
  neurons' moments are dropped, and every other neuron keeps weights and moments bit for bit.
  Parameters keep their identity (their ``.data`` is resized), so the optimizer never holds a
  stale reference after growth or shrinkage;
* the fitness tracker (scores of new neurons start empty) and the lineage (births and deaths);
* per-neuron optimizer updates (``NeuronUpdates``): each newborn gets Adam's bias correction from
  its own birth, and a protected neuron's updates are scaled down (0 = frozen), which is how
  knowledge of an earlier task is kept in continual learning.

In a split (Net2Net: parent and child share the parent's outgoing weights), the gradient that
reaches each copy's activation is the share of the parent's, while each copy's outgoing gradient
is the parent's own (its activation is unchanged). So the incoming moments of parent and child are
scaled with the split (m by the share, v by its square) and the outgoing moments are kept: Adam's
step m / sqrt(v) is then what the parent alone would have taken, and the split does not disturb
training. A grown child inherits the parent's moments and age; a replaced one starts fresh.
"""

from __future__ import annotations

import torch

from apoptosis.core.fitness import FitnessTracker
from apoptosis.core.lineage import Lineage
from apoptosis.core.model import INIT_STD, MLP
from apoptosis.core.neuron_updates import NeuronUpdates

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
        self.updates = NeuronUpdates(mlp.width, optimizer, self._neuron_params)

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
        return self.updates.protected()

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
        death_fitness: torch.Tensor | None = None,
    ) -> list[int]:
        """Kill the neurons in ``slots`` and put new ones there.

        incoming: (k, d_model + 1) weights and bias; outgoing: (k, d_model); parents: for each
        new neuron, the *slots* of its parents (read before anything changes); death_fitness:
        (k,) the score each dying neuron is recorded with in the lineage (by default its
        ``fitness()``; a strategy that ranks by a score of its own passes that). Returns new ids.
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
        dying_fitness = fit[slots] if death_fitness is None else torch.as_tensor(death_fitness).flatten().cpu()
        for slot, value in zip(slots.tolist(), dying_fitness.tolist(), strict=True):
            self.lineage.death(ids[slot], step, cause, float(value))

        fc, proj = self.mlp.fc, self.mlp.proj
        dev_slots = slots.to(fc.weight.device)
        fc.weight[dev_slots] = incoming[:, :-1].to(fc.weight)
        fc.bias[dev_slots] = incoming[:, -1].to(fc.bias)
        proj.weight[:, dev_slots] = outgoing.t().to(proj.weight)
        self.mlp.gate.mask[dev_slots] = 1.0
        self._zero_moments(dev_slots)
        self.updates.reborn(slots)
        self.fitness_tracker.reset(self.layer, dev_slots)
        return [
            self.lineage.birth(self.layer, slot, step, pid, pf)
            for slot, pid, pf in zip(slots.tolist(), parent_ids, parent_fitness, strict=True)
        ]

    @torch.no_grad()
    def reinitialize(
        self,
        slots: torch.Tensor,
        *,
        step: int,
        cause: str,
        generator: torch.Generator,
        outgoing_std: float = 0.0,
        death_fitness: torch.Tensor | None = None,
    ) -> list[int]:
        """Replace ``slots`` by newborns without parents, drawn from the model's initial
        distribution: incoming weights N(0, ``INIT_STD``) and bias 0; outgoing weights
        N(0, ``outgoing_std``), by default 0 (the newborn starts silent, so the layer's output is
        unchanged). Drawn on the CPU from ``generator``; the rest is ``replace``'s (moments zeroed,
        Adam's bias correction counted from the birth, fitness reset, lineage)."""
        slots = _as_index(slots)
        k, d_model, d_out = len(slots), self.mlp.fc.in_features, self.mlp.proj.out_features
        incoming = torch.cat([torch.randn(k, d_model, generator=generator) * INIT_STD, torch.zeros(k, 1)], dim=1)
        out = torch.randn(k, d_out, generator=generator) * outgoing_std if outgoing_std else torch.zeros(k, d_out)
        return self.replace(slots, incoming, out, step=step, parents=[()] * k, cause=cause, death_fitness=death_fitness)

    @torch.no_grad()
    def add_to_output_bias(self, delta: torch.Tensor) -> None:
        """Add ``delta`` (d_model,) to the layer's output bias (``proj.bias``, which belongs to no
        neuron): where a removed neuron's mean contribution can be kept. Its optimizer state is
        left as it is."""
        bias = self.mlp.proj.bias
        assert delta.shape == bias.shape, delta.shape
        bias.add_(delta.to(bias))

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
        fc.weight[old:] = incoming[:, :-1].to(fc.weight)
        fc.bias[old:] = incoming[:, -1].to(fc.bias)
        proj.weight[:, old:] = outgoing.t().to(proj.weight)
        if parent_slots is not None:
            self._inherit_moments(torch.arange(old, old + k), parent_slots)
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
        self.updates.protect(_as_index(slots), factor)

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
        parent_share = 1.0 / (counts[parents] + 1.0)
        proj[:, parents.to(proj.device)] *= parent_share.to(proj)
        self._scale_incoming_moments(parents, parent_share)
        return out * share[:, None]

    def _scale_incoming_moments(self, slots: torch.Tensor, share: torch.Tensor) -> None:
        """The gradient reaching a split neuron's activation is ``share`` of what it was: scale
        its incoming first moments by ``share`` and second moments by its square."""
        for param, dim in self._neuron_params()[:2]:  # fc.weight rows and fc.bias
            state = self.optimizer.state.get(param, {})
            for key, power in (("exp_avg", 1), ("exp_avg_sq", 2)):
                if key in state:
                    view = [1] * param.dim()
                    view[dim] = -1
                    factor = share.pow(power).to(state[key]).view(view)
                    index = slots.to(param.device)
                    state[key].index_copy_(dim, index, state[key].index_select(dim, index) * factor)

    def _inherit_moments(self, children: torch.Tensor, parents: torch.Tensor) -> None:
        """Grown children of a split take their parents' moments (already scaled to the split) and
        age, so parent and child continue as one neuron would have."""
        for param, dim in self._neuron_params():
            state = self.optimizer.state.get(param, {})
            for key in ("exp_avg", "exp_avg_sq"):
                if key in state:
                    index = parents.to(param.device)
                    state[key].index_copy_(dim, children.to(param.device), state[key].index_select(dim, index))
        self.updates.inherit(children, parents)

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
        self.updates.resize(lambda t, dim: along_neurons(t.to(gate.mask.device), dim).cpu())
        width = self.mlp.fc.weight.shape[0]
        self.mlp.fc.out_features = width
        self.mlp.proj.in_features = width


def restart_optimizer(optimizer: torch.optim.Optimizer, populations: list[NeuronPopulation]) -> None:
    """Forget the optimizer's state of every parameter (Adam's moments and step counts), as a
    newly built optimizer would have it: the next step starts them again from zero. Every
    neuron's own bias-correction clock restarts with its tensor's (none stays young); update
    scales (protection) are kept. Learning rates and other settings are untouched."""
    optimizer.state.clear()
    for pop in populations:
        assert pop.optimizer is optimizer
        pop.updates.restart_clocks()


def _append_zeros(t: torch.Tensor, dim: int, k: int) -> torch.Tensor:
    shape = list(t.shape)
    shape[dim] = k
    return torch.cat([t, t.new_zeros(shape)], dim=dim)


def _as_index(slots: torch.Tensor | list[int]) -> torch.Tensor:
    return torch.as_tensor(slots, dtype=torch.long).flatten().cpu()
