"""The reference methods for loss of plasticity: continual backprop (cbp), ReDo (redo), shrink &
perturb, L2 Init and the full reset. For each: what it picks, what it resets, the optimizer state
it leaves, the lineage it writes, and that a run with it resumes to the same numbers."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from apoptosis.core.config import RunConfig, StrategyConfig
from apoptosis.core.errors import ApoptosisError
from apoptosis.core.model import INIT_STD, fresh_parameters, residual_std
from apoptosis.core.population import restart_optimizer
from apoptosis.core.strategy import Phase, TrainingContext, build_strategy
from apoptosis.training import Trainer, build_optimizer, read_events
from tests.conftest import Colony, make_colony, tiny_run_config
from tests.test_continual import S, phased_config

WIDTH = 32  # the colony's MLP width


def context(c: Colony, step: int, total: int = 10_000, seed: int = 0) -> tuple[TrainingContext, list[str]]:
    kinds: list[str] = []

    def run_event(kind, surgery):
        kinds.append(kind)
        for pop in c.populations:
            surgery(pop)

    g = torch.Generator().manual_seed(seed)
    return TrainingContext(step, total, c.model, c.populations, c.lineage, g, run_event, lambda m: None), kinds


def assert_reborn(c: Colony, layer: int, slots: list[int], step: int, cause: str, ids_before: list[int]) -> None:
    """Newborns in ``slots`` from the initial distribution (bias 0, outgoing 0), with zero moments,
    their own Adam clock restarted now, and the lineage recording deaths and births."""
    pop, index = c.populations[layer], torch.tensor(slots)
    assert torch.count_nonzero(pop.incoming()[index, -1]) == 0 and torch.count_nonzero(pop.outgoing()[index]) == 0
    for param, dim in ((pop.mlp.fc.weight, 0), (pop.mlp.fc.bias, 0), (pop.mlp.proj.weight, 1)):
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.count_nonzero(c.optimizer.state[param][key].index_select(dim, index)) == 0
    assert pop.updates.born_at[index].tolist() == [pop.updates.optimizer_step()] * len(slots)
    for slot in slots:
        dead, child = c.lineage.record(ids_before[slot]), c.lineage.record(pop.ids()[slot])
        assert not dead.alive and dead.death_step == step and dead.death_cause == cause
        assert child.birth_step == step and child.parents == ()


def test_fresh_parameters_draw_the_initial_distribution_without_touching_the_model() -> None:
    c = make_colony(d_model=64, d_ff=256)
    before = {name: p.detach().clone() for name, p in c.model.named_parameters()}
    fresh = fresh_parameters(c.model, torch.Generator().manual_seed(3))
    again = fresh_parameters(c.model, torch.Generator().manual_seed(3))
    assert list(fresh) == [name for name, _ in c.model.named_parameters()]
    for name, p in c.model.named_parameters():
        assert torch.equal(p, before[name]) and fresh[name].shape == p.shape
        assert torch.equal(fresh[name], again[name])
    assert torch.equal(fresh["blocks.0.ln_1.weight"], torch.ones(64))
    assert torch.count_nonzero(fresh["blocks.1.mlp.fc.bias"]) == 0 and torch.count_nonzero(fresh["ln_f.bias"]) == 0
    for name in ("blocks.0.mlp.fc.weight", "wte.weight", "blocks.1.mlp.proj.weight", "blocks.0.attn.out.weight"):
        std = residual_std(2) if name.endswith(("proj.weight", "out.weight")) else INIT_STD
        assert fresh[name].std().item() == pytest.approx(std, rel=0.1), name


def test_reinitialize_and_output_bias() -> None:
    c = make_colony()
    c.train_steps(3)
    pop = c.populations[1]
    ids, before, bias = pop.ids(), pop.incoming(), pop.mlp.proj.bias.detach().clone()
    expected = torch.randn(2, pop.mlp.fc.in_features, generator=torch.Generator().manual_seed(5)) * INIT_STD
    g = torch.Generator().manual_seed(5)
    pop.reinitialize([3, 7], step=9, cause="test", generator=g, death_fitness=torch.tensor([0.5, 0.25]))
    assert torch.equal(pop.incoming()[[3, 7], :-1], expected) and torch.equal(pop.incoming()[:3], before[:3])
    assert_reborn(c, 1, [3, 7], step=9, cause="test", ids_before=ids)
    assert [c.lineage.record(ids[s]).death_fitness for s in (3, 7)] == [0.5, 0.25]
    pop.add_to_output_bias(torch.ones(pop.mlp.proj.out_features))
    assert torch.equal(pop.mlp.proj.bias.detach(), bias + 1)


def test_restart_optimizer_is_a_fresh_optimizer() -> None:
    c = make_colony()
    c.train_steps(3)
    c.populations[0].reinitialize([1], step=3, cause="test", generator=torch.Generator().manual_seed(0))
    restart_optimizer(c.optimizer, c.populations)
    assert len(c.optimizer.state) == 0 and all(int(p.updates.born_at.sum()) == 0 for p in c.populations)
    copy = make_colony()
    copy.model.load_state_dict(c.model.state_dict())
    fresh_optimizer = build_optimizer(copy.model, RunConfig())
    for colony, optimizer in ((c, c.optimizer), (copy, fresh_optimizer)):
        colony.optimizer = optimizer
        colony.train_steps(1, seed=4)
    for a, b in zip(c.model.parameters(), copy.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_cbp_replaces_the_lowest_utility_mature_neurons_with_a_fractional_counter() -> None:
    c = make_colony()
    c.train_steps(2)
    strategy = build_strategy("cbp", {"replacement_rate": 1 / 64, "maturity": 10, "absorb_bias": False})
    ctx, kinds = context(c, step=95)
    strategy.on_train_begin(ctx)
    for pop in c.populations:  # four young neurons, the lowest utility of all: never eligible
        pop.reinitialize([0, 1, 2, 3], step=95, cause="test", generator=ctx.generator)
        strategy.util[pop.layer] = torch.arange(WIDTH, dtype=torch.float32) + 1
        strategy.weight[pop.layer] = torch.ones(WIDTH)
    ids = [pop.ids() for pop in c.populations]
    replaced_at = []
    for step in range(100, 105):  # no forward pass: the utilities stay as set
        ctx.step = step
        before = len(kinds)
        strategy.on_step_end(ctx)
        replaced_at += [step] * (len(kinds) - before)
    # 28 eligible x 1/64 a step: 0.4375, 0.875, 1.3125 (one goes); then 27: 0.734375, 1.15625 (one)
    assert replaced_at == [102, 104] and kinds == ["cbp", "cbp"]
    assert strategy.counter == [pytest.approx(0.15625)] * 2 and strategy.replaced == [2, 2]
    for layer, pop in enumerate(c.populations):
        assert [c.lineage.record(ids[layer][s]).alive for s in range(8)] == [True] * 4 + [False, False, True, True]
        assert [c.lineage.record(ids[layer][s]).death_fitness for s in (4, 5)] == [5.0, 6.0]
        assert [c.lineage.record(pop.ids()[s]).birth_step for s in (4, 5)] == [102, 104]
        assert_reborn(c, layer, [5], step=104, cause="cbp", ids_before=ids[layer])
        assert strategy.util[layer][[4, 5]].tolist() == [0.0, 0.0]


def test_cbp_utility_is_a_bias_corrected_average_of_mean_abs_h_times_mean_abs_outgoing() -> None:
    c = make_colony()
    strategy = build_strategy("cbp", {"replacement_rate": 0.0, "decay": 0.9})
    ctx, _ = context(c, step=1)
    strategy.on_train_begin(ctx)
    seen = []
    handle = c.model.blocks[0].mlp.gate.register_forward_hook(lambda m, i, h: seen.append(h.detach().clone()))
    expected_sum, expected_mean = torch.zeros(WIDTH), torch.zeros(WIDTH)
    for step in (1, 2):
        c.train_steps(1, seed=step)
        ctx.step = step
        strategy.on_step_end(ctx)
        h = seen[-1]
        out = c.populations[0].outgoing().abs().mean(dim=1)
        expected_sum = 0.9 * expected_sum + 0.1 * h.abs().mean(dim=(0, 1)) * out
        expected_mean = 0.9 * expected_mean + 0.1 * h.mean(dim=(0, 1))
    handle.remove()
    torch.testing.assert_close(strategy.utility(0), expected_sum / (1 - 0.9**2))
    torch.testing.assert_close(strategy.mean_activation(0), expected_mean / (1 - 0.9**2))
    strategy.on_train_end(ctx)


def test_cbp_on_real_steps_replaces_the_lowest_utilities_and_nothing_else() -> None:
    c = make_colony()
    strategy = build_strategy("cbp", {"replacement_rate": 0.1, "maturity": 0})
    ctx, kinds = context(c, step=1)
    strategy.on_train_begin(ctx)
    c.train_steps(1, seed=1)
    pop = c.populations[0]
    ids, out_before, in_before = pop.ids(), pop.outgoing(), pop.incoming()
    strategy.on_step_end(ctx)  # 32 eligible x 0.1 = 3.2: three replaced per layer, 0.2 kept
    assert kinds == ["cbp"] and strategy.replaced == [3, 3] and strategy.counter == [pytest.approx(0.2)] * 2
    dead = [s for s in range(WIDTH) if not c.lineage.record(ids[s]).alive]
    alive = [s for s in range(WIDTH) if s not in dead]
    assert (
        len(dead) == 3
        and max(c.lineage.record(ids[s]).death_fitness for s in dead) <= strategy.utility(0)[alive].min().item()
    )
    assert_reborn(c, 0, dead, step=1, cause="cbp", ids_before=ids)
    assert torch.equal(pop.outgoing()[alive], out_before[alive]) and torch.equal(
        pop.incoming()[alive], in_before[alive]
    )
    strategy.on_train_end(ctx)


def test_cbp_bias_absorption_formula() -> None:
    c = make_colony()
    strategy = build_strategy("cbp", {"replacement_rate": 1 / 32, "maturity": 0})
    ctx, _ = context(c, step=5)
    strategy.on_train_begin(ctx)
    g = torch.Generator().manual_seed(1)
    for pop in c.populations:
        strategy.util[pop.layer] = torch.rand(WIDTH, generator=g) + 1
        strategy.util[pop.layer][9] = 0.5  # the single lowest utility
        strategy.mean_act[pop.layer] = torch.randn(WIDTH, generator=g) * 0.5
        strategy.weight[pop.layer] = torch.full((WIDTH,), 0.5)
    pop = c.populations[1]
    out = pop.outgoing()[9]
    bias = pop.mlp.proj.bias.detach().clone()
    mean = strategy.mean_act[1][9] / 0.5
    strategy.on_step_end(ctx)  # 32 x 1/32 = 1: one neuron per layer
    torch.testing.assert_close(pop.mlp.proj.bias.detach(), bias + mean * out)
    assert torch.count_nonzero(pop.outgoing()[9]) == 0
    assert c.lineage.record(pop.ids()[9]).birth_step == 5
    strategy.on_train_end(ctx)


def test_redo_recycles_exactly_the_neurons_with_score_at_most_tau() -> None:
    c = make_colony()
    c.train_steps(2)
    seen = {}
    hooks = [
        b.mlp.gate.register_forward_hook(lambda m, i, h, layer=layer: seen.setdefault(layer, h.detach().clone()))
        for layer, b in enumerate(c.model.blocks)
    ]
    strategy = build_strategy("redo", {"tau": 0.8, "interval": 10})
    ctx, kinds = context(c, step=10)
    strategy.on_train_begin(ctx)
    c.train_steps(1, seed=3)
    for hook in hooks:
        hook.remove()
    ids, expected = [pop.ids() for pop in c.populations], {}
    for layer, h in seen.items():
        score = h.abs().mean(dim=(0, 1)) / (h.abs().mean(dim=(0, 1)).mean() + 1e-9)
        expected[layer] = (score <= 0.8).nonzero().squeeze(1).tolist()
        assert 0 < len(expected[layer]) < WIDTH
    strategy.on_step_end(ctx)
    assert kinds == ["redo"]
    for layer in (0, 1):
        dead = [s for s in range(WIDTH) if not c.lineage.record(ids[layer][s]).alive]
        assert dead == expected[layer]
        assert_reborn(c, layer, dead, step=10, cause="redo", ids_before=ids[layer])
    counts = [len(expected[0]), len(expected[1])]
    fractions, overall = [n / WIDTH for n in counts], sum(counts) / (2 * WIDTH)
    assert strategy.dormant_history == [{"step": 10, "fractions": fractions, "counts": counts, "fraction": overall}]
    strategy.on_train_end(ctx)


def test_redo_fires_on_its_interval_and_records_zero_dormancy_too() -> None:
    c = make_colony()
    strategy = build_strategy("redo", {"tau": 0.0, "interval": 5})
    ctx, kinds = context(c, step=0, total=10)
    strategy.on_train_begin(ctx)
    for step in range(1, 11):
        c.train_steps(1, seed=step)
        ctx.step = step
        strategy.on_step_end(ctx)
    assert kinds == [] and strategy.dormant_history == [dict(step=5, fractions=[0.0] * 2, counts=[0] * 2, fraction=0.0)]
    strategy.on_train_end(ctx)


def test_shrink_perturb_formula_and_optimizer_restart() -> None:
    c = make_colony()
    c.train_steps(3)
    before = {name: p.detach().clone() for name, p in c.model.named_parameters()}
    strategy = build_strategy("shrink_perturb", {"shrink": 0.3, "perturb": 0.2})
    ctx, kinds = context(c, step=50, seed=7)
    noise = fresh_parameters(c.model, torch.Generator().manual_seed(7))
    strategy.on_phase_end(ctx, Phase(0, "a", 50))
    for name, p in c.model.named_parameters():
        torch.testing.assert_close(p.detach(), 0.3 * before[name] + 0.2 * noise[name])
    assert len(c.optimizer.state) == 0 and all(int(pop.updates.born_at.sum()) == 0 for pop in c.populations)
    assert kinds == [] and c.lineage.mark()[1] == 0  # model-wide: no event, no death
    assert strategy.history == [{"step": 50, "reason": "end of a"}]
    strategy.on_phase_end(ctx, Phase(0, "a", 50))  # not twice in one step
    assert len(strategy.history) == 1
    kept = build_strategy("shrink_perturb", {"interval": 4, "reset_optimizer": False})
    c.train_steps(1)
    for step in range(1, 10):
        ctx.step = step
        kept.on_step_end(ctx)
    assert [e["step"] for e in kept.history] == [4, 8] and len(c.optimizer.state) > 0


def test_l2_init_loss_and_gradient() -> None:
    c = make_colony()
    strategy = build_strategy("l2_init", {"weight": 0.05})
    ctx, _ = context(c, step=0)
    strategy.on_train_begin(ctx)
    start = {name: p.detach().clone() for name, p in c.model.named_parameters()}
    assert strategy.extra_loss(ctx).item() == 0.0
    c.train_steps(3)
    loss = strategy.extra_loss(ctx)
    expected = 0.05 * sum(((p.detach() - start[n]) ** 2).sum() for n, p in c.model.named_parameters())
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5) and loss.item() > 0
    loss.backward()
    for name, p in c.model.named_parameters():
        torch.testing.assert_close(p.grad, 2 * 0.05 * (p.detach() - start[name]))


def test_l2_init_keeps_a_restored_start_and_refuses_other_shapes() -> None:
    c = make_colony()
    strategy = build_strategy("l2_init", {})
    ctx, _ = context(c, step=0)
    strategy.on_train_begin(ctx)
    saved, resumed = strategy.state_dict(), build_strategy("l2_init", {})
    c.train_steps(2)
    resumed.load_state_dict(saved)
    resumed.on_train_begin(ctx)  # after a resume: theta_0 is the saved one, not the model now
    for name, value in saved["theta0"].items():
        assert torch.equal(resumed.theta0[name], value)
    assert resumed.extra_loss(ctx).item() > 0
    c.populations[0].grow(2, step=2)
    with pytest.raises(ApoptosisError, match=r"blocks\.0\.mlp\.fc\.weight has shape \(34, 16\)"):
        resumed.extra_loss(ctx)


def test_full_reset_redraws_every_parameter_and_restarts_the_optimizer() -> None:
    c = make_colony()
    c.train_steps(3)
    c.populations[0].set_mask([2], False)
    ids = [pop.ids() for pop in c.populations]
    strategy = build_strategy("full_reset", {})
    ctx, kinds = context(c, step=30, seed=11)
    expected = fresh_parameters(c.model, torch.Generator().manual_seed(11))
    strategy.on_phase_end(ctx, Phase(0, "a", 30))
    for name, p in c.model.named_parameters():
        assert torch.equal(p.detach(), expected[name]), name
    assert kinds == ["full_reset"] and len(c.optimizer.state) == 0
    for layer, pop in enumerate(c.populations):
        assert int(pop.updates.born_at.sum()) == 0 and bool(pop.active().all())
        for slot, old in enumerate(ids[layer]):
            dead, child = c.lineage.record(old), c.lineage.record(pop.ids()[slot])
            assert dead.death_cause == "reset" and dead.death_step == 30
            assert child.birth_step == 30 and child.parents == ()
    assert strategy.history == [{"step": 30, "reason": "end of a"}]
    c.train_steps(1)  # the optimizer starts again from a clean state
    assert all(int(s["step"]) == 1 for s in c.optimizer.state.values())


def same(a, b) -> bool:
    """Equal, tensors exactly, through dicts and lists."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


RUNS = {
    "cbp": {"replacement_rate": 0.01, "maturity": 5},
    "redo": {"tau": 0.5, "interval": 5},
    "shrink_perturb": {"interval": 12, "shrink": 0.8, "perturb": 0.05},
    "l2_init": {"weight": 0.01},
    "full_reset": {"interval": 15},
}


@pytest.mark.parametrize("name", list(RUNS))
def test_a_run_with_each_method_resumes_exactly(tmp_path: Path, name: str) -> None:
    def config() -> RunConfig:
        return tiny_run_config(tmp_path, steps=30, strategy=name, **RUNS[name])

    reference_dir = tmp_path / "reference"
    reference_trainer = Trainer(config(), reference_dir, show_progress=False)
    reference = reference_trainer.fit()

    def stop(step: int, val_loss: float) -> None:
        if step == 20:  # before step 20's checkpoint: the run goes on from step 10's
            raise KeyboardInterrupt

    killed = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        Trainer(config(), killed, show_progress=False, on_evaluate=stop).fit()
    trainer = Trainer(RunConfig(), killed, resume=True, show_progress=False)
    assert trainer.step == 10
    resumed = trainer.fit()
    for key in ("final_train_loss", "final_val_loss", "events", "neurons_replaced"):
        assert resumed[key] == reference[key], key
    assert read_events(killed) == read_events(reference_dir)
    assert (killed / "lineage.csv").read_text() == (reference_dir / "lineage.csv").read_text()
    assert same(trainer.strategy.state_dict(), reference_trainer.strategy.state_dict())
    if name in ("cbp", "redo", "full_reset"):
        assert reference["neurons_replaced"] > 0 and {e["kind"] for e in read_events(reference_dir)} == {name}
    if name == "redo":
        assert [e["step"] for e in trainer.strategy.dormant_history] == [5, 10, 15, 20, 25]


def test_the_methods_are_listed_by_the_cli(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "apoptosis.cli", "strategies", "--json"], capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    listing = {item["name"]: item for item in json.loads(result.stdout)}
    assert set(RUNS) <= set(listing)
    defaults = {name: {p["name"]: p["default"] for p in listing[name]["parameters"]} for name in RUNS}
    assert defaults["cbp"] == {"replacement_rate": 1e-4, "maturity": 100, "decay": 0.99, "absorb_bias": True}
    assert defaults["redo"] == {"tau": 0.1, "interval": 250}
    assert defaults["shrink_perturb"] == {"shrink": 0.4, "perturb": 0.1, "interval": 0, "reset_optimizer": True}
    assert defaults["l2_init"] == {"weight": 0.01} and defaults["full_reset"] == {"interval": 0}
    for name in RUNS:
        searched = [p for p in listing[name]["parameters"] if p["search"]]
        assert searched and all(math.isfinite(v) for p in searched for v in p["search"])


@pytest.mark.parametrize("name", ["shrink_perturb", "full_reset"])
def test_the_task_boundary_methods_act_at_each_phase_end(tmp_path: Path, name: str) -> None:
    config = phased_config(tmp_path, "prose,code,prose")
    config.strategy = StrategyConfig(name)
    trainer = Trainer(config, tmp_path / "run", show_progress=False)
    trainer.fit()
    assert [e["step"] for e in trainer.strategy.history] == [S, 2 * S]  # not at the last step
    events = [e for e in read_events(tmp_path / "run") if e["kind"] == name]
    if name == "full_reset":
        assert sorted({e["step"] for e in events}) == [S, 2 * S] and {e["layer"] for e in events} == {0, 1}
        assert all(len(e["born_ids"]) == 64 for e in events)
    else:
        assert events == []
