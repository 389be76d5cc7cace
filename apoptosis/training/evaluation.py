"""Losses on fixed batches, drawn once per run from their own random stream: the probe batch an
event's disruption is measured on, and each corpus's evaluation batches."""

from __future__ import annotations

import torch

from apoptosis.core.data import CharDataset
from apoptosis.core.model import GPT

Batch = tuple[torch.Tensor, torch.Tensor]


class Evaluator:
    def __init__(
        self, model: GPT, corpora: dict[str, CharDataset], batch_size: int, eval_batches: int, seed: int, device
    ) -> None:
        self.model = model
        fixed = torch.Generator().manual_seed(seed)
        self.probe_batches: dict[str, Batch] = {}  # per corpus: one train batch
        self.eval_batches: dict[str, dict[str, list[Batch]]] = {}  # per corpus: train and val batches
        for name, data in corpora.items():
            self.probe_batches[name] = data.batch("train", batch_size, fixed, device)
            self.eval_batches[name] = {
                split: [data.batch(split, batch_size, fixed, device) for _ in range(eval_batches)]
                for split in ("train", "val")
            }

    @torch.no_grad()
    def mean_loss(self, batches: list[Batch]) -> float:
        """Mean loss in evaluation mode, read from the device once."""
        was_training = self.model.training
        self.model.eval()
        losses = torch.stack([self.model(x, y)[1] for x, y in batches])
        self.model.train(was_training)
        return losses.double().mean().item()

    def probe_loss(self, corpus: str) -> float:
        """Loss on the corpus's fixed training batch: what an event disrupts."""
        return self.mean_loss([self.probe_batches[corpus]])

    def train_val(self, corpus: str) -> tuple[float, float]:
        """(train, val) loss of a corpus on its fixed evaluation batches."""
        batches = self.eval_batches[corpus]
        return self.mean_loss(batches["train"]), self.mean_loss(batches["val"])

    def val_losses(self, names: list[str] | None = None) -> dict[str, float]:
        """Validation loss on every corpus (one for a plain run; learning and forgetting together
        in a continual one), or on the corpora ``names``."""
        return {name: self.mean_loss(self.eval_batches[name]["val"]) for name in names or self.eval_batches}
