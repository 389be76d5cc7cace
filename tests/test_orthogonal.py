"""The orthogonal strategy: redundant low-fitness neurons die, parents unlike the rest breed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import apoptosis.strategies.orthogonal  # noqa: F401  (registers "orthogonal" until its entry point exists)
from apoptosis.core.errors import ApoptosisError
from apoptosis.core.population import NeuronPopulation
from apoptosis.core.strategy import build_strategy
from apoptosis.strategies.orthogonal import choose_deaths, choose_parents, cosine_matrix, max_similarity, rank_score
from apoptosis.strategies.selection import select_deaths
from apoptosis.training import Trainer, read_events
from tests.conftest import make_colony, tiny_run_config
from tests.test_standard import context, set_fitness


def params(**values):
    return build_strategy("orthogonal", {"maturity": 0, "interval": 100, **values}).params


def mean_max_similarity(pop: NeuronPopulation) -> float:
    cos = cosine_matrix(pop.incoming())
    return float(max_similarity(cos, torch.arange(pop.width), pop.active()).mean())


def test_rank_score_and_max_similarity() -> None:
    assert torch.equal(rank_score(torch.tensor([3.0, 1.0, 2.0])), torch.tensor([1.0, 0.0, 0.5]))
    assert torch.equal(rank_score(torch.tensor([5.0, 5.0, 1.0])), torch.tensor([0.75, 0.75, 0.0]))  # ties share
    w = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    cos = cosine_matrix(w)
    living = torch.tensor([True, False, True, True])
    sim = max_similarity(cos, torch.arange(4), living)
    assert torch.allclose(sim, torch.tensor([0.5**0.5, 1.0, 0.5**0.5, 0.5**0.5]))  # itself and slot 1 excluded


def test_with_full_diversity_weight_one_of_two_duplicates_dies() -> None:
    c = make_colony()
    c.train_steps(2)
    pop = c.populations[0]
    pop.copy_from(torch.tensor([6]), torch.tensor([2]), step=0, mutation_strength=0.0,
                  outgoing="zero", generator=torch.Generator().manual_seed(0), cause="test")  # fmt: skip
    assert torch.equal(pop.incoming()[6], pop.incoming()[2])
    set_fitness(c, 0, torch.arange(32))  # candidates: slots 0..9 (candidate_share 0.3)
    p = params(prune_rate=0.0625, diversity_weight=1.0)  # two deaths
    dead = choose_deaths(pop, 100, p, cosine_matrix(pop.incoming()))
    assert len(dead) == 2
    assert dead[0] == 2  # a duplicate first; of the two, the less fit
    assert 6 not in dead.tolist()  # its twin is no longer redundant once slot 2 is chosen
    # and through the strategy: exactly one of the twins is replaced
    ids = pop.ids()
    build_strategy("orthogonal", {"maturity": 0, "prune_rate": 0.0625, "diversity_weight": 1.0}).evolve(
        pop, context(c, step=100)[0]
    )
    assert [c.lineage.record(ids[s]).alive for s in (2, 6)] == [False, True]


def test_with_zero_diversity_weight_deaths_are_standards() -> None:
    c = make_colony()
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        fitness = torch.randint(0, 8, (32,), generator=g).float()  # with ties
        set_fitness(c, 0, fitness)
        pop = c.populations[0]
        for rate, share in ((0.1, 0.3), (0.25, 0.5), (0.25, 0.1)):
            p = params(prune_rate=rate, candidate_share=share, diversity_weight=0.0)
            dead = choose_deaths(pop, 100, p, cosine_matrix(pop.incoming()))
            assert torch.equal(dead, select_deaths(pop, 100, rate, 0))


def test_only_mature_candidates_die() -> None:
    c = make_colony()
    c.train_steps(1)
    pop = c.populations[0]
    pop.copy_from(torch.tensor([0, 1, 2]), torch.tensor([3, 3, 3]), step=95, mutation_strength=0.0,
                  outgoing="zero", generator=torch.Generator().manual_seed(0), cause="test")  # fmt: skip
    set_fitness(c, 0, torch.arange(32))  # the three young duplicates are the least fit and most redundant
    p = build_strategy("orthogonal", {"maturity": 50, "prune_rate": 0.25, "diversity_weight": 1.0}).params
    dead = choose_deaths(pop, 100, p, cosine_matrix(pop.incoming()))
    assert len(dead) == 8 and not {0, 1, 2} & set(dead.tolist())
    assert set(dead.tolist()) <= set(select_deaths(pop, 100, 0.3, 50).tolist())  # among the candidates


def test_parents_come_from_the_pool_and_favour_the_least_similar() -> None:
    c = make_colony()
    c.train_steps(2)
    pop = c.populations[0]
    set_fitness(c, 0, torch.arange(32))
    cos = cosine_matrix(pop.incoming())
    dead = torch.arange(8)
    g = torch.Generator().manual_seed(0)
    parents, pool = choose_parents(pop, dead, params(parent_pool=0.25), cos, g)
    assert set(pool.tolist()) == set(range(26, 32))  # the top ceil(0.25 x 24) survivors
    assert len(parents) == 8 and set(parents.tolist()) <= set(pool.tolist())
    survivors = torch.ones(32, dtype=torch.bool)
    survivors[dead] = False
    similarity = max_similarity(cos, pool, survivors)
    least_similar = int(pool[torch.argmin(similarity)])
    parents, _ = choose_parents(pop, dead, params(parent_pool=0.25, temperature=1e-4), cos, g)
    assert set(parents.tolist()) == {least_similar}  # a cold softmax: always the least similar
    counts = torch.zeros(32)
    warm = params(parent_pool=0.25, temperature=0.05)
    for _ in range(100):
        counts[choose_parents(pop, dead, warm, cos, g)[0]] += 1
    most_similar = int(pool[torch.argmax(similarity)])
    assert counts[least_similar] > counts[most_similar]
    # through the strategy: every child's parent was in the pool
    ids = pop.ids()
    pool_ids = {ids[s] for s in pool.tolist()}
    strategy = build_strategy("orthogonal", {"maturity": 0, "prune_rate": 0.25, "parent_pool": 0.25})
    strategy.evolve(pop, context(c, step=100)[0])
    born = [c.lineage.record(i) for i in pop.ids() if c.lineage.record(i).birth_step == 100]
    assert len(born) == 8 and all(len(r.parents) == 1 and r.parents[0] in pool_ids for r in born)


def test_diversity_weight_lowers_redundancy_after_an_event() -> None:
    after = {}
    for weight in (0.0, 1.0):
        c = make_colony()
        c.train_steps(2)
        strategy = build_strategy(
            "orthogonal",
            {"prune_rate": 0.25, "candidate_share": 0.5, "interval": 100, "maturity": 0, "diversity_weight": weight},
        )
        ctx, kinds = context(c, step=100)
        strategy.on_step_end(ctx)
        assert kinds == ["orthogonal"]
        after[weight] = [mean_max_similarity(pop) for pop in c.populations]
    assert all(a <= b for a, b in zip(after[1.0], after[0.0], strict=True)), after


def test_events_only_on_interval_and_never_on_the_last_step() -> None:
    c = make_colony()
    strategy = build_strategy("orthogonal", {"interval": 50, "maturity": 0})
    fired = []
    for step in (49, 50, 51, 100, 150):
        ctx, kinds = context(c, step=step, total=150)
        strategy.on_step_end(ctx)
        fired += [step] * len(kinds)
    assert fired == [50, 100]


def test_parameters_are_validated() -> None:
    for bad in ({"diversity_weight": 1.5}, {"diversity_weight": -0.1}, {"temperature": 0.0}, {"candidate_share": 2}):
        with pytest.raises(ApoptosisError):
            build_strategy("orthogonal", bad)
    rows = {r["name"]: r for r in build_strategy("orthogonal").Params.describe()}
    assert rows["diversity_weight"]["search"] == [0.0, 1.0] and rows["temperature"]["log"]
    assert all(r["search"] for r in rows.values())


def test_tiny_run(tmp_path: Path) -> None:
    config = tiny_run_config(tmp_path, steps=30, strategy="orthogonal", interval=10, maturity=5)
    run = tmp_path / "run"
    summary = Trainer(config, run, show_progress=False).fit()
    events = read_events(run)
    assert {e["step"] for e in events} == {10, 20} and summary["events"] == 2
    assert all(e["kind"] == "orthogonal" for e in events)
    assert all(len(e["born_ids"]) == len(e["dead_ids"]) == round(0.1 * 64) for e in events)
    assert all(len(ids) == 1 and ids[0] not in e["dead_ids"] for e in events for ids in e["parent_ids"])
