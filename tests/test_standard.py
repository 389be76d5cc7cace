"""The standard strategy kills the least fit mature neurons and breeds from the fittest."""

from __future__ import annotations

import torch

from apoptosis.core.strategy import TrainingContext, build_strategy
from tests.conftest import Colony, make_colony


def set_fitness(c: Colony, layer: int, values: torch.Tensor) -> None:
    c.fitness.sums[layer] = values.float().clone()
    c.fitness.weights[layer] = torch.ones_like(c.fitness.sums[layer])


def context(c: Colony, step: int, total: int = 10_000) -> tuple[TrainingContext, list[str]]:
    kinds: list[str] = []

    def run_event(kind, surgery):
        kinds.append(kind)
        for pop in c.populations:
            surgery(pop)

    ctx = TrainingContext(
        step, total, c.model, c.populations, c.lineage, torch.Generator().manual_seed(0), run_event, print
    )
    return ctx, kinds


def test_least_fit_die_and_children_come_from_the_fittest() -> None:
    c = make_colony()
    c.train_steps(2)
    set_fitness(c, 0, torch.arange(32))
    set_fitness(c, 1, torch.arange(32).flip(0))
    before = [pop.incoming() for pop in c.populations]
    ids_before = [pop.ids() for pop in c.populations]
    strategy = build_strategy(
        "standard", {"prune_rate": 0.25, "interval": 100, "maturity": 0, "mutation_strength": 0.0, "parent_pool": 0.25}
    )
    ctx, kinds = context(c, step=100)
    strategy.on_step_end(ctx)
    assert kinds == ["standard"]
    expected_dead = {0: list(range(8)), 1: list(range(24, 32))}
    expected_pool = {0: set(range(26, 32)), 1: set(range(6))}  # top ceil(0.25 * 24) of the survivors
    for layer, pop in enumerate(c.populations):
        dead = expected_dead[layer]
        dead_ids = [ids_before[layer][s] for s in dead]
        assert all(not c.lineage.record(i).alive for i in dead_ids)
        assert all(c.lineage.record(i).death_cause == "low_fitness" for i in dead_ids)
        pool_ids = {ids_before[layer][s] for s in expected_pool[layer]}
        after = pop.incoming()
        for slot in dead:
            child = c.lineage.record(pop.ids()[slot])
            assert child.birth_step == 100 and child.parents[0] in pool_ids
            parent_slot = ids_before[layer].index(child.parents[0])
            assert torch.equal(after[slot], before[layer][parent_slot])  # mutation 0: an exact copy
        untouched = [s for s in range(32) if s not in dead]
        assert torch.equal(after[untouched], before[layer][untouched])


def test_young_neurons_are_protected_by_maturity() -> None:
    c = make_colony()
    c.train_steps(2)
    pop = c.populations[0]
    pop.copy_from(torch.arange(4), torch.tensor([10, 11, 12, 13]), step=90, mutation_strength=0.1,
                  outgoing="zero", generator=torch.Generator().manual_seed(0), cause="test")  # fmt: skip
    set_fitness(c, 0, torch.arange(32))  # the young ones are the least fit
    strategy = build_strategy("standard", {"prune_rate": 0.25, "interval": 100, "maturity": 50})
    ctx, _ = context(c, step=100)
    young = pop.ids()[:4]
    strategy.evolve(pop, ctx)
    assert all(c.lineage.record(i).alive for i in young)
    assert all(c.lineage.record(pop.ids()[s]).birth_step == 100 for s in range(4, 12))


def test_events_only_on_interval_and_never_on_the_last_step() -> None:
    c = make_colony()
    strategy = build_strategy("standard", {"interval": 50, "maturity": 0})
    fired = []
    for step in (49, 50, 51, 100, 150):
        ctx, kinds = context(c, step=step, total=150)
        strategy.on_step_end(ctx)
        fired += [step] * len(kinds)
    assert fired == [50, 100]


def test_outgoing_modes() -> None:
    for mode, check in (
        ("zero", lambda child, parent: torch.count_nonzero(child) == 0),
        ("copy", lambda child, parent: torch.equal(child, parent)),
    ):
        c = make_colony()
        c.train_steps(1)
        set_fitness(c, 0, torch.arange(32))
        strategy = build_strategy(
            "standard",
            {"prune_rate": 0.1, "maturity": 0, "mutation_strength": 0.0, "outgoing": mode, "parent_pool": 0.01},
        )
        pop = c.populations[0]
        ctx, _ = context(c, step=500)
        out_before = pop.outgoing()
        strategy.evolve(pop, ctx)
        assert check(pop.outgoing()[0], out_before[31]), mode  # the single fittest neuron is the only parent
