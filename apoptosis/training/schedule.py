"""The optimizer and the learning-rate schedule of a run."""

from __future__ import annotations

import math

import torch

from apoptosis.core.config import RunConfig
from apoptosis.core.model import GPT


def lr_at(step: int, config: RunConfig) -> float:
    """Linear warmup to ``lr``, then cosine decay to ``min_lr`` at the last step; in continual
    training the schedule starts again with every phase."""
    t = config.trainer
    length = t.steps
    if config.continual.phases:
        length = config.continual.steps_per_phase
        step = (step - 1) % length + 1
    if step <= t.warmup_steps:
        return t.lr * step / max(t.warmup_steps, 1)
    progress = (step - t.warmup_steps) / max(length - t.warmup_steps, 1)
    return t.min_lr + 0.5 * (t.lr - t.min_lr) * (1 + math.cos(math.pi * min(progress, 1.0)))


def build_optimizer(model: GPT, config: RunConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (embeddings and linear weights); its fused kernel
    with ``trainer.fused_adamw`` (the same update, one kernel for all parameters)."""
    t = config.trainer
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=t.lr, betas=(t.beta1, t.beta2), fused=t.fused_adamw or None)
