"""Generation with a key/value cache: each new token costs one position, and the tokens are the
ones a full forward pass over the same context gives; past the block, the context shifts to its
last half."""

from __future__ import annotations

import pytest
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
    caches = model.empty_caches()
    with torch.no_grad():
        model.last_logits(tokens[:, :5], caches, 0)
        for t in range(5, 16):
            cached = model.last_logits(tokens[:, t : t + 1], caches, t)
            full, _ = model(tokens[:, : t + 1])
            torch.testing.assert_close(cached, full[:, -1], atol=1e-5, rtol=1e-5)


def test_one_position_decoder_gives_the_forward_logits_with_masked_neurons() -> None:
    """Generation's fast path (functional calls on gathered weights) computes what the modules do,
    the neuron masks included, for a batch of rows."""
    from apoptosis.core.model import OnePositionDecoder

    model = tiny_model(4)
    with torch.no_grad():
        model.blocks[0].mlp.gate.mask[:5] = 0.0  # silenced neurons must stay silent here too
        model.blocks[1].mlp.fc.weight[7] += 1.0  # and a changed weight be seen
    tokens = torch.randint(0, 11, (3, 16))
    caches, decoder = model.empty_caches(), OnePositionDecoder(model)
    with torch.no_grad():
        model.last_logits(tokens[:, :4], caches, 0)
        for t in range(4, 16):
            fast = decoder.step(tokens[:, t], caches)
            full, _ = model(tokens[:, : t + 1])
            torch.testing.assert_close(fast, full[:, -1], atol=1e-5, rtol=1e-5)


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


def test_sampled_tokens_follow_the_softmax_of_the_logits() -> None:
    from scipy.stats import chisquare

    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, -30.0]]).repeat(20_000, 1)
    tokens, finite = GPT._sample(logits, 1.0, None, torch.Generator().manual_seed(0))
    tokens = tokens.squeeze(1)
    assert bool(finite)
    counts = torch.bincount(tokens, minlength=5).double()
    probs = torch.softmax(logits[0].double(), dim=0)[:4]
    assert counts[4] == 0  # a token of probability ~1e-14 is never drawn
    assert chisquare(counts[:4].numpy(), (probs / probs.sum() * len(tokens)).numpy()).pvalue > 1e-3


def test_top_k_leaves_only_the_k_most_likely_tokens() -> None:
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0]]).repeat(2_000, 1)
    tokens, _ = GPT._sample(logits, 1.0, 2, torch.Generator().manual_seed(1))
    assert set(tokens.flatten().tolist()) == {1, 3}


def test_generated_ids_can_be_trained_on() -> None:
    model = tiny_model(4)
    out = model.generate(torch.zeros(2, 1, dtype=torch.long), 10)
    model.train()
    _, loss = model(out[:, :-1], out[:, 1:])
    loss.backward()  # an inference-mode tensor here would raise
    assert model.wte.weight.grad is not None


def test_the_cache_refuses_more_positions_than_it_holds() -> None:
    import pytest

    from apoptosis.core.model import KVCache

    cache = KVCache(capacity=3)
    cache.extend(torch.zeros(1, 2, 2, 4), torch.zeros(1, 2, 2, 4))
    with pytest.raises(ValueError, match="holds 3 positions"):
        cache.extend(torch.zeros(1, 2, 2, 4), torch.zeros(1, 2, 2, 4))


def test_a_model_with_non_finite_weights_refuses_to_sample() -> None:
    import pytest

    from apoptosis.core.errors import ApoptosisError

    model = GPT(ModelConfig(vocab_size=5, n_layer=1, n_head=2, d_model=8, d_ff=16, block_size=8))
    with torch.no_grad():
        model.blocks[0].mlp.fc.weight[3, 0] = float("nan")
    _, finite = GPT._sample(torch.tensor([[0.0, 1e38, 1.0]]), 1e-6, None, torch.Generator())  # overflows once scaled
    assert not bool(finite)
    for use_cache in (True, False):
        with pytest.raises(ApoptosisError, match="not finite"):
            model.generate(
                torch.zeros(1, 1, dtype=torch.long), 4, generator=torch.Generator().manual_seed(0), use_cache=use_cache
            )


def test_generation_with_active_dropout_goes_through_the_modules(monkeypatch) -> None:
    """The one-position decoder has no dropout: a model in training mode with dropout samples
    through the modules' forward (where dropout is applied), never through the decoder."""
    from apoptosis.core.model import OnePositionDecoder

    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=1, n_head=2, d_model=16, d_ff=32, block_size=8, vocab_size=11, dropout=0.5))

    def refuse(*args, **kwargs):
        raise AssertionError("the decoder would skip dropout")

    monkeypatch.setattr(OnePositionDecoder, "step", refuse)
    out = model.train().generate(torch.zeros(1, 1, dtype=torch.long), 12, generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, 13)
    with pytest.raises(AssertionError, match="skip dropout"):
        model.eval().generate(torch.zeros(1, 1, dtype=torch.long), 12)  # eval: dropout is off, the decoder runs
