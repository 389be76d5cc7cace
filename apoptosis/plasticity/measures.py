"""What the benchmark reads from a network between tasks: how well it still learns, and the
signs of plasticity loss that the literature reports alongside.

* probe loss (Lyle et al. 2023, "Understanding plasticity in neural networks"): a copy of the
  network, with a new optimizer and the run's settings, trains a fixed number of steps on a new,
  held-out task; its excess loss over that task's floor is set against the excess a freshly
  initialised network reaches on the same task in the same budget;
* dormant fraction (Sokar et al. 2023; Dohare et al. 2024, "Loss of plasticity in deep continual
  learning"): the share of hidden units whose activation stays at or below a small epsilon on
  every token of a batch;
* effective rank of the hidden activations, exp(entropy of the normalised singular values)
  (Roy & Vetterli 2007, "The effective rank: a measure of effective dimensionality", as used for
  plasticity by Kumar et al. 2021/2023, "Implicit under-parameterization", and Lyle et al.);
* the weight norm, which grows as plasticity is lost (Dohare et al.; Lyle et al.).

Measurements work on copies, built without the run's hooks and with the global random state put
back afterwards, so measuring never changes the run being measured.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
from collections.abc import Iterator

import numpy as np
import torch
from scipy.stats import entropy

from apoptosis.core.config import ModelConfig, RunConfig
from apoptosis.core.model import GPT
from apoptosis.plasticity.tasks import Task
from apoptosis.training import build_optimizer, lr_at
from apoptosis.training.evaluation import Evaluator

DORMANT_EPSILON = 0.01  # GELU(x) <= 0.01 for x below about 0.02; ReLU: exactly 0
MEASURE_WINDOWS = 16  # windows of the task's held-out split in the batch the activations are read on
PROBE_EVAL_BATCHES = 8  # held-out batches the probe's final loss is measured on
PROBE, PROBE_EVAL, MEASURE = 11, 12, 13  # purposes: each random stream of a task is its own


def derived_seed(*keys: int) -> int:
    """A seed for a torch generator from several integers (seed, task, purpose)."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1, dtype=np.uint64)[0] >> 1)


@contextlib.contextmanager
def own_random_state(device: torch.device) -> Iterator[None]:
    """Whatever draws from torch's global generators inside is undone on the way out."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        yield


def copy_model(model: GPT) -> GPT:
    """The model's weights and masks in a new network: no fitness or strategy hook of the run is
    on it, so its forward passes count nowhere."""
    device = next(model.parameters()).device
    with own_random_state(device):
        twin = GPT(model.current_config()).to(device)
    twin.load_state_dict(model.state_dict())
    return twin


def fresh_model(config: ModelConfig, seed: int, device: torch.device) -> GPT:
    """The network a run with ``seed`` starts from (the trainer seeds torch, then builds the model)."""
    with own_random_state(device):
        torch.manual_seed(seed)
        return GPT(copy.deepcopy(config)).to(device)


def probe_loss(model: GPT, config: RunConfig, task: Task, steps: int, seed: int) -> float:
    """Train ``model`` (a copy: it is changed) ``steps`` steps on ``task`` with a new optimizer and
    the run's settings (batch size, learning rate, weight decay, clipping; the schedule over the
    probe's steps), and return its excess loss over the task's floor on held-out batches."""
    t = config.trainer
    device = next(model.parameters()).device
    schedule = RunConfig(trainer=dataclasses.replace(t, steps=steps))  # one phase, as long as the probe
    optimizer = build_optimizer(model, config)
    batches = torch.Generator().manual_seed(derived_seed(seed, task.index, PROBE))
    with own_random_state(device):
        model.train()
        for step in range(1, steps + 1):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, schedule)
            x, y = task.dataset.batch("train", t.batch_size, batches, device)
            _, loss = model(x, y)
            loss.backward()
            if t.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    held_out_seed = derived_seed(seed, task.index, PROBE_EVAL)
    evaluator = Evaluator(model, {"probe": task.dataset}, t.batch_size, PROBE_EVAL_BATCHES, held_out_seed, device)
    _, held_out = evaluator.train_val("probe")
    return held_out - task.optimal_loss


@torch.no_grad()
def hidden_activations(model: GPT, x: torch.Tensor) -> list[torch.Tensor]:
    """Each layer's hidden activation h (tokens x units, a masked unit 0) on the inputs ``x``, in
    evaluation mode, on the CPU."""
    captured: list[torch.Tensor] = []

    def keep(_module: torch.nn.Module, _inputs: object, h: torch.Tensor) -> None:
        captured.append(h.reshape(-1, h.shape[-1]).float().cpu())

    hooks = [block.mlp.gate.register_forward_hook(keep) for block in model.blocks]
    was_training = model.training
    model.eval()
    try:
        model(x)
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return captured


def dormant_fraction(activations: list[torch.Tensor], epsilon: float = DORMANT_EPSILON) -> float:
    """Share of the hidden units of all layers whose activation is at most ``epsilon`` on every
    token: a ReLU unit that never fires, a GELU unit whose input never rises above about 0."""
    dormant = sum(int((h.max(dim=0).values <= epsilon).sum()) for h in activations)
    return dormant / sum(h.shape[1] for h in activations)


def effective_rank(h: torch.Tensor) -> float:
    """exp(H(p)), p the singular values of ``h`` divided by their sum (Roy & Vetterli 2007): k for
    k equal singular values, 1 for a rank-one matrix, 0 for a matrix of zeros."""
    singular = torch.linalg.svdvals(h.double()).numpy()
    if singular.sum() <= 0:
        return 0.0
    return float(np.exp(entropy(singular / singular.sum())))


def weight_norm(model: GPT) -> float:
    """The L2 norm of all parameters together (the tied head counted once)."""
    return math.sqrt(sum(float(p.detach().double().pow(2).sum()) for p in model.parameters()))


def network_state(model: GPT, task: Task, seed: int) -> dict[str, float]:
    """Dormant fraction, effective rank (mean over layers) and weight norm of ``model``, the
    activations read on a fixed batch of the task's held-out split."""
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(derived_seed(seed, task.index, MEASURE))
    x, _ = task.dataset.batch("val", MEASURE_WINDOWS, generator, device)
    activations = hidden_activations(copy_model(model), x)
    return {
        "dormant_fraction": dormant_fraction(activations),
        "effective_rank": float(np.mean([effective_rank(h) for h in activations])),
        "weight_norm": weight_norm(model),
    }
