"""Generation with a key/value cache: each new token costs one position, and the tokens are the
ones a full forward pass over the same context gives; past the block, the context shifts to its
last half."""

from __future__ import annotations

import torch

from apoptosis.core.config import ModelConfig
from apoptosis.core.model import GPT

GREEDY = 1e-6  # temperature: sampling becomes the argmax, so tokens can be checked one by one


def tiny_model(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(ModelConfig(n_layer=2, n_head=2, d_model=32, d_ff=64, block_size=16, vocab_size=11)).eval()


def full_forward_argmax(model: GPT, context: torch.Tensor) -> int:
    logits, _ = model(context)
    return int(logits[0, -1].argmax())


def test_cached_logits_equal_a_full_forward_pass() -> None:
    model = tiny_model()
    tokens = torch.randint(0, 11, (2, 16))
    caches = [[] for _ in model.blocks]
    with torch.no_grad():
        model.last_logits(tokens[:, :5], caches, 0)
        for t in range(5, 16):
            cached = model.last_logits(tokens[:, t : t + 1], caches, t)
            full, _ = model(tokens[:, : t + 1])
            torch.testing.assert_close(cached, full[:, -1], atol=1e-5, rtol=1e-5)


def test_cached_generation_follows_the_full_forward_within_and_past_the_block() -> None:
    model = tiny_model(1)
    start = torch.tensor([[3, 1, 4]])
    out = model.generate(start, 40, temperature=GREEDY, generator=torch.Generator().manual_seed(0))
    block, shift = 16, 8
    filled_from = 0  # where the current cache's position 0 is in ``out``
    for t in range(3, out.size(1)):
        if t - filled_from > block:  # the block was full: generation went on from the last half
            filled_from = t - shift
        assert int(out[0, t]) == full_forward_argmax(model, out[:, filled_from:t]), t


def test_without_the_cache_every_token_sees_a_full_sliding_window() -> None:
    model = tiny_model(2)
    out = model.generate(torch.tensor([[5]]), 30, temperature=GREEDY, use_cache=False)
    for t in range(1, out.size(1)):
        assert int(out[0, t]) == full_forward_argmax(model, out[:, max(0, t - 16) : t]), t


def test_a_seed_gives_the_same_text_and_another_seed_does_not() -> None:
    model = tiny_model(3)
    start = torch.zeros(1, 1, dtype=torch.long)
    runs = [model.generate(start, 50, generator=torch.Generator().manual_seed(s)) for s in (7, 7, 8)]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])
