"""functional_preservation: newborns fitted, before the swap, to reproduce the dying neurons' output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import apoptosis.strategies.functional_preservation  # noqa: F401  (registers it until its entry point exists)
from apoptosis.core.errors import ApoptosisError
from apoptosis.core.strategy import build_strategy
from apoptosis.strategies.functional_preservation import FunctionalPreservation
from apoptosis.training import Trainer, read_events
from tests.conftest import Colony, make_colony, tiny_run_config
from tests.test_standard import context, set_fitness


def fill_buffer(c: Colony, strategy: FunctionalPreservation, batches: int = 4) -> None:
    """Attach the input hooks and run a few training batches through the model."""
    strategy.attach(c.populations)
    c.model.train()
    c.train_steps(batches, seed=1)


def contribution(pop, incoming: torch.Tensor, outgoing: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Summed output of the neurons with these weights on inputs x (tokens, d_model)."""
    return pop.mlp.act(x @ incoming[:, :-1].t() + incoming[:, -1]) @ outgoing


def test_fitted_newborns_reproduce_the_dying_neurons_output_far_better_than_standard() -> None:
    ratios = []
    for layer in (0, 1):
        c = make_colony()
        c.train_steps(3)
        strategy = build_strategy(
            "functional_preservation",
            {"prune_rate": 0.25, "maturity": 0, "preservation_steps": 50, "buffer_batches": 4},
        )
        fill_buffer(c, strategy)
        pop = c.populations[layer]
        set_fitness(c, layer, torch.arange(32))
        x = strategy.recent_inputs(layer)
        assert x is not None and x.shape == (4 * 4 * 8, 16)
        dead = list(range(8))
        inc_before, out_before = pop.incoming(), pop.outgoing()
        target = contribution(pop, inc_before[dead], out_before[dead], x)

        # a standard child (zero outgoing weights) simply removes the dying neurons' output
        standard_error = target.pow(2).mean()

        ctx, _ = context(c, step=100)
        strategy.evolve(pop, ctx)
        inc_after, out_after = pop.incoming(), pop.outgoing()
        fitted = contribution(pop, inc_after[dead], out_after[dead], x)
        fitted_error = (fitted - target).pow(2).mean()
        ratios.append(float(fitted_error / standard_error))
        # the whole layer: only the replaced neurons changed, so its output moves by the same residual
        with torch.no_grad():
            mask = pop.mlp.gate.mask
            layer_after = (pop.mlp.act(pop.mlp.fc(x)) * mask) @ pop.mlp.proj.weight.t()
            layer_before = pop.mlp.act(x @ inc_before[:, :-1].t() + inc_before[:, -1]) @ out_before
        torch.testing.assert_close(layer_after - layer_before, fitted - target, atol=1e-5, rtol=1e-4)
        untouched = list(range(8, 32))
        assert torch.equal(inc_after[untouched], inc_before[untouched])
        assert torch.equal(out_after[untouched], out_before[untouched])
        fit = strategy.last_fit[layer]
        assert fit["fitted"] <= fit["start"] <= fit["zero"]
    assert max(ratios) < 0.2, ratios


def test_deaths_births_and_parents_are_recorded() -> None:
    c = make_colony()
    c.train_steps(2)
    strategy = build_strategy(
        "functional_preservation", {"prune_rate": 0.25, "interval": 100, "maturity": 0, "parent_pool": 0.25}
    )
    fill_buffer(c, strategy, batches=2)
    set_fitness(c, 0, torch.arange(32))
    set_fitness(c, 1, torch.arange(32).flip(0))
    ids_before = [pop.ids() for pop in c.populations]
    ctx, kinds = context(c, step=100)
    strategy.on_step_end(ctx)
    assert kinds == ["functional_preservation"]
    expected_dead = {0: list(range(8)), 1: list(range(24, 32))}
    expected_pool = {0: set(range(26, 32)), 1: set(range(6))}
    for layer, pop in enumerate(c.populations):
        dead_ids = [ids_before[layer][s] for s in expected_dead[layer]]
        for i in dead_ids:
            record = c.lineage.record(i)
            assert not record.alive and record.death_cause == "low_fitness" and record.death_step == 100
        pool_ids = {ids_before[layer][s] for s in expected_pool[layer]}
        for slot in expected_dead[layer]:
            child = c.lineage.record(pop.ids()[slot])
            assert child.alive and child.birth_step == 100
            assert len(child.parents) == 1 and child.parents[0] in pool_ids
        kept = [s for s in range(32) if s not in expected_dead[layer]]
        assert [pop.ids()[s] for s in kept] == [ids_before[layer][s] for s in kept]
    strategy.on_train_end(ctx)
    assert strategy._hooks == []


def test_empty_buffer_falls_back_to_unfitted_children_and_events_respect_the_interval() -> None:
    c = make_colony()
    c.train_steps(2)
    strategy = build_strategy("functional_preservation", {"interval": 50, "maturity": 0, "prune_rate": 0.25})
    strategy.attach(c.populations)  # hooks on, but no training batch seen yet (as right after --resume)
    set_fitness(c, 0, torch.arange(32))
    pop = c.populations[0]
    ctx, _ = context(c, step=50)
    strategy.evolve(pop, ctx)
    assert torch.count_nonzero(pop.outgoing()[:8]) == 0  # silent newborns, as standard's default
    assert all(c.lineage.record(pop.ids()[s]).birth_step == 50 for s in range(8))
    with torch.no_grad():  # evaluation forwards are not recorded
        c.model(torch.zeros(2, 8, dtype=torch.long))
    assert strategy.recent_inputs(0) is None
    fired = []
    for step in (49, 50, 51, 100, 150):
        ctx, kinds = context(c, step=step, total=150)
        strategy.on_step_end(ctx)
        fired += [step] * len(kinds)
    assert fired == [50, 100]
    strategy.detach()


def run(tmp_path: Path, strategy: str, seed: int, **params) -> tuple[dict, list[float]]:
    config = tiny_run_config(tmp_path, steps=40, strategy=strategy, interval=10, maturity=5, **params)
    config.trainer.seed = seed
    trainer = Trainer(config, tmp_path / f"{strategy}-{seed}", show_progress=False)
    summary = trainer.fit()
    return summary, trainer.totals.disruptions


def test_end_to_end_disruption_is_smaller_than_standards(tmp_path: Path) -> None:
    fp_means, std_means, fp_abs, std_abs = [], [], [], []
    for seed in (1, 2):
        summary, disruptions = run(tmp_path, "functional_preservation", seed, preservation_steps=20)
        assert summary["events"] == 3 and summary["neurons_replaced"] > 0
        events = read_events(tmp_path / f"functional_preservation-{seed}")
        assert {e["kind"] for e in events} == {"functional_preservation"}
        assert all(len(e["dead_ids"]) == len(e["born_ids"]) > 0 for e in events)
        fp_means.append(abs(summary["mean_event_disruption"]))
        fp_abs.append(float(np.mean(np.abs(disruptions))))
        summary, disruptions = run(tmp_path, "standard", seed)
        std_means.append(abs(summary["mean_event_disruption"]))
        std_abs.append(float(np.mean(np.abs(disruptions))))
    # per event, |probe loss after - before| is what preservation cuts; the signed mean of
    # standard's few events can land near zero by cancellation, so compare magnitudes per event
    assert np.mean(fp_abs) < np.mean(std_abs), (fp_abs, std_abs, fp_means, std_means)


class Killed(Exception):
    pass


def test_resume_restores_the_buffer_and_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    """The input buffer is checkpointed: an event one step after a resume fits on the same inputs."""
    reference = Trainer(
        tiny_run_config(tmp_path, steps=40, strategy="functional_preservation", interval=7, maturity=5),
        tmp_path / "reference",
        show_progress=False,
    ).fit()
    config = tiny_run_config(tmp_path, steps=40, strategy="functional_preservation", interval=7, maturity=5)
    first = Trainer(config, tmp_path / "run", show_progress=False)
    on_step_end = first.strategy.on_step_end

    def killed_at_25(ctx):
        on_step_end(ctx)
        if ctx.step == 25:
            raise Killed

    first.strategy.on_step_end = killed_at_25
    with pytest.raises(Killed):
        first.fit()
    resumed = Trainer(tiny_run_config(tmp_path, steps=40), tmp_path / "run", resume=True, show_progress=False)
    assert resumed.step == 20 and resumed.config.strategy.name == "functional_preservation"
    summary = resumed.fit()
    assert summary["steps"] == 40 and summary["events"] == 5  # steps 7, 14, 21, 28, 35
    assert resumed.strategy._hooks == []
    event_21 = [e for e in read_events(tmp_path / "run") if e["step"] == 21]
    assert event_21 and all(len(e["born_ids"]) > 0 for e in event_21)
    assert read_events(tmp_path / "run") == read_events(tmp_path / "reference")
    assert summary["final_val_loss"] == reference["final_val_loss"]


@pytest.mark.parametrize(
    "params, message",
    [
        ({"preservation_steps": -1}, "preservation_steps=-1 is out of range"),
        ({"preservation_steps": 10_001}, "preservation_steps=10001 is out of range"),
        ({"preservation_steps": 2.5}, "preservation_steps must be an integer"),
        ({"preservation_lr": 0.0}, "preservation_lr=0.0 is out of range"),
        ({"buffer_batches": 0}, "buffer_batches=0 is out of range"),
        ({"prune_rate": 0.9}, "prune_rate=0.9 is out of range"),
    ],
)
def test_params_are_validated(params: dict, message: str) -> None:
    with pytest.raises(ApoptosisError, match=message):
        build_strategy("functional_preservation", params)


def test_defaults() -> None:
    p = build_strategy("functional_preservation").params
    assert (p.prune_rate, p.interval, p.mutation_strength, p.preservation_steps) == (0.10, 500, 0.3, 50)
    assert (p.maturity, p.parent_pool, p.buffer_batches) == (250, 0.2, 4)
