"""Calibration data for one-shot pruning, and what a linear layer sees of it.

Wanda and SparseGPT decide which weights to drop from the inputs a layer receives on a small
calibration set (Sun et al. 2023, Frantar & Alistarh 2023: 128 sequences of the training corpus).
Here the calibration set is ``sequences`` windows of ``model.block_size`` characters from the
run's training split, and a layer's inputs are summed into their Gram matrix ``X^T X`` by a
forward pre-hook: from it Wanda takes the input feature norms ``||X_j||_2`` (the square roots of
its diagonal) and SparseGPT the Hessian ``H = 2 X^T X`` of the layer's reconstruction error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from apoptosis.core.config import RunConfig
from apoptosis.core.data import CharDataset, CharVocab
from apoptosis.core.encoded_corpus import corpus_dataset
from apoptosis.core.errors import ApoptosisError
from apoptosis.core.model import GPT

Batch = tuple[torch.Tensor, torch.Tensor]
CALIBRATION_SEQUENCES = 128  # the papers' 128 calibration sequences


def run_dataset(config: RunConfig, vocab: CharVocab) -> CharDataset:
    """The run's corpus split as the trainer splits it, with the run's vocabulary."""
    d = config.data
    return corpus_dataset(d.path, config.model.block_size, d.val_fraction, vocab, d.keep_line_endings)


def calibration_batches(
    data: CharDataset, sequences: int, batch_size: int, generator: torch.Generator, device: str = "cpu"
) -> list[Batch]:
    """``sequences`` random training windows (inputs and next-character targets), in batches of
    ``batch_size`` (the last one may be smaller)."""
    if sequences < 1:
        raise ApoptosisError(f"--calibration must be >= 1 sequence, got {sequences}")
    x, y = data.batch("train", sequences, generator, device)
    return list(zip(x.split(batch_size), y.split(batch_size), strict=True))


@dataclass
class InputStats:
    """The Gram matrix ``X^T X`` (float64) of a linear layer's inputs over ``tokens`` calibration tokens."""

    gram: torch.Tensor
    tokens: int

    @property
    def norms(self) -> torch.Tensor:
        """(in_features,) ``||X_j||_2``: each input feature's L2 norm over all calibration tokens (Wanda)."""
        return self.gram.diagonal().clamp_min(0).sqrt()

    @property
    def hessian(self) -> torch.Tensor:
        """(in, in) ``H = 2 X^T X / tokens``: SparseGPT's Hessian of ``||W X - W' X||^2``, divided by
        the token count as the reference implementation does (the scale changes no mask and no update)."""
        return 2 * self.gram / self.tokens


class _Seen(Exception):
    """Raised by the hook of the last layer a pass needs: the layers above it need not run."""


@contextmanager
def _hooks(handles: list) -> Iterator[None]:
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def input_stats(model: GPT, layers: list[nn.Linear], batches: list[Batch]) -> list[InputStats]:
    """The input statistics of each of ``layers`` (given in forward order) on the batches, as the
    model is now: a layer pruned before this call feeds the ones after it its pruned outputs
    (the papers' sequential setting). In eval mode; each pass stops after the last layer."""
    grams = [torch.zeros(m.in_features, m.in_features, dtype=torch.float64, device=m.weight.device) for m in layers]
    tokens = [0] * len(layers)

    def hook(index: int) -> Callable:
        def read(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            x = args[0].reshape(-1, module.in_features).double()
            grams[index] += x.T @ x
            tokens[index] += x.shape[0]
            if index == len(layers) - 1:
                raise _Seen

        return read

    was_training = model.training
    model.eval()
    try:
        with _hooks([m.register_forward_pre_hook(hook(i)) for i, m in enumerate(layers)]):
            for x, _ in batches:
                try:
                    model(x)
                except _Seen:
                    pass
    finally:
        model.train(was_training)
    return [InputStats(g, n) for g, n in zip(grams, tokens, strict=True)]
