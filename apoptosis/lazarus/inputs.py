"""Recovery's inputs without data: sequences the model samples itself and uniformly random token
sequences, built from the model, the vocabulary size and a generator alone."""

from __future__ import annotations

import torch

from apoptosis.core.errors import ApoptosisError
from apoptosis.core.model import GPT


@torch.no_grad()
def recovery_inputs(
    model: GPT,
    vocab_size: int,
    batch_size: int,
    seq_len: int,
    generator: torch.Generator,
    sampled_fraction: float = 0.5,
) -> torch.Tensor:
    """(batch_size, seq_len) token ids: ``sampled_fraction`` of the rows sampled from ``model`` at
    temperature 1, each from a random single character, the rest uniformly random tokens."""
    device = next(model.parameters()).device
    n_sampled = round(batch_size * sampled_fraction)
    rows = []
    if n_sampled:
        start = torch.randint(vocab_size, (n_sampled, 1), generator=generator).to(device)
        rows.append(model.generate(start, seq_len - 1, generator=generator))
    if batch_size - n_sampled:
        rows.append(torch.randint(vocab_size, (batch_size - n_sampled, seq_len), generator=generator).to(device))
    return torch.cat(rows)


class InputPool:
    """Recovery inputs drawn from a pool of self-generated sequences, made afresh every
    ``refresh_every`` steps (0: once, at the first step) instead of sampled anew each step:
    sampling a sequence costs a forward pass per token, a training step only one per sequence.
    Each step takes its sampled rows at random from the pool; the random-token rows are always new.
    ``refresh_every=1`` with ``size`` equal to the sampled rows of one batch is the per-step
    sampling of :func:`recovery_inputs`, draw for draw."""

    def __init__(
        self, batch_size: int, seq_len: int, sampled_fraction: float, refresh_every: int = 1, size: int = 0
    ) -> None:
        self.batch_size, self.seq_len, self.refresh_every = batch_size, seq_len, refresh_every
        self.sampled_fraction = sampled_fraction
        self.n_sampled = round(batch_size * sampled_fraction)
        self.size = max(size, self.n_sampled)
        self.pool: torch.Tensor | None = None

    def inputs(self, model: GPT, step: int, generator: torch.Generator) -> torch.Tensor:
        """(batch_size, seq_len) token ids for recovery step ``step`` (1-based)."""
        vocab = model.config.vocab_size
        due = self.pool is None or (self.refresh_every > 0 and (step - 1) % self.refresh_every == 0)
        if self.size == self.n_sampled and self.refresh_every == 1:  # no pool: exactly recovery_inputs
            return recovery_inputs(model, vocab, self.batch_size, self.seq_len, generator, self.sampled_fraction)
        if due and self.n_sampled:
            self.pool = recovery_inputs(model, vocab, self.size, self.seq_len, generator, sampled_fraction=1.0)
        device = next(model.parameters()).device
        rows = []
        if self.n_sampled:
            rows.append(self.pool[torch.randperm(self.size, generator=generator)[: self.n_sampled].to(device)])
        if self.batch_size - self.n_sampled:
            shape = (self.batch_size - self.n_sampled, self.seq_len)
            rows.append(torch.randint(vocab, shape, generator=generator).to(device))
        return torch.cat(rows)


def sequence_length(seq_len: int, model: GPT, owner: str) -> int:
    """A strategy's ``seq_len`` setting (0: the model's block size), checked against the model."""
    block_size = model.config.block_size
    if seq_len == 0:
        return block_size
    if not 2 <= seq_len <= block_size:
        raise ApoptosisError(f"{owner}: seq_len must be 0 or in 2..{block_size} (model.block_size), got {seq_len}")
    return seq_len
