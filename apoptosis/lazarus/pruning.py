"""The pruning methods of the field, on our model: which weights or neurons go, and their removal.

Methods (``--method``) and what each removes in each pattern (``--pattern``):

* ``magnitude``: the smallest ``|W|``. Unstructured: ``round(sparsity * N)`` of each layer's N
  weights (per layer, not over all layers together as ``damage --prune`` does, so every method
  prunes every layer alike); 2:4: the 2 smallest of every 4 consecutive input weights of a row;
  neurons: the lowest ``norm(fc row and bias) x norm(proj column)`` (``damage.neuron_scores``).
* ``wanda`` (Sun et al. 2023, "A Simple and Effective Pruning Approach for Large Language
  Models", github.com/locuslab/wanda): score ``S_ij = |W_ij| * ||X_j||_2``, the input feature's
  norm over the calibration tokens; each output row loses the same share (its lowest scores), no
  weight is updated; 2:4: the 2 lowest scores of every 4 consecutive input weights of a row;
  neurons: the sum of the scores of the neuron's weights (its fc row, on the fc inputs, and its
  proj column, on its own activation).
* ``sparsegpt`` (Frantar & Alistarh 2023): see :mod:`apoptosis.lazarus.sparsegpt`. It prunes
  single weights only: a neuron score is not part of the method, so ``--pattern neurons`` is refused.
* ``fitness``: our neuron fitness (``FitnessTracker`` with its default metric, accumulated over the
  calibration batches on the dense model, no weight changed); neurons only.

The layers pruned are those of ``damage.prunable_weights``, the same for every method: the blocks'
attention ``qkv`` and ``out`` and MLP ``fc`` and ``proj``; embeddings (tied to the output head),
LayerNorms and biases stay dense. Wanda and SparseGPT prune layer after layer in forward order,
each calibrated on the inputs the already-pruned layers before it produce (the papers' sequential
setting; Wanda's reference collects a whole block's inputs in one pass, here each layer is
calibrated after the ones before it in its block too, as SparseGPT's true-sequential option
does). Counts are rounded (the references floor ``sparsity * n``), so every method removes the
same number. In the neurons pattern each MLP layer loses ``round(sparsity * width)`` neurons (at
least one stays), removed through ``NeuronPopulation.shrink``: the layers are physically smaller
and the lineage records the deaths (cause ``compress``). Neurons already masked do nothing and go first.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from apoptosis.core.errors import ApoptosisError
from apoptosis.core.fitness import FitnessTracker
from apoptosis.core.lineage import Lineage
from apoptosis.core.model import GPT
from apoptosis.core.population import NeuronPopulation
from apoptosis.lazarus.calibration import Batch, input_stats
from apoptosis.lazarus.damage import Masks, neuron_scores, prunable_weights
from apoptosis.lazarus.sparsegpt import N_OF_M, sparsegpt_prune

METHODS = ("magnitude", "wanda", "sparsegpt", "fitness")
PATTERNS = ("unstructured", "2:4", "neurons")
NEEDS_CALIBRATION = ("wanda", "sparsegpt", "fitness")
DEATH_CAUSE = "compress"

Advance = Callable[[], None]


def check_choice(method: str, pattern: str, sparsity: float) -> None:
    """One line naming what is wrong with a method, pattern and sparsity, before any model is read."""
    if method not in METHODS:
        raise ApoptosisError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    if pattern not in PATTERNS:
        raise ApoptosisError(f"--pattern must be one of {', '.join(PATTERNS)}, got {pattern!r}")
    if not 0 < sparsity < 1:
        raise ApoptosisError(f"--prune must be strictly between 0 and 1, got {sparsity}")
    if method == "fitness" and pattern != "neurons":
        raise ApoptosisError("--method fitness scores whole neurons: it needs --pattern neurons")
    if method == "sparsegpt" and pattern == "neurons":
        raise ApoptosisError("--method sparsegpt prunes single weights: use --pattern unstructured or 2:4")
    if pattern == "2:4" and sparsity != 0.5:
        raise ApoptosisError(f"--pattern 2:4 removes exactly half of the weights: --prune must be 0.5, got {sparsity}")


def prunable_layers(model: GPT) -> list[tuple[str, nn.Linear]]:
    """The linear layers behind ``damage.prunable_weights``, by module name, in forward order."""
    modules = dict(model.named_modules())
    names = [name.removesuffix(".weight") for name, _ in prunable_weights(model)]
    return [(name, modules[name]) for name in names]


def check_widths(model: GPT, pattern: str) -> None:
    """2:4 groups a row's input weights by 4: every pruned layer's input width must be divisible by 4."""
    if pattern != "2:4":
        return
    for name, layer in prunable_layers(model):
        if layer.in_features % N_OF_M[1]:
            raise ApoptosisError(
                f"--pattern 2:4 needs every pruned layer's input width divisible by 4, but {name} has "
                f"{layer.in_features}: use --pattern unstructured or neurons"
            )


# --- masks of kept weights (True = kept) --------------------------------------------------------


def _lowest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask of the ``k`` lowest of a 1-D tensor (ties broken by position)."""
    out = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    out[torch.argsort(scores, stable=True)[:k]] = True
    return out


def layer_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep all but the ``round(sparsity * N)`` lowest scores of the whole layer."""
    return ~_lowest(scores.flatten(), round(sparsity * scores.numel())).view(scores.shape)


def row_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep all but the ``round(sparsity * in)`` lowest scores of every output row (Wanda's comparison group)."""
    k = round(sparsity * scores.shape[1])
    pruned = torch.zeros_like(scores, dtype=torch.bool)
    pruned.scatter_(1, torch.argsort(scores, dim=1, stable=True)[:, :k], True)
    return ~pruned


def n_of_m_mask(scores: torch.Tensor) -> torch.Tensor:
    """Keep, in every row, the 2 highest of each 4 consecutive scores (the 2:4 pattern)."""
    n, m = N_OF_M
    rows, columns = scores.shape
    groups = scores.reshape(rows, columns // m, m)
    pruned = torch.zeros_like(groups, dtype=torch.bool)
    pruned.scatter_(2, torch.topk(groups, n, dim=2, largest=False).indices, True)
    return ~pruned.reshape(rows, columns)


def magnitude_mask(weight: torch.Tensor, sparsity: float, pattern: str) -> torch.Tensor:
    scores = weight.detach().abs()
    return n_of_m_mask(scores) if pattern == "2:4" else layer_mask(scores, sparsity)


def wanda_scores(weight: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
    """``|W_ij| * ||X_j||_2`` (Wanda's metric)."""
    return weight.detach().abs().double() * norms.to(weight.device)[None, :]


def wanda_mask(weight: torch.Tensor, norms: torch.Tensor, sparsity: float, pattern: str) -> torch.Tensor:
    scores = wanda_scores(weight, norms)
    return n_of_m_mask(scores) if pattern == "2:4" else row_mask(scores, sparsity)


@torch.no_grad()
def prune_weights(
    model: GPT, method: str, pattern: str, sparsity: float, batches: list[Batch], advance: Advance = lambda: None
) -> Masks:
    """Prune every layer of ``prunable_layers`` in place, in forward order (``unstructured`` or
    ``2:4``); returns the masks of kept weights by parameter name. ``advance()`` after each layer."""
    masks: Masks = {}
    for name, layer in prunable_layers(model):
        if method == "magnitude":
            keep = magnitude_mask(layer.weight, sparsity, pattern)
        elif method == "wanda":
            keep = wanda_mask(layer.weight, input_stats(model, [layer], batches)[0].norms, sparsity, pattern)
        elif method == "sparsegpt":
            hessian = input_stats(model, [layer], batches)[0].hessian
            updated, keep = sparsegpt_prune(layer.weight, hessian, sparsity, pattern)
            layer.weight.copy_(updated)
        else:
            raise ApoptosisError(f"--method {method} does not prune single weights: use --pattern neurons")
        layer.weight.mul_(keep.to(layer.weight))
        masks[f"{name}.weight"] = keep
        advance()
    return masks


# --- neurons ------------------------------------------------------------------------------------


def neuron_populations(model: GPT, lineage: Lineage, fitness: FitnessTracker | None = None) -> list[NeuronPopulation]:
    """A population per MLP layer, to remove neurons with the same surgery training uses. No
    optimizer steps here: an Adam with empty state stands in for training's."""
    optimizer = torch.optim.Adam(model.parameters())
    tracker = fitness or FitnessTracker(model)
    return [NeuronPopulation(i, block.mlp, optimizer, tracker, lineage) for i, block in enumerate(model.blocks)]


def fitness_tracker(model: GPT, batches: list[Batch]) -> FitnessTracker:
    """A ``FitnessTracker`` (default metric) fed one forward and backward pass per batch, weights
    unchanged. Dropout is off; only the gates, which the metric hooks watch, are in training mode."""
    tracker = FitnessTracker(model)
    was_training = model.training
    model.eval()
    for block in model.blocks:
        block.mlp.gate.train()
    tracker.attach()
    try:
        with torch.enable_grad():
            for x, y in batches:
                _, loss = model(x, y)
                loss.backward()
                tracker.after_backward()
                model.zero_grad(set_to_none=True)
    finally:
        tracker.detach()
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return tracker


@torch.no_grad()
def wanda_neuron_scores(model: GPT, layer: int, batches: list[Batch]) -> torch.Tensor:
    """(width,) the sum of the Wanda scores of each neuron's weights: its fc row (on the MLP's
    inputs) and its proj column (on the neuron's own activation), as the model is now."""
    mlp = model.blocks[layer].mlp
    fc, proj = input_stats(model, [mlp.fc, mlp.proj], batches)
    incoming = wanda_scores(mlp.fc.weight, fc.norms).sum(dim=1)
    outgoing = wanda_scores(mlp.proj.weight, proj.norms).sum(dim=0)
    return (incoming + outgoing).cpu()


@torch.no_grad()
def prune_neurons(
    model: GPT,
    populations: list[NeuronPopulation],
    method: str,
    sparsity: float,
    batches: list[Batch],
    step: int,
    advance: Advance = lambda: None,
) -> list[list[int]]:
    """Remove the lowest-scored ``round(sparsity * width)`` neurons of every MLP layer (at least one
    stays), layer by layer; returns, per layer, the slots removed (numbered as before the removal).
    ``fitness`` reads the populations' tracker (see ``fitness_tracker``)."""
    magnitude = neuron_scores(model) if method == "magnitude" else None
    removed = []
    for layer, population in enumerate(populations):
        if method == "magnitude":
            scores = magnitude[layer]
        elif method == "wanda":
            scores = wanda_neuron_scores(model, layer, batches)
        elif method == "fitness":
            scores = population.fitness()
        else:
            raise ApoptosisError(f"--method {method} has no neuron score: use magnitude, wanda or fitness")
        scores = torch.where(population.active(), scores.double(), -torch.inf)  # masked neurons first
        width = population.width
        slots = _lowest(scores, min(round(sparsity * width), width - 1)).nonzero().squeeze(1)
        population.shrink(slots, step=step, cause=DEATH_CAUSE)
        removed.append(slots.tolist())
        advance()
    return removed
