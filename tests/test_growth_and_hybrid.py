"""growth_only widens layers without changing outputs and survives resume; hybrid keeps
capacity constant with births and deaths counted apart."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import torch

from apoptosis.core.strategy import build_strategy
from apoptosis.training import Trainer, load_model, read_events
from tests.conftest import make_colony, tiny_run_config
from tests.test_standard import context, set_fitness


def test_growth_with_no_mutation_leaves_outputs_unchanged() -> None:
    c = make_colony()
    c.train_steps(2)
    params = {"growth_rate": 0.25, "interval": 10, "max_width": 44, "mutation_strength": 0.0}
    strategy = build_strategy("growth_only", params)
    x = torch.randint(20, (3, 8))
    c.model.eval()
    with torch.no_grad():
        before, _ = c.model(x)
    ctx, kinds = context(c, step=10)
    strategy.on_step_end(ctx)
    with torch.no_grad():
        after, _ = c.model(x)
    assert kinds == ["growth_only"] and c.model.mlp_widths() == [40, 40]
    assert torch.allclose(before, after, atol=1e-5)
    ctx, _ = context(c, step=20)
    strategy.on_step_end(ctx)
    assert c.model.mlp_widths() == [44, 44]  # capped at max_width
    assert not any(not r.alive for r in c.lineage.records)  # nothing died


def test_hybrid_keeps_width_and_records_births_and_deaths_apart() -> None:
    c = make_colony()
    c.train_steps(2)
    set_fitness(c, 0, torch.arange(32))
    set_fitness(c, 1, torch.arange(32))
    ids_before = c.lineage.ids(0)
    strategy = build_strategy("hybrid", {"turnover_rate": 0.125, "interval": 10, "maturity": 0})
    ctx, _ = context(c, step=10)
    strategy.on_step_end(ctx)
    assert c.model.mlp_widths() == [32, 32]
    dead = [r for r in c.lineage.records if not r.alive and r.layer == 0]
    born = [r for r in c.lineage.records if r.birth_step == 10 and r.layer == 0]
    assert sorted(r.id for r in dead) == ids_before[:4]  # the four least fit
    assert len(born) == 4 and all(r.parents[0] in ids_before[4:] for r in born)
    assert c.lineage.ids(0)[:28] == ids_before[4:]  # survivors keep their order


def test_grown_run_saves_loads_and_resumes(tmp_path: Path) -> None:
    config = tiny_run_config(tmp_path, steps=30, strategy="growth_only", growth_rate=0.25, interval=10, max_width=200)
    run = tmp_path / "run"
    reference = Trainer(config, run, show_progress=False).fit()
    assert reference["neurons"] == 2 * 100  # 64 -> 80 -> 100
    model, _, ckpt = load_model(run)
    assert model.mlp_widths() == [100, 100] and ckpt["config"]["model"]["mlp_widths"] == [100, 100]
    metrics = pd.read_csv(run / "metrics.csv")
    assert metrics.neurons.iloc[0] == 128 and metrics.neurons.iloc[-1] == 200
    assert {len(e["born_ids"]) for e in read_events(run)} == {16, 20} and all(
        not e["dead_ids"] for e in read_events(run)
    )

    # stop at step 20 (after two growths), then resume to 30: same numbers as the straight run
    config = tiny_run_config(tmp_path, steps=30, strategy="growth_only", growth_rate=0.25, interval=10, max_width=200)
    halted = tmp_path / "halted"
    trainer = Trainer(config, halted, show_progress=False)
    trainer.fitness.attach()
    trainer.model.train()
    while trainer.step < 20:
        trainer._train_step()
    trainer.fitness.detach()
    trainer.folder.release()  # what the process's death would do
    assert trainer.model.mlp_widths() == [100, 100]
    resumed = Trainer(config, halted, resume=True, show_progress=False).fit()
    assert resumed["final_val_loss"] == reference["final_val_loss"]
    assert json.loads((halted / "summary.json").read_text())["neurons"] == 200
