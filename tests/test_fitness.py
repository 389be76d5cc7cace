"""Fitness metrics measure what they claim, from hooks on real training steps."""

from __future__ import annotations

import pytest
import torch

from apoptosis.core.errors import ApoptosisError
from apoptosis.core.registry import FITNESS_METRICS
from tests.conftest import make_colony


def one_step_with_hidden(metric: str):
    """One training step; returns the colony and, per layer, (h, dL/dh) seen by our own hook."""
    c = make_colony(metric)
    seen = {}
    for i, block in enumerate(c.model.blocks):

        def hook(module, inputs, h, i=i):
            h.retain_grad()
            seen[i] = h

        block.mlp.gate.register_forward_hook(hook)
    x = torch.randint(20, (4, 8), generator=torch.Generator().manual_seed(1))
    _, loss = c.model(x, x)
    loss.backward()
    return c, {i: (h.detach(), h.grad) for i, h in seen.items()}


def test_grad_activation_is_mean_abs_h_times_grad() -> None:
    c, hidden = one_step_with_hidden("grad_activation")
    for layer, (h, g) in hidden.items():
        expected = (h * g).abs().mean(dim=(0, 1))
        assert torch.allclose(c.fitness.scores(layer), expected, rtol=1e-5, atol=1e-12)


def test_activation_and_contribution() -> None:
    c, hidden = one_step_with_hidden("activation")
    h, _ = hidden[0]
    assert torch.allclose(c.fitness.scores(0), h.abs().mean(dim=(0, 1)), rtol=1e-5)
    c, hidden = one_step_with_hidden("contribution")
    h, _ = hidden[1]
    outgoing = c.model.blocks[1].mlp.proj.weight.detach().abs().sum(dim=0)
    assert torch.allclose(c.fitness.scores(1), h.abs().mean(dim=(0, 1)) * outgoing, rtol=1e-5)


def test_random_metric_is_a_seeded_control() -> None:
    a, b = make_colony("random"), make_colony("random")
    a.train_steps(1)
    b.train_steps(1)
    sa, sb = a.fitness.scores(0), b.fitness.scores(0)
    assert torch.equal(sa, sb) and sa.std() > 0.1  # same seed, same scores; spread like U(0, 1)
    assert torch.equal(sa, a.fitness.scores(0))  # stable between steps: what is recorded is what was used
    a.train_steps(1, seed=1)
    assert not torch.equal(sa, a.fitness.scores(0))


def test_ema_is_bias_corrected_and_reset_per_slot() -> None:
    c = make_colony()
    c.train_steps(5)
    pop = c.populations[0]
    c.fitness.reset(0, torch.tensor([0, 1]))
    assert pop.fitness()[[0, 1]].eq(0).all()
    c.train_steps(1, seed=9)
    # after a reset one step's value is the whole average, not (1 - decay) of it
    weights = c.fitness.weights[0]
    assert torch.allclose(weights[0], torch.tensor(0.1)) and weights[5] > 0.4
    assert pop.fitness()[0] > 0


def test_no_update_outside_training() -> None:
    c = make_colony()
    c.model.eval()
    with torch.no_grad():
        c.model(torch.randint(20, (2, 8)))
    assert c.fitness.weights[0].eq(0).all()


def test_unknown_metric_lists_known_ones() -> None:
    with pytest.raises(ApoptosisError, match="grad_activation"):
        FITNESS_METRICS.get("nope")
    assert {"grad_activation", "activation", "contribution", "random"} <= set(FITNESS_METRICS.names())
