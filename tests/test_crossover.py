"""The crossover strategy: children of two different tournament-selected parents."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import apoptosis.strategies.crossover  # noqa: F401  (registers "crossover" until its entry point exists)
from apoptosis.core.errors import ApoptosisError
from apoptosis.core.strategy import build_strategy
from apoptosis.strategies.crossover import choose_parents, tournament
from apoptosis.training import Trainer, read_events
from tests.conftest import Colony, make_colony, tiny_run_config
from tests.test_standard import context, set_fitness


def evolve_layer0(c: Colony, params: dict, step: int = 100) -> tuple[list[int], torch.Tensor, list[int]]:
    """Run one crossover on layer 0; returns (ids before, incoming before, dying slots)."""
    pop = c.populations[0]
    ids_before, before = pop.ids(), pop.incoming()
    strategy = build_strategy("crossover", {"maturity": 0, "mutation_strength": 0.0, **params})
    ctx, _ = context(c, step=step)
    strategy.evolve(pop, ctx)
    dead = [s for s in range(pop.width) if pop.ids()[s] != ids_before[s]]
    return ids_before, before, dead


def test_uniform_children_take_every_weight_from_one_of_their_parents() -> None:
    c = make_colony()
    c.train_steps(2)
    set_fitness(c, 0, torch.arange(32))
    ids_before, before, dead = evolve_layer0(c, {"prune_rate": 0.25, "mode": "uniform"})
    assert dead == list(range(8))  # the eight least fit
    after = c.populations[0].incoming()
    from_a = from_b = 0
    for slot in dead:
        a, b = (ids_before.index(p) for p in c.lineage.record(c.populations[0].ids()[slot]).parents)
        child = after[slot]
        assert torch.all((child == before[a]) | (child == before[b]))
        from_a += int((child == before[a]).sum())
        from_b += int((child == before[b]).sum())
    assert from_a > 30 and from_b > 30  # both parents contribute (8 x 17 weights, p = 1/2)
    assert torch.count_nonzero(c.populations[0].outgoing()[dead]) == 0  # children start silent


def test_fitness_weighted_child_is_the_exact_weighted_mean() -> None:
    c = make_colony()
    c.train_steps(2)
    fitness = torch.arange(32).float() + 1.0
    set_fitness(c, 0, fitness)
    ids_before, before, dead = evolve_layer0(c, {"prune_rate": 0.125, "mode": "fitness_weighted"})
    after = c.populations[0].incoming()
    for slot in dead:
        a, b = (ids_before.index(p) for p in c.lineage.record(c.populations[0].ids()[slot]).parents)
        share = fitness[a] / (fitness[a] + fitness[b])
        assert torch.allclose(after[slot], share * before[a] + (1 - share) * before[b], atol=1e-6, rtol=0)


def test_fitness_weighted_with_zero_fitness_is_the_plain_mean() -> None:
    c = make_colony()
    c.train_steps(2)
    set_fitness(c, 0, torch.zeros(32))
    ids_before, before, dead = evolve_layer0(c, {"prune_rate": 0.125, "mode": "fitness_weighted"})
    after = c.populations[0].incoming()
    for slot in dead:
        a, b = (ids_before.index(p) for p in c.lineage.record(c.populations[0].ids()[slot]).parents)
        assert torch.allclose(after[slot], 0.5 * before[a] + 0.5 * before[b], atol=1e-6, rtol=0)


def test_blend_children_lie_between_their_parents() -> None:
    c = make_colony()
    c.train_steps(2)
    set_fitness(c, 0, torch.arange(32))
    ids_before, before, dead = evolve_layer0(c, {"prune_rate": 0.25, "mode": "blend"})
    after = c.populations[0].incoming()
    shares = []
    for slot in dead:
        a, b = (ids_before.index(p) for p in c.lineage.record(c.populations[0].ids()[slot]).parents)
        share = ((after[slot] - before[b]) / (before[a] - before[b]))[0]  # one share per child
        assert 0.0 <= share <= 1.0
        assert torch.allclose(after[slot], share * before[a] + (1 - share) * before[b], atol=1e-5, rtol=0)
        shares.append(float(share))
    assert len({round(s, 4) for s in shares}) == len(shares)  # drawn per child


def test_lineage_records_both_parents_and_the_generation() -> None:
    c = make_colony()
    c.train_steps(2)
    pop = c.populations[0]
    pop.copy_from(torch.tensor([31]), torch.tensor([5]), step=10, mutation_strength=0.1,
                  outgoing="zero", generator=torch.Generator().manual_seed(0), cause="test")  # fmt: skip
    set_fitness(c, 0, torch.arange(32))  # the generation-1 neuron at slot 31 is the fittest
    ids_before, _, dead = evolve_layer0(c, {"prune_rate": 0.25, "tournament_size": 16})
    generations = set()
    for slot in dead:
        record = c.lineage.record(pop.ids()[slot])
        assert len(record.parents) == 2 and record.parents[0] != record.parents[1]
        assert record.generation == 1 + max(c.lineage.record(p).generation for p in record.parents)
        assert record.birth_step == 100
        generations.add(record.generation)
        dead_record = c.lineage.record(ids_before[slot])
        assert not dead_record.alive and dead_record.death_cause == "low_fitness"
    assert generations == {1, 2}  # a generation-1 parent shows up with tournaments this large


def test_parents_are_living_non_dying_and_different() -> None:
    for seed in range(5):
        c = make_colony()
        g = torch.Generator().manual_seed(seed)
        fitness = torch.rand(32, generator=g)
        set_fitness(c, 0, fitness)
        pop = c.populations[0]
        pop.set_mask(torch.tensor([30, 31]), active=False)  # masked: neither die nor breed
        dead = torch.argsort(fitness)[:12]
        dead = dead[(dead != 30) & (dead != 31)]
        for size in (2, 3, 16):
            a, b = choose_parents(pop, dead, size, g)
            assert len(a) == len(b) == len(dead)
            assert torch.all(a != b)
            forbidden = set(dead.tolist()) | {30, 31}
            assert not forbidden & set(a.tolist()) and not forbidden & set(b.tolist())
    # a tournament as large as the field always picks the two fittest
    alive = torch.arange(30)
    dead = alive[torch.argsort(fitness[alive])[:14]]  # 16 survivors for tournaments of 16
    survivors = torch.tensor(sorted(set(range(30)) - set(dead.tolist())))
    top = survivors[torch.argsort(fitness[survivors], descending=True)[:2]]
    a, b = choose_parents(pop, dead, 16, g)
    assert torch.all(a == top[0]) and torch.all(b == top[1])


def test_tournament_favours_the_fit() -> None:
    fitness = torch.arange(32).float()
    candidates = torch.arange(32)
    g = torch.Generator().manual_seed(0)
    wins = torch.zeros(32)
    for _ in range(4000):
        wins[tournament(fitness, candidates, 3, g)] += 1
    top_half = wins[16:].sum() / wins.sum()
    assert top_half > 0.85  # exact: 1 - C(16,3) / C(32,3) = 0.887; uniform would be 0.5
    assert wins[24:].sum() > 3 * wins[8:16].sum()
    assert wins[:2].sum() == 0  # the two least fit can never win a 3-way tournament
    # larger tournaments are more selective
    big = torch.zeros(32)
    for _ in range(4000):
        big[tournament(fitness, candidates, 8, g)] += 1
    assert (big * fitness).sum() / big.sum() > (wins * fitness).sum() / wins.sum()


def test_events_only_on_interval_and_never_on_the_last_step() -> None:
    c = make_colony()
    strategy = build_strategy("crossover", {"interval": 50, "maturity": 0})
    fired = []
    for step in (49, 50, 51, 100, 150):
        ctx, kinds = context(c, step=step, total=150)
        strategy.on_step_end(ctx)
        fired += [step] * len(kinds)
    assert fired == [50, 100]


def test_parameters_are_validated() -> None:
    for bad in ({"tournament_size": 1}, {"tournament_size": 17}, {"mode": "onepoint"}, {"prune_rate": 0.6}):
        with pytest.raises(ApoptosisError):
            build_strategy("crossover", bad)
    rows = {r["name"]: r for r in build_strategy("crossover").Params.describe()}
    assert rows["tournament_size"]["default"] == 3 and rows["tournament_size"]["search"] == [2, 8]
    assert rows["mode"]["choices"] == ["uniform", "fitness_weighted", "blend"]
    assert all(r["search"] or r["choices"] for r in rows.values())


def test_tiny_run_records_two_parents_per_child(tmp_path: Path) -> None:
    config = tiny_run_config(tmp_path, steps=30, strategy="crossover", interval=10, maturity=5)
    run = tmp_path / "run"
    summary = Trainer(config, run, show_progress=False).fit()
    events = read_events(run)
    assert {e["step"] for e in events} == {10, 20} and summary["events"] == 2
    assert all(e["kind"] == "crossover" for e in events)
    born = [ids for e in events for ids in e["parent_ids"]]
    assert len(born) == 2 * 2 * round(0.1 * 64)  # 2 events x 2 layers x 6
    assert all(len(ids) == 2 and ids[0] != ids[1] for ids in born)
    assert all(set(ids).isdisjoint(e["dead_ids"]) for e in events for ids in e["parent_ids"])
