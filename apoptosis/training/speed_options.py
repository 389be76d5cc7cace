"""The trainer's speed options, each saved in the run's config: ``trainer.compile`` (the training
forward compiled), ``trainer.tf32`` (CUDA matmuls) and ``trainer.autocast`` (bfloat16). The fused
AdamW kernel (``trainer.fused_adamw``) is the optimizer's own option, in ``schedule``."""

from __future__ import annotations

import contextlib

import torch

from apoptosis.core.config import TrainerConfig
from apoptosis.core.model import GPT


def training_forward(model: GPT, config: TrainerConfig) -> torch.nn.Module:
    """The module the training step calls: ``model`` itself, or compiled. Compiled, it shares the
    model's parameters, so surgery and the optimizer see one set of tensors. A change of shape
    (growth, shrinkage) makes torch recompile it once, with the widths as dynamic sizes from then
    on; by default torch would hold weights static, recompile at every new width and fall back to
    eager after eight. The three compiler settings this needs are torch's, for the whole process."""
    if not config.compile:
        return model
    torch._dynamo.config.skip_nnmodule_hook_guards = False  # hooks added later (cbp, redo) recompile
    torch._dynamo.config.force_parameter_static_shapes = False
    torch._dynamo.config.force_nn_module_property_static_shapes = False
    return torch.compile(model)


def apply_tf32(config: TrainerConfig) -> None:
    """``trainer.tf32`` (validated: CUDA only): TensorFloat-32 matmuls, for the whole process."""
    if config.tf32:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True


def precision(device: torch.device, config: TrainerConfig) -> contextlib.AbstractContextManager:
    """The training forward's autocast (``trainer.autocast``): bfloat16 matmuls, float32 weights,
    gradients and optimizer state."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.autocast == "bf16")
