"""``functional_preservation``: standard's deaths and parents, but each newborn is fitted, before
the swap, to do the job of the neurons it replaces.

Every ``interval`` steps (never on the last step), in each layer:

* deaths: the ``prune_rate`` share of the layer with the lowest fitness among the mature neurons;
  parents: drawn from the fittest ``parent_pool`` share of the survivors (as ``standard``);
* each newborn starts as a mutated copy of its parent's incoming weights and bias;
* the newborns' incoming weights, biases *and* outgoing weights are then fitted on the layer's
  recent inputs (the input of ``block.mlp``, i.e. the ``ln_2`` output, of the last
  ``buffer_batches`` training batches) so that their summed contribution to the layer's output,
  ``sum_n gelu(x . w_n + b_n) p_n``, matches that of the dying neurons,
  ``sum_d gelu(x . w_d + b_d) mask_d p_d`` (mean squared error). The rest of the layer is
  unchanged by the swap, so this is the whole of the change in the layer's output. The
  outgoing weights start at the least-squares solution for the mutated incoming weights, then
  ``preservation_steps`` Adam steps (learning rate ``preservation_lr``) refine all three; the
  best fit seen (the starting point included) is kept;
* the fitted neurons replace the dying ones through ``NeuronPopulation.replace`` (lineage,
  fitness reset, Adam moments zeroed as for any birth).

The input buffer is filled by forward pre-hooks on every MLP, registered in ``on_train_begin``
and removed in ``on_train_end``; it records only training forwards (module in training mode
with gradients enabled), not evaluation or probe batches. It is saved in checkpoints (a few MB
at the default size), so a resumed run fits on the same inputs as an uninterrupted one. An
event with an empty buffer (before any training step) falls back to no fitting: a mutated child
with zero outgoing weights, as ``standard``'s default.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import torch

from apoptosis.core.params import StrategyParams, param
from apoptosis.core.population import NeuronPopulation
from apoptosis.core.registry import register_strategy
from apoptosis.core.strategy import Strategy, TrainingContext
from apoptosis.strategies.selection import ReplacementParams, select_deaths, select_parents


@dataclass
class FunctionalPreservationParams(ReplacementParams):
    preservation_steps: int = param(
        50, low=0, high=10_000, search=(0, 200), help="Adam steps fitting the newborns to the dying neurons' output"
    )
    preservation_lr: float = param(
        1e-3, low=1e-6, high=1.0, search=(1e-4, 1e-1), log=True, help="learning rate of that fit"
    )
    buffer_batches: int = param(
        4, low=1, high=1000, search=(1, 16), help="recent training batches of MLP inputs the fit uses"
    )


@register_strategy
class FunctionalPreservation(Strategy):
    name = "functional_preservation"
    description = "standard's deaths and parents; newborns fitted to reproduce the dying neurons' output"
    Params = FunctionalPreservationParams

    def __init__(self, params: StrategyParams | None = None) -> None:
        super().__init__(params)
        self.buffers: dict[int, deque[torch.Tensor]] = {}
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []
        self.last_fit: dict[int, dict[str, float]] = {}  # per layer: MSE of zero / start / fitted

    # --- the input buffer ---------------------------------------------------------------------

    def on_train_begin(self, ctx: TrainingContext) -> None:
        self.attach(ctx.populations)

    def on_train_end(self, ctx: TrainingContext) -> None:
        self.detach()

    def attach(self, populations: list[NeuronPopulation]) -> None:
        """Record the inputs of every population's MLP (replacing any earlier hooks)."""
        self.detach()
        for pop in populations:
            device = pop.mlp.fc.weight.device
            restored = [x.to(device) for x in self.buffers.get(pop.layer, [])]  # after a resume
            buffer = self.buffers[pop.layer] = deque(restored, maxlen=self.params.buffer_batches)

            def record(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], buffer=buffer) -> None:
                if module.training and torch.is_grad_enabled():
                    buffer.append(inputs[0].detach())

            self._hooks.append(pop.mlp.register_forward_pre_hook(record))

    def state_dict(self) -> dict[str, list[torch.Tensor]]:
        return {"buffers": {layer: [x.cpu() for x in buffer] for layer, buffer in self.buffers.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.buffers = {
            int(layer): deque(batches, maxlen=self.params.buffer_batches) for layer, batches in state["buffers"].items()
        }

    def detach(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks = []

    def recent_inputs(self, layer: int) -> torch.Tensor | None:
        """(tokens, d_model) inputs of the layer's MLP from the buffered batches, or None."""
        buffer = self.buffers.get(layer)
        if not buffer:
            return None
        return torch.cat([x.reshape(-1, x.shape[-1]) for x in buffer]).float()

    # --- events -------------------------------------------------------------------------------

    def on_step_end(self, ctx: TrainingContext) -> None:
        p = self.params
        if ctx.every(p.interval):
            ctx.event(self.name, lambda pop: self.evolve(pop, ctx))

    def evolve(self, pop: NeuronPopulation, ctx: TrainingContext) -> None:
        p = self.params
        dead = select_deaths(pop, ctx.step, p.prune_rate, p.maturity)
        if len(dead) == 0:
            return
        parents = select_parents(pop, len(dead), dead, p.parent_pool, ctx.generator)
        incoming = pop.mutate(pop.incoming()[parents], p.mutation_strength, ctx.generator)
        outgoing = torch.zeros(len(dead), pop.mlp.proj.out_features)
        x = self.recent_inputs(pop.layer)
        if x is not None:
            incoming, outgoing = self.fit(pop, dead, incoming, x)
        pop.replace(dead, incoming, outgoing, step=ctx.step, parents=[(int(s),) for s in parents], cause="low_fitness")

    def fit(
        self, pop: NeuronPopulation, dead: torch.Tensor, incoming: torch.Tensor, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Fit newborns (starting from ``incoming``) to the dying neurons' contribution on inputs
        ``x`` (tokens, d_model); returns their (incoming, outgoing) on the CPU."""
        p = self.params
        act = pop.mlp.act
        device = x.device
        mask = pop.mlp.gate.mask.detach().float().to(device)[dead.to(device)]
        dying_in = pop.incoming()[dead].to(device)
        dying_out = pop.outgoing()[dead].to(device)
        with torch.no_grad():
            target = (act(x @ dying_in[:, :-1].t() + dying_in[:, -1]) * mask) @ dying_out  # (tokens, d_model)
            w = incoming[:, :-1].to(device).clone()
            b = incoming[:, -1].to(device).clone()
            out = _least_squares(act(x @ w.t() + b), target)

        def error(w: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
            return (act(x @ w.t() + b) @ out - target).pow(2).mean()

        with torch.no_grad():
            zero = float(target.pow(2).mean())
            start = best = float(error(w, b, out))
        best_params = (w.clone(), b.clone(), out.clone())
        if p.preservation_steps > 0:
            with torch.enable_grad():
                w, b, out = (t.clone().requires_grad_(True) for t in (w, b, out))
                optimizer = torch.optim.Adam([w, b, out], lr=p.preservation_lr)
                for _ in range(p.preservation_steps):
                    loss = error(w, b, out)
                    value = loss.item()
                    if value < best:  # the parameters that gave this loss, before the step
                        best, best_params = value, (w.detach().clone(), b.detach().clone(), out.detach().clone())
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                with torch.no_grad():
                    value = float(error(w, b, out))
                if value < best:
                    best, best_params = value, (w.detach().clone(), b.detach().clone(), out.detach().clone())
        self.last_fit[pop.layer] = {"zero": zero, "start": start, "fitted": best}
        w, b, out = best_params
        return torch.cat([w, b[:, None]], dim=1).cpu(), out.cpu()


def _least_squares(h: torch.Tensor, target: torch.Tensor, ridge: float = 1e-6) -> torch.Tensor:
    """(k, d_model) outgoing weights minimising ||h @ out - target||^2 (+ a tiny ridge)."""
    h64 = h.double()
    gram = h64.t() @ h64
    gram = gram + ridge * (gram.diagonal().mean() + 1e-12) * torch.eye(gram.shape[0], dtype=gram.dtype, device=h.device)
    return torch.linalg.solve(gram, h64.t() @ target.double()).to(h.dtype)
