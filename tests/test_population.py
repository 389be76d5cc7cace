"""Neuron surgery keeps the optimizer, fitness and lineage consistent, and touches nothing else."""

from __future__ import annotations

import copy

import torch

from apoptosis.core.model import GPT
from tests.conftest import Colony, make_colony


def snapshot(c: Colony) -> dict:
    """Copies of every parameter and every Adam moment, keyed by parameter name."""
    names = {id(p): n for n, p in c.model.named_parameters()}
    state = {names[id(p)]: copy.deepcopy(s) for p, s in c.optimizer.state.items()}
    return {"params": copy.deepcopy(dict(c.model.named_parameters())), "state": state}


def moments(c: Colony, param: torch.nn.Parameter) -> tuple[torch.Tensor, torch.Tensor]:
    s = c.optimizer.state[param]
    return s["exp_avg"], s["exp_avg_sq"]


def test_replace_sets_weights_resets_moments_and_leaves_others_bit_identical(colony: Colony) -> None:
    before = snapshot(colony)
    pop = colony.populations[1]
    slots = torch.tensor([3, 7])
    incoming = torch.randn(2, 17)
    outgoing = torch.randn(2, 16)
    old_ids = pop.ids()
    new_ids = pop.replace(slots, incoming, outgoing, step=5, parents=[(0,), (1, 2)], cause="test")

    mlp = pop.mlp
    assert torch.equal(mlp.fc.weight[slots], incoming[:, :-1])
    assert torch.equal(mlp.fc.bias[slots], incoming[:, -1])
    assert torch.equal(mlp.proj.weight[:, slots], outgoing.t())
    for param, dim in ((mlp.fc.weight, 0), (mlp.fc.bias, 0), (mlp.proj.weight, 1)):
        for m in moments(colony, param):
            assert torch.count_nonzero(m.index_select(dim, slots)) == 0

    keep = torch.tensor([i for i in range(pop.width) if i not in (3, 7)])
    names = {id(p): n for n, p in colony.model.named_parameters()}
    for name, param in colony.model.named_parameters():
        old = before["params"][name]
        old_state = before["state"][name]
        new_state = colony.optimizer.state[param]
        if param is mlp.fc.weight or param is mlp.fc.bias or param is mlp.proj.weight:
            dim = 1 if param is mlp.proj.weight else 0
            assert torch.equal(param.index_select(dim, keep), old.index_select(dim, keep)), name
            for key in ("exp_avg", "exp_avg_sq"):
                assert torch.equal(new_state[key].index_select(dim, keep), old_state[key].index_select(dim, keep))
        else:
            assert torch.equal(param, old), names[id(param)]
            for key in ("exp_avg", "exp_avg_sq"):
                assert torch.equal(new_state[key], old_state[key]), name

    # lineage: the old neurons died with their cause, the new ones name the parents' ids
    assert [colony.lineage.record(i).death_cause for i in (old_ids[3], old_ids[7])] == ["test", "test"]
    assert pop.ids()[3] == new_ids[0] and pop.ids()[7] == new_ids[1]
    assert colony.lineage.record(new_ids[0]).parents == (old_ids[0],)
    assert colony.lineage.record(new_ids[1]).parents == (old_ids[1], old_ids[2])
    assert colony.lineage.record(new_ids[1]).generation == 1
    # fitness history of the newborns is empty, others keep theirs
    fit = pop.fitness()
    assert fit[3] == 0 and fit[7] == 0 and fit[keep].gt(0).all()


def test_copy_from_without_mutation_copies_parent_and_split_preserves_output() -> None:
    c = make_colony()
    c.train_steps(3)
    pop = c.populations[0]
    x = torch.randint(20, (2, 8))
    c.model.eval()
    parents = torch.tensor([1, 1, 4])
    slots = torch.tensor([10, 11, 12])
    # make the dying neurons silent first, so that removing them changes nothing
    with torch.no_grad():
        pop.mlp.proj.weight[:, slots] = 0
        before, _ = c.model(x)
    pop.copy_from(slots, parents, step=1, mutation_strength=0.0, outgoing="split",
                  generator=torch.Generator().manual_seed(0), cause="test")  # fmt: skip
    with torch.no_grad():
        after, _ = c.model(x)
        assert torch.equal(pop.mlp.fc.weight[10], pop.mlp.fc.weight[1])
        # parent 1 has two children: it and each child carry a third of its old outgoing weights
        assert torch.allclose(pop.mlp.proj.weight[:, 10], pop.mlp.proj.weight[:, 1])
    assert torch.allclose(before, after, atol=1e-5)


def test_copy_from_mutation_scales_with_parent_rms(colony: Colony) -> None:
    pop = colony.populations[0]
    parent = pop.incoming()[2]
    rms = parent[:-1].pow(2).mean().sqrt()
    pop.copy_from(torch.arange(5, 25), torch.full((20,), 2), step=1, mutation_strength=0.5, outgoing="zero",
                  generator=torch.Generator().manual_seed(1), cause="test")  # fmt: skip
    children = pop.incoming()[5:25, :-1]
    noise_std = (children - parent[:-1]).std()
    assert 0.4 * rms < noise_std < 0.6 * rms
    assert torch.count_nonzero(pop.outgoing()[5:25]) == 0


def test_grow_split_preserves_outputs_extends_state_and_keeps_training() -> None:
    c = make_colony()
    c.train_steps(3)
    pop = c.populations[1]
    mlp = pop.mlp
    old_m, old_v = (t.clone() for t in moments(c, mlp.fc.weight))
    old_out_m = moments(c, mlp.proj.weight)[0].clone()
    fc_weight_object = mlp.fc.weight
    x = torch.randint(20, (2, 8))
    c.model.eval()
    with torch.no_grad():
        before, _ = c.model(x)
    new_ids = pop.grow(4, step=3, parent_slots=torch.tensor([0, 1, 2, 2]))
    with torch.no_grad():
        after, _ = c.model(x)
    assert torch.allclose(before, after, atol=1e-5)
    assert pop.width == 36 and mlp.fc.out_features == 36 and mlp.proj.in_features == 36
    assert mlp.fc.weight is fc_weight_object  # identity kept: the optimizer sees the new size
    assert mlp.gate.mask.shape == (36,) and mlp.gate.mask.eq(1).all()
    m, v = moments(c, mlp.fc.weight)
    share = torch.tensor([0.5, 0.5, 1 / 3])[:, None]  # slot 2 split into three
    assert m.shape == (36, 16) and torch.equal(m[3:32], old_m[3:32])  # neurons that did not split
    assert torch.allclose(m[:3], old_m[:3] * share)  # the gradient reaching a split neuron is its share
    assert torch.allclose(v[:3], old_v[:3] * share**2)
    assert torch.equal(m[32:], m[[0, 1, 2, 2]]) and torch.equal(v[32:], v[[0, 1, 2, 2]])  # children inherit
    out_m = moments(c, mlp.proj.weight)[0]
    assert out_m.shape == (16, 36) and torch.equal(out_m[:, 32:], old_out_m[:, [0, 1, 2, 2]])  # kept
    assert pop.updates.born_at[32:].tolist() == pop.updates.born_at[[0, 1, 2, 2]].tolist()
    assert pop.ids()[32:] == new_ids and len(pop.fitness()) == 36
    assert c.lineage.record(new_ids[2]).parents == (c.lineage.ids(1)[2],)
    # the grown neurons are trained: their weights move on the next optimizer step
    c.model.train()
    c.train_steps(1, seed=5)
    grown_after = mlp.fc.weight[32:].detach().clone()
    c.train_steps(1, seed=6)
    assert not torch.equal(mlp.fc.weight[32:], grown_after)


def test_shrink_removes_slots_compacts_and_drops_state(colony: Colony) -> None:
    pop = colony.populations[0]
    mlp = pop.mlp
    ids = pop.ids()
    fc = mlp.fc.weight.detach().clone()
    m = moments(colony, mlp.proj.weight)[1].clone()
    pop.shrink(torch.tensor([0, 5, 31]), step=4, cause="shrink")
    keep = [i for i in range(32) if i not in (0, 5, 31)]
    assert pop.width == 29
    assert torch.equal(mlp.fc.weight.detach(), fc[keep])
    assert torch.equal(moments(colony, mlp.proj.weight)[1], m[:, keep])
    assert pop.ids() == [ids[i] for i in keep]
    assert [colony.lineage.record(ids[i]).alive for i in (0, 5, 31)] == [False] * 3
    assert colony.lineage.record(ids[1]).slot == 0
    colony.train_steps(1)  # still trains after the resize


def test_mask_silences_neurons_and_survives_save_load(colony: Colony) -> None:
    pop = colony.populations[0]
    pop.set_mask(torch.tensor([2, 3]), active=False)
    assert pop.active()[[2, 3]].eq(False).all() and pop.active().sum() == 30
    colony.train_steps(2, seed=3)
    # a masked neuron has no activation, so no gradient reaches its incoming weights
    colony.fitness.reset(0, torch.arange(32))
    colony.train_steps(1, seed=4)
    assert pop.fitness()[[2, 3]].eq(0).all() and pop.fitness()[4] > 0
    # grow, then save and rebuild from the saved config: widths and mask come back
    colony.populations[1].grow(3, step=7)
    config = colony.model.current_config()
    state = colony.model.state_dict()
    rebuilt = GPT(config)
    rebuilt.load_state_dict(state)
    assert rebuilt.mlp_widths() == [32, 35]
    assert torch.equal(rebuilt.blocks[0].mlp.gate.mask, pop.mlp.gate.mask)


def test_mature_excludes_young_and_masked(colony: Colony) -> None:
    pop = colony.populations[0]
    pop.copy_from(torch.tensor([0]), torch.tensor([1]), step=100, mutation_strength=0.1, outgoing="zero",
                  generator=torch.Generator().manual_seed(0), cause="test")  # fmt: skip
    pop.set_mask(torch.tensor([2]), active=False)
    mature = pop.mature(step=120, maturity=50)
    assert not mature[0] and not mature[2] and mature[1] and mature.sum() == 30
